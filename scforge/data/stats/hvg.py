"""Highly variable genes, Seurat v3 flavour, from streamed per-batch moments.

Scanpy's ``highly_variable_genes(flavor="seurat_v3")`` needs, per batch and gene, the mean and
variance of raw counts (pass 1), a LOESS fit of log variance on log mean, and then sums of counts
clipped at ``mean + sqrt(n_cells) * fitted_sd`` (pass 2). Both passes are sums over nonzero
entries, so they stream over a corpus chunk by chunk in memory proportional to batches x genes.
Ranking, the per-batch median rank and the tie-breaking order are scanpy's, so on one AnnData the
selected genes are the same (``tests/data/test_stats.py`` checks it against scanpy).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scforge.data.stats.loess import loess_fit


class BatchMoments:
    """Per-batch, per-gene sums of x and x^2 over cells (zeros contribute nothing)."""

    def __init__(self, n_batches: int, n_genes: int) -> None:
        self.n_genes = n_genes
        self.n_cells = np.zeros(n_batches, dtype=np.int64)
        self.s1 = np.zeros((n_batches, n_genes))
        self.s2 = np.zeros((n_batches, n_genes))

    def add(
        self,
        batch_of_row: np.ndarray,
        row: np.ndarray,
        genes: np.ndarray,
        values: np.ndarray,
        clip: np.ndarray | None = None,
    ) -> None:
        """Adds nonzero entries (``row`` indexes ``batch_of_row``); ``clip`` caps each value at
        ``clip[batch, gene]`` (pass 2)."""
        self.n_cells += np.bincount(batch_of_row, minlength=len(self.n_cells))
        b = batch_of_row[row]
        flat = b * self.n_genes + genes
        x = np.asarray(values, dtype=np.float64)
        if clip is not None:
            x = np.minimum(x, clip.reshape(-1)[flat])
        size = self.s1.size
        self.s1 += np.bincount(flat, weights=x, minlength=size).reshape(self.s1.shape)
        self.s2 += np.bincount(flat, weights=x * x, minlength=size).reshape(self.s1.shape)

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-batch mean and unbiased variance (ddof=1), as scanpy's ``_get_mean_var``."""
        n = np.maximum(self.n_cells, 1)[:, None].astype(np.float64)
        mean = self.s1 / n
        var = (self.s2 / n - mean**2) * (n / np.maximum(n - 1, 1))
        return mean, np.maximum(var, 0.0)


def fit_clip(moments: BatchMoments, *, span: float) -> tuple[np.ndarray, np.ndarray]:
    """Fitted standard deviation per batch and gene, and the clip values of pass 2."""
    mean, var = moments.mean_var()
    reg_std = np.ones_like(mean)
    for b in range(mean.shape[0]):
        not_const = var[b] > 0
        if not_const.sum() < 3:
            continue
        fitted = loess_fit(np.log10(mean[b, not_const]), np.log10(var[b, not_const]), span=span)
        est = np.zeros(mean.shape[1])
        est[not_const] = fitted
        reg_std[b] = np.sqrt(10**est)
    clip = reg_std * np.sqrt(moments.n_cells)[:, None] + mean
    return reg_std, clip


def select(
    pass1: BatchMoments, pass2: BatchMoments, reg_std: np.ndarray, n_top: int, genes: list[str]
) -> pd.DataFrame:
    """scanpy's ranking: normalised variance per batch, median rank over the batches where a gene
    ranks in the top ``n_top``, ties broken by the number of such batches then gene order."""
    mean, _ = pass1.mean_var()
    n = pass1.n_cells[:, None].astype(np.float64)
    norm_var = (n * mean**2 + pass2.s2 - 2 * pass2.s1 * mean) / (np.maximum(n - 1, 1) * reg_std**2)
    ranks = np.argsort(np.argsort(-norm_var, axis=1, kind="stable"), axis=1).astype(np.float32)
    n_batches_hv = (ranks < n_top).sum(axis=0)
    ranks[ranks >= n_top] = np.nan
    with np.errstate(all="ignore"):
        median_rank = np.ma.median(np.ma.masked_invalid(ranks), axis=0).filled(np.nan)
    total_n = max(int(pass1.n_cells.sum()), 2)
    all_mean = pass1.s1.sum(axis=0) / total_n
    all_var = (pass1.s2.sum(axis=0) / total_n - all_mean**2) * total_n / (total_n - 1)
    df = pd.DataFrame(
        {
            "means": all_mean,
            "variances": all_var,
            "variances_norm": norm_var.mean(axis=0),
            "highly_variable_rank": median_rank,
            "highly_variable_nbatches": n_batches_hv,
        },
        index=pd.Index(genes, name="gene"),
    )
    order = df.sort_values(
        ["highly_variable_rank", "highly_variable_nbatches"],
        ascending=[True, False],
        na_position="last",
        kind="mergesort",
    ).index
    df["highly_variable"] = False
    df.loc[order[:n_top], "highly_variable"] = True
    return df
