"""Corpus statistics in one or two streaming passes over every input.

Pass 1 reads each input in ``source.chunk_cells`` rows, drops cells failing QC, and accumulates
per gene: cells with a nonzero count, total counts, the nonzero median of counts / cell total *
``target_sum`` (Geneformer's normalisation; the cell total is over all of the input's genes), and
per-batch moments for HVGs. Pass 2 (only for HVGs) accumulates the clipped moments. Memory is
bounded by the chunk, genes x batches, and the median buffer or sketch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scforge.config.schema import ShardJobConfig
from scforge.data.sources import CSRChunk, Source, SourceError, dataset_name
from scforge.data.stats import hvg as hvg_mod
from scforge.data.stats.genes import CorpusGenes
from scforge.data.stats.medians import NonzeroMedians
from scforge.data.stats.qc import CellFilter, add_counts, raw_count_problem, select_rows

STATS_FORMAT = "scforge-corpus-stats"
STATS_VERSION = 1


@dataclass
class CorpusStats:
    """What ``scforge-shard stats`` computes (``to_json`` is the file it writes)."""

    genes: list[str]
    n_cells_nonzero: np.ndarray
    total_counts: np.ndarray
    medians: np.ndarray | None
    n_cells_read: int
    n_cells_used: int
    dropped: dict[str, int]
    median_method: dict = field(default_factory=dict)
    hvg: pd.DataFrame | None = None
    hvg_options: dict = field(default_factory=dict)
    sources: list[dict] = field(default_factory=list)
    target_sum: float = 10_000.0

    def median_dict(self) -> dict[str, float]:
        """Gene -> median, Geneformer's ``gene_median_dictionary`` shape (genes never seen are
        left out)."""
        if self.medians is None:
            return {}
        return {g: float(m) for g, m in zip(self.genes, self.medians, strict=True) if m == m}

    def hvg_genes(self) -> list[str]:
        if self.hvg is None:
            return []
        return [str(g) for g in self.hvg.index[self.hvg["highly_variable"].to_numpy()]]

    def to_json(self) -> dict:
        out = {
            "format": STATS_FORMAT,
            "version": STATS_VERSION,
            "n_cells_read": self.n_cells_read,
            "n_cells_used": self.n_cells_used,
            "cells_dropped": self.dropped,
            "target_sum": self.target_sum,
            "medians": self.median_method,
            "sources": self.sources,
            "genes": {
                "id": self.genes,
                "n_cells_nonzero": self.n_cells_nonzero.tolist(),
                "total_counts": self.total_counts.tolist(),
            },
        }
        if self.medians is not None:
            out["genes"]["median"] = [None if m != m else float(m) for m in self.medians]
        if self.hvg is not None:
            out["hvg"] = {**self.hvg_options, "genes": self.hvg_genes()}
        return out


def hvg_hash(genes: list[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(genes)).encode()).hexdigest()[:16]


def load_hvg_genes(path: str) -> list[str]:
    """HVGs from a ``scforge-shard stats`` JSON (``hvg.genes``) or a plain JSON list."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(
            f"source.hvg.genes={path!r} does not exist; run scforge-shard stats "
            "--hvg N --out ... first, or unset it"
        )
    obj = json.loads(p.read_text())
    genes = obj.get("hvg", {}).get("genes") if isinstance(obj, dict) else obj
    if not isinstance(genes, list) or not genes:
        raise SourceError(
            f"{path!r} holds no HVG list (expected a JSON list of gene ids or "
            "the stats JSON of scforge-shard stats --hvg N)"
        )
    return [str(g) for g in genes]


def _batches(sources: list[Source], key: str) -> list[np.ndarray]:
    """Batch label of every row of every input."""
    out = []
    for src in sources:
        df = src.obs_columns([key]) if key else pd.DataFrame()
        if key in df.columns:
            out.append(df[key].to_numpy().astype(str))
        elif key in ("", "dataset"):
            out.append(np.full(src.n_cells, dataset_name(src) if key else "all", dtype=object))
        else:
            raise SourceError(
                f"{src.path}: HVG batch key {key!r} is not an obs column; set source.hvg.batch_key "
                "to an obs column present in every input, or 'dataset'"
            )
    return out


def _keyed(chunk: CSRChunk, col_key: np.ndarray, n_keys: int, dup: bool):
    """Nonzero (row, gene, count) triplets of a chunk in the corpus gene space."""
    row = np.repeat(np.arange(chunk.n_rows), np.diff(chunk.indptr))
    keys = col_key[chunk.indices]
    data = np.asarray(chunk.data, dtype=np.float64)
    if dup:
        m = sp.csr_matrix((data, (row, keys)), shape=(chunk.n_rows, n_keys))
        m.sum_duplicates()
        row = np.repeat(np.arange(chunk.n_rows), np.diff(m.indptr))
        keys, data = m.indices.astype(np.int64), m.data
    nz = data > 0
    return row[nz], keys[nz], data[nz]


