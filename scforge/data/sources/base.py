"""The source interface shared by every input format, and helpers the formats share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

ID_COLUMNS = ("gene_ids", "ensembl_id", "feature_id", "gene_id", "Accession")
"""var columns searched for Ensembl ids when the var names are not Ensembl ids."""
SYMBOL_COLUMNS = ("gene_symbols", "feature_name", "gene_name", "symbol", "Gene")
"""var columns searched for gene symbols (used for symbol vocabularies and MT- genes)."""


class SourceError(ValueError):
    """An input cannot be read as raw counts; the message names the problem and the fix."""


@dataclass
class CSRChunk:
    """Rows ``[start, start + n_rows)`` of an input as CSR arrays (``indptr[0] == 0``)."""

    start: int
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1


class Source(Protocol):
    """What the sharder needs from an input.

    Optional attributes a source may carry: ``dataset`` (the name stored in the ``dataset`` obs
    field and the manifest; default: the file stem), ``extra_obs_fields`` (obs fields always stored
    with each cell, e.g. ``soma_joinid`` so a cell traces back to Census) and ``close()``.
    """

    path: str
    n_cells: int
    n_genes: int

    def gene_ids(self) -> list[str]: ...

    def gene_symbols(self) -> list[str] | None: ...

    def obs_names(self) -> np.ndarray: ...

    def obs_columns(self, names: list[str]) -> pd.DataFrame: ...

    def read_rows(self, start: int, stop: int) -> CSRChunk: ...

    def describe(self) -> dict: ...


def dataset_name(src: Source) -> str:
    """Name of a source in a corpus: its ``dataset`` attribute, else the file/dir stem."""
    name = getattr(src, "dataset", "")
    if name:
        return str(name)
    p = Path(str(src.path).rstrip("/"))
    stem = p.name
    for suffix in (".gz", ".h5ad", ".h5", ".zarr", ".loom", ".csv", ".tsv", ".txt"):
        stem = stem.removesuffix(suffix)
    return stem or p.name


def check_range(src: Source, start: int, stop: int) -> None:
    if not 0 <= start <= stop <= src.n_cells:
        raise IndexError(f"rows [{start}, {stop}) outside [0, {src.n_cells})")


def csr_chunk(start: int, m: sp.spmatrix | np.ndarray) -> CSRChunk:
    """A CSRChunk of a scipy matrix or dense array (canonical: sorted indices, no duplicates)."""
    m = sp.csr_matrix(m)
    m.sum_duplicates()
    m.sort_indices()
    return CSRChunk(start, m.indptr.astype(np.int64), m.indices, m.data)


def as_str_array(values) -> np.ndarray:
    """Object array of Python strings (bytes decoded as UTF-8)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "T":  # NumPy 2 StringDType (anndata reads zarr strings as it)
        arr = arr.astype(object)
    if arr.dtype.kind in "SO":
        return np.array(
            [a.decode() if isinstance(a, bytes) else str(a) for a in arr.tolist()], dtype=object
        )
    return arr.astype(str).astype(object)


def pick_gene_ids(
    path: str,
    names: Sequence[str],
    columns: Sequence[str],
    column: Callable[[str], Sequence[str]],
    gene_column: str,
    n_genes: int,
) -> tuple[list[str], list[str] | None, str]:
    """Chooses the gene-id column of an AnnData-like var table.

    Var names win if they look like Ensembl ids; otherwise the first id column holding Ensembl
    ids; otherwise the var names (treated as symbols downstream). ``gene_column`` forces a column.

    Returns:
        (ids, symbols or None, where the ids came from).
    """
    from scforge.data.vocab import looks_like_ensembl

    if gene_column:
        if gene_column not in columns:
            raise SourceError(
                f"{path!r}: var has no column {gene_column!r} (source.gene_column); "
                f"available: {list(columns)}"
            )
        ids, src = list(column(gene_column)), f"var[{gene_column!r}]"
    else:
        ids, src = list(names), "var_names"
        if not looks_like_ensembl(ids[:5000]):
            for c in ID_COLUMNS:
                if c in columns:
                    cand = list(column(c))
                    if looks_like_ensembl(cand[:5000]):
                        ids, src = cand, f"var[{c!r}]"
                        break
    sym_col = next((c for c in SYMBOL_COLUMNS if c in columns), None)
    symbols = list(column(sym_col)) if sym_col is not None else None
    if len(ids) != n_genes:
        raise SourceError(
            f"{path!r}: var has {len(ids)} rows but the matrix has {n_genes} columns (corrupt "
            "input); re-export it"
        )
    return [str(g) for g in ids], ([str(s) for s in symbols] if symbols else None), src


def frame_of(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """DataFrame of string columns (the shape ``obs_columns`` returns)."""
    return pd.DataFrame({k: as_str_array(v).astype(str) for k, v in columns.items()})
