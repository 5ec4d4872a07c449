"""Row-chunked reader of ``.h5ad`` files: memory stays bounded whatever the file size.

Reads the CSR arrays directly through h5py (only ``indptr`` is held whole: 8 bytes per cell), so
a chunk costs exactly the bytes of its rows. Dense ``X`` is read by row slabs. CSC matrices
cannot be read by rows efficiently and are refused with the fix.
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scforge.data.sources.base import CSRChunk, SourceError

_ID_COLUMNS = ("gene_ids", "ensembl_id", "feature_id", "gene_id")
_SYMBOL_COLUMNS = ("gene_symbols", "feature_name", "gene_name", "symbol")


def _decode(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind in "SO":
        return np.array([a.decode() if isinstance(a, bytes) else str(a) for a in arr], dtype=object)
    return arr.astype(str).astype(object)


class H5adSource:
    """An AnnData ``.h5ad`` file opened for row-chunked reading.

    Args:
        path: file path.
        layer: ``X``, ``raw/X`` or ``layers/<name>``.
        gene_column: var column with gene ids ("" = auto).
    """

    def __init__(self, path: str, *, layer: str = "X", gene_column: str = "") -> None:
        self.path = str(path)
        self.layer = layer
        self._f = _open_checked(self.path, h5py.File)
        self._var_group = "raw/var" if layer == "raw/X" else "var"
        if layer not in self._f:
            raise SourceError(
                f"{self.path!r} has no matrix {layer!r}; set source.layer to one of "
                f"{self._available_layers()}"
            )
        x = self._f[layer]
        try:
            self._init_matrix(x)
            self._gene_ids, self._symbols, self._id_source = self._read_var(gene_column)
        except SourceError:
            raise
        except (KeyError, OSError, ValueError) as e:
            raise SourceError(
                f"{self.path!r} is not a valid AnnData file ({e}); it may be "
                "truncated or corrupt: re-export it with adata.write_h5ad()"
            ) from None

    def _available_layers(self) -> list[str]:
        out = ["X"] if "X" in self._f else []
        if "layers" in self._f:
            out += [f"layers/{k}" for k in self._f["layers"]]
        if "raw" in self._f and "X" in self._f["raw"]:
            out.append("raw/X")
        return out

    def _init_matrix(self, x) -> None:
        if isinstance(x, h5py.Group):
            enc = x.attrs.get("encoding-type", "")
            enc = enc.decode() if isinstance(enc, bytes) else str(enc)
            if enc == "csc_matrix":
                raise SourceError(
                    f"{self.path!r}: {self.layer} is CSC, which cannot be read by "
                    "rows in bounded memory; convert it once with "
                    "adata.X = adata.X.tocsr(); adata.write_h5ad(...)"
                )
            if enc != "csr_matrix":
                raise SourceError(
                    f"{self.path!r}: {self.layer} has encoding {enc!r}; expected a "
                    "CSR sparse matrix or a dense array"
                )
            self.n_cells, self.n_genes = (int(v) for v in x.attrs["shape"])
            self._indptr = x["indptr"][:].astype(np.int64)
            self._data, self._indices = x["data"], x["indices"]
            self._dense = None
            if len(self._indptr) != self.n_cells + 1 or self._indptr[-1] > self._data.shape[0]:
                raise SourceError(
                    f"{self.path!r}: {self.layer} indptr does not match its data "
                    "(truncated or corrupt file); re-export it"
                )
        else:
            self.n_cells, self.n_genes = (int(v) for v in x.shape)
            self._dense = x
        self.dtype = (x["data"] if self._dense is None else x).dtype

    def _read_var(self, gene_column: str):
        from anndata.io import read_elem

        var = self._f[self._var_group]
        index_key = var.attrs.get("_index", "_index")
        index_key = index_key.decode() if isinstance(index_key, bytes) else str(index_key)
        names = _decode(var[index_key][:])
        cols = [k for k in var if k != index_key]

        def column(name: str) -> np.ndarray:
            return np.asarray(read_elem(var[name])).astype(str).astype(object)

        if gene_column:
            if gene_column not in cols:
                raise SourceError(
                    f"{self.path!r}: var has no column {gene_column!r} "
                    f"(source.gene_column); available: {cols}"
                )
            ids, src = column(gene_column), f"var[{gene_column!r}]"
        else:
            ids, src = names, "var_names"
            from scforge.data.vocab import looks_like_ensembl

            if not looks_like_ensembl(list(names[:5000])):
                for c in _ID_COLUMNS:
                    if c in cols and looks_like_ensembl(list(column(c)[:5000])):
                        ids, src = column(c), f"var[{c!r}]"
                        break
        symbols = next((column(c) for c in _SYMBOL_COLUMNS if c in cols), None)
        if len(ids) != self.n_genes:
            raise SourceError(
                f"{self.path!r}: var has {len(ids)} rows but X has {self.n_genes} "
                "columns (corrupt file)"
            )
        return list(ids), (list(symbols) if symbols is not None else None), src

    # ----------------------------------------------------------------- Source API
    def gene_ids(self) -> list[str]:
        return self._gene_ids

    def gene_symbols(self) -> list[str] | None:
        return self._symbols

    def obs_names(self) -> np.ndarray:
        obs = self._f["obs"]
        key = obs.attrs.get("_index", "_index")
        key = key.decode() if isinstance(key, bytes) else str(key)
        return _decode(obs[key][:])

    def obs_columns(self, names: list[str]) -> pd.DataFrame:
        """The requested obs columns that exist (as strings); missing ones are left out."""
        from anndata.io import read_elem

        obs = self._f["obs"]
        out = {}
        for n in names:
            if n in obs:
                out[n] = np.asarray(read_elem(obs[n])).astype(str)
        return pd.DataFrame(out)

    def read_rows(self, start: int, stop: int) -> CSRChunk:
        """Rows ``[start, stop)`` as a CSRChunk (one contiguous read of data and indices)."""
        if not 0 <= start <= stop <= self.n_cells:
            raise IndexError(f"rows [{start}, {stop}) outside [0, {self.n_cells})")
        try:
            if self._dense is not None:
                m = sp.csr_matrix(np.asarray(self._dense[start:stop]))
                return CSRChunk(start, m.indptr.astype(np.int64), m.indices, m.data)
            a, b = int(self._indptr[start]), int(self._indptr[stop])
            indptr = self._indptr[start : stop + 1] - a
            return CSRChunk(start, indptr, self._indices[a:b], self._data[a:b])
        except OSError as e:
            raise SourceError(
                f"{self.path!r}: reading rows {start}-{stop} failed ({e}); the file "
                "is truncated or corrupt: re-export it"
            ) from None

    def describe(self) -> dict:
        st = os.stat(self.path)
        return {
            "path": os.path.abspath(self.path),
            "format": "h5ad",
            "layer": self.layer,
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
            "bytes": st.st_size,
            "gene_ids_from": self._id_source,
        }

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> H5adSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_checked(path: str, opener: Any) -> Any:
    """``opener(path)`` for an h5ad, with one-line errors for a missing, empty or non-HDF5 file."""
    if not os.path.isfile(path):
        raise SourceError(f"input {path!r} does not exist; check the path (an .h5ad file)")
    if os.path.getsize(path) == 0:
        raise SourceError(f"input {path!r} is empty (0 bytes); re-export the AnnData file")
    try:
        return opener(path, "r")
    except OSError as e:
        raise SourceError(
            f"input {path!r} is not a readable HDF5/h5ad file (truncated or "
            f"corrupt? {str(e).splitlines()[0]}); re-export it with adata.write_h5ad()"
        ) from None


def read_anndata(path: str | os.PathLike) -> Any:
    """The whole AnnData of an .h5ad (``anndata.read_h5ad``), with the sharder's one-line errors
    for a missing, empty or non-HDF5 file (for commands that hold the cells in memory)."""
    import anndata as ad

    return _open_checked(str(path), lambda p, mode: ad.read_h5ad(p))


def write_anndata(adata: Any, out: str | os.PathLike) -> None:
    """``adata.write_h5ad(out)`` that leaves either the whole file or nothing.

    The HDF5 image is built in memory (anndata's own ``write_elem`` into an in-memory h5py file)
    and written with plain file I/O under a temporary name, then renamed: HDF5 itself crashes the
    process when the disk fills during a write, while a plain write raises ``OSError`` (ENOSPC),
    which removes the partial file instead of leaving one that looks finished.
    """
    import io

    from anndata.io import write_elem

    from scforge.fsutil import replacing

    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        write_elem(f, "/", adata)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with replacing(out) as tmp:
        tmp.write_bytes(image.getbuffer())