class _Pass:
    """Iterates QC-passing chunks of every input in the corpus gene space."""

    def __init__(self, sources: list[Source], cfg: ShardJobConfig, genes: CorpusGenes) -> None:
        self.sources, self.cfg, self.genes = sources, cfg, genes
        self.filters = [CellFilter(cfg.source.qc, s) for s in sources]

    def __iter__(self):
        step = self.cfg.source.chunk_cells
        for i, src in enumerate(self.sources):
            for a in range(0, src.n_cells, step):
                chunk = src.read_rows(a, min(a + step, src.n_cells))
                if self.cfg.source.require_raw_counts:
                    problem = raw_count_problem(src.path, self.cfg.source.layer, chunk)
                    if problem:
                        raise SourceError(problem)
                keep, dropped = self.filters[i].apply(chunk)
                kept = select_rows(chunk, keep)
                totals = np.bincount(
                    np.repeat(np.arange(kept.n_rows), np.diff(kept.indptr)),
                    weights=np.asarray(kept.data, np.float64),
                    minlength=kept.n_rows,
                )
                trip = _keyed(
                    kept, self.genes.col_key[i], self.genes.n_keys, self.genes.has_duplicates[i]
                )
                yield i, a + np.flatnonzero(keep), chunk.n_rows, dropped, totals, trip


def compute_corpus_stats(
    sources: list[Source],
    cfg: ShardJobConfig,
    *,
    medians: bool = True,
    hvg_n_top: int = 0,
    progress: Callable[[int], None] | None = None,
) -> CorpusStats:
    """Gene statistics of the QC-passing cells of ``sources`` (see the module docstring).

    Args:
        sources: opened inputs.
        cfg: job config (``source.qc``, ``source.hvg``, ``stats``, ``source.chunk_cells``).
        medians: compute nonzero medians.
        hvg_n_top: select this many HVGs (0 = none; a second pass).
        progress: called with the number of cells read after each chunk.
    """
    genes = CorpusGenes(sources, symbol_mapping=cfg.vocab.symbol_mapping)
    g = genes.n_keys
    st = cfg.stats
    med = (
        NonzeroMedians(
            g,
            max_exact_values=st.max_exact_values,
            relative_error=st.relative_error,
            max_value=st.target_sum,
        )
        if medians
        else None
    )
    nz_cells = np.zeros(g, dtype=np.int64)
    totals_g = np.zeros(g)
    dropped: dict[str, int] = {}
    per_src = [
        {
            "path": s.path,
            "dataset": dataset_name(s),
            "n_cells": s.n_cells,
            "n_cells_used": 0,
            "gene_ids": genes.inputs[i].kind,
        }
        for i, s in enumerate(sources)
    ]
    batch_labels = _batches(sources, cfg.source.hvg.batch_key) if hvg_n_top else []
    uniq = sorted({b for arr in batch_labels for b in arr.tolist()})
    bidx = [np.searchsorted(uniq, arr.astype(str)) for arr in batch_labels]
    mom1 = hvg_mod.BatchMoments(len(uniq), g) if hvg_n_top else None
    n_read = 0
    passes = _Pass(sources, cfg, genes)
    for i, rows, n_rows, drop, cell_totals, (row, key, val) in passes:
        n_read += n_rows
        add_counts(dropped, drop)
        per_src[i]["n_cells_used"] += len(rows)
        nz_cells += np.bincount(key, minlength=g)
        totals_g += np.bincount(key, weights=val, minlength=g)
        if med is not None:
            med.add(key, val / cell_totals[row] * st.target_sum)
        if mom1 is not None:
            mom1.add(bidx[i][rows], row, key, val)
        if progress is not None:
            progress(n_rows)
    hvg_df, hvg_opts = None, {}
    if mom1 is not None:
        reg_std, clip = hvg_mod.fit_clip(mom1, span=cfg.source.hvg.span)
        mom2 = hvg_mod.BatchMoments(len(uniq), g)
        for i, rows, n_rows, _, _, (row, key, val) in passes:
            mom2.add(bidx[i][rows], row, key, val, clip=clip)
            if progress is not None:
                progress(n_rows)
        hvg_df = hvg_mod.select(mom1, mom2, reg_std, hvg_n_top, genes.keys)
        hvg_opts = {
            "flavor": "seurat_v3",
            "n_top_genes": hvg_n_top,
            "batch_key": cfg.source.hvg.batch_key,
            "n_batches": len(uniq),
            "span": cfg.source.hvg.span,
        }
    return CorpusStats(
        genes=genes.keys,
        n_cells_nonzero=nz_cells,
        total_counts=totals_g,
        medians=med.result() if med is not None else None,
        n_cells_read=n_read,
        n_cells_used=sum(s["n_cells_used"] for s in per_src),
        dropped=dropped,
        median_method=med.describe() if med is not None else {},
        hvg=hvg_df,
        hvg_options=hvg_opts,
        sources=per_src,
        target_sum=st.target_sum,
    )
