"""Row-chunked reader of ``.loom`` files (HDF5; genes x cells, dense and chunked).

Loom stores the matrix transposed (``/matrix`` is genes x cells), so a chunk of cells is a column
slab ``matrix[:, a:b]``: loom files are chunked in small 2-D tiles (64 x 64 by loompy), so the slab
costs about its own bytes. Gene ids come from ``row_attrs`` (``Accession`` for Ensembl ids, ``Gene``
for symbols), cell ids and obs columns from ``col_attrs``.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scforge.data.sources.base import (
    CSRChunk,
    SourceError,
    as_str_array,
    check_range,
    csr_chunk,
    frame_of,
    pick_gene_ids,
)

_CELL_ID_ATTRS = ("CellID", "obs_names", "cell_id", "barcode")
_GENE_NAME_ATTRS = ("Gene", "var_names", "gene_name", "Accession")


class LoomSource:
    """A ``.loom`` file opened for reading cells in column slabs.

    Args:
        path: file path.
        layer: ``X`` (the main ``/matrix``) or ``layers/<name>``.
        gene_column: row attribute with gene ids ("" = auto).
    """

    def __init__(self, path: str, *, layer: str = "X", gene_column: str = "") -> None:
        self.path = str(path)
        self.layer = layer
        try:
            self._f = h5py.File(self.path, "r")
            self._m = self._f["matrix"] if layer == "X" else self._f[layer]
            rows, cols = self._f["row_attrs"], self._f["col_attrs"]
        except (OSError, KeyError) as e:
            raise SourceError(
                f"{self.path!r} is not a readable loom file ({e}); check source.layer "
                "(X or layers/<name>) or re-export it with loompy / adata.write_loom()"
            ) from None
        self.n_genes, self.n_cells = (int(v) for v in self._m.shape)
        self._cols = cols
        name_attr = next((a for a in _GENE_NAME_ATTRS if a in rows), None)
        if name_attr is None:
            raise SourceError(
                f"{self.path!r}: row_attrs has no gene names ({list(rows)}); expected one of "
                f"{list(_GENE_NAME_ATTRS)}"
            )
        names = as_str_array(rows[name_attr][:])
        self._gene_ids, self._symbols, self._id_source = pick_gene_ids(
            self.path,
            list(names),
            [a for a in rows if a != name_attr],
            lambda a: list(as_str_array(rows[a][:])),
            gene_column,
            self.n_genes,
        )
        if self._symbols is None and name_attr == "Gene":
            self._symbols = list(names)

    def gene_ids(self) -> list[str]:
        return self._gene_ids

    def gene_symbols(self) -> list[str] | None:
        return self._symbols

    def obs_names(self) -> np.ndarray:
        attr = next((a for a in _CELL_ID_ATTRS if a in self._cols), None)
        if attr is None:
            return np.array([str(i) for i in range(self.n_cells)], dtype=object)
        return as_str_array(self._cols[attr][:])

    def obs_columns(self, names: list[str]) -> pd.DataFrame:
        """The requested col_attrs that exist (as strings); missing ones are left out."""
        return frame_of({n: as_str_array(self._cols[n][:]) for n in names if n in self._cols})

    def read_rows(self, start: int, stop: int) -> CSRChunk:
        """Cells ``[start, stop)``: a column slab of the genes x cells matrix, transposed."""
        check_range(self, start, stop)
        try:
            slab = self._m[:, start:stop]
        except OSError as e:
            raise SourceError(f"{self.path!r}: reading cells {start}-{stop} failed ({e})") from None
        return csr_chunk(start, sp.csr_matrix(np.ascontiguousarray(slab.T)))

    def describe(self) -> dict:
        return {
            "path": os.path.abspath(self.path),
            "format": "loom",
            "layer": self.layer,
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
            "bytes": os.path.getsize(self.path),
            "gene_ids_from": self._id_source,
        }

    def close(self) -> None:
        self._f.close()
