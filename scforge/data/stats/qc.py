"""Per-cell quality control applied chunk by chunk (so units stay row ranges and resumable).

Metrics follow scanpy's ``calculate_qc_metrics``: detected genes are nonzero columns, totals are
over every column (mapped to the vocabulary or not), the mitochondrial fraction is the counts of
``MT-`` genes over the total. A cell is dropped if any enabled filter fails; each failing reason is
counted (a cell failing two filters counts under both), plus the number of cells dropped.
"""

from __future__ import annotations

import logging

import numpy as np

from scforge.config.schema import QCConfig
from scforge.data.sources import CSRChunk, Source
from scforge.data.vocab import ID_TO_SYMBOL, looks_like_ensembl
from scforge.resources import load_json

log = logging.getLogger(__name__)

REASONS = ("filter_pass", "min_genes", "max_genes", "min_counts", "max_counts", "max_mito_fraction")
_TRUE = {"1", "1.0", "true", "True", "TRUE", "yes"}


def mito_columns(src: Source) -> np.ndarray:
    """Boolean mask of the input's mitochondrial (``MT-``) genes."""
    symbols = src.gene_symbols()
    ids = [str(g) for g in src.gene_ids()]
    if symbols is None:
        if looks_like_ensembl(ids[:5000]):
            id2name = load_json(ID_TO_SYMBOL)
            symbols = [id2name.get(g.split(".")[0], "") for g in ids]
        else:
            symbols = ids
    return np.array([str(s).upper().startswith("MT-") for s in symbols], dtype=bool)


class CellFilter:
    """The QC filters of one input.

    Args:
        cfg: the filters (0 / 1.0 disable one).
        src: the input (for MT- genes and the ``filter_pass`` column).
    """

    def __init__(self, cfg: QCConfig, src: Source) -> None:
        self.cfg = cfg
        self.filter_pass: np.ndarray | None = None
        if cfg.filter_pass_column:
            df = src.obs_columns([cfg.filter_pass_column])
            if cfg.filter_pass_column in df.columns:
                self.filter_pass = np.isin(df[cfg.filter_pass_column].to_numpy(), list(_TRUE))
        self.mito: np.ndarray | None = None
        if cfg.max_mito_fraction < 1.0:
            self.mito = mito_columns(src)
            if not self.mito.any():
                log.warning(
                    "%s: no MT- genes found; source.qc.max_mito_fraction has no effect", src.path
                )
        self.active = bool(
            self.filter_pass is not None
            or cfg.min_genes
            or cfg.max_genes
            or cfg.min_counts
            or cfg.max_counts
            or self.mito is not None
        )

    def describe(self) -> dict:
        return {
            "filter_pass_column": self.filter_pass is not None,
            "n_mito_genes": int(self.mito.sum()) if self.mito is not None else None,
        }

    def apply(self, chunk: CSRChunk) -> tuple[np.ndarray, dict[str, int]]:
        """Rows of ``chunk`` to keep, and the count of cells failing each filter."""
        n = chunk.n_rows
        if not self.active:
            return np.ones(n, dtype=bool), {}
        cfg = self.cfg
        row = np.repeat(np.arange(n), np.diff(chunk.indptr))
        data = np.asarray(chunk.data, dtype=np.float64)
        totals = np.bincount(row, weights=data, minlength=n)
        genes = np.bincount(row, weights=(data > 0), minlength=n)
        fails: dict[str, np.ndarray] = {}
        if self.filter_pass is not None:
            fails["filter_pass"] = ~self.filter_pass[chunk.start : chunk.start + n]
        if cfg.min_genes:
            fails["min_genes"] = genes < cfg.min_genes
        if cfg.max_genes:
            fails["max_genes"] = genes > cfg.max_genes
        if cfg.min_counts:
            fails["min_counts"] = totals < cfg.min_counts
        if cfg.max_counts:
            fails["max_counts"] = totals > cfg.max_counts
        if self.mito is not None:
            mt = np.bincount(row, weights=data * self.mito[chunk.indices], minlength=n)
            frac = np.divide(mt, totals, out=np.zeros(n), where=totals > 0)
            fails["max_mito_fraction"] = frac > cfg.max_mito_fraction
        drop = np.zeros(n, dtype=bool)
        for f in fails.values():
            drop |= f
        counts = {k: int(v.sum()) for k, v in fails.items()}
        counts["total"] = int(drop.sum())
        return ~drop, counts


def add_counts(acc: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    """Sums drop counts into ``acc`` (in place) and returns it."""
    for k, v in counts.items():
        acc[k] = acc.get(k, 0) + int(v)
    return acc


def select_rows(chunk: CSRChunk, keep: np.ndarray) -> CSRChunk:
    """The kept rows of a chunk as a new CSRChunk (``start`` unchanged: rows are renumbered)."""
    if keep.all():
        return chunk
    idx = np.flatnonzero(keep)
    lens = np.diff(chunk.indptr)[idx]
    indptr = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    starts = chunk.indptr[idx]
    take = np.repeat(starts - indptr[:-1], lens) + np.arange(indptr[-1])
    return CSRChunk(chunk.start, indptr, chunk.indices[take], chunk.data[take])


def raw_count_problem(path: str, layer: str, chunk: CSRChunk) -> str | None:
    """The error message if ``chunk`` holds values that are not raw counts, else None."""
    from scforge.kernels import check_raw_counts

    bad = check_raw_counts(chunk.data)
    if bad is None:
        return None
    pos, problem = bad
    row = chunk.start + int(np.searchsorted(chunk.indptr, pos, side="right") - 1)
    return (
        f"{path}: {layer} holds {problem} values (e.g. {chunk.data[pos]!r} in row {row}) but raw "
        "counts are required; point source.layer at the raw-count matrix (e.g. "
        "source.layer=layers/counts or raw/X), or set source.require_raw_counts=false for "
        "continuous_projection of already-normalised data"
    )
