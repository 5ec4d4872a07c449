"""Continuous-projection tokenization (TranscriptFormer-style): genes with float values.

Values are raw counts or ``log1p(x / n_counts * target_sum)`` (``n_counts`` over all input
genes), optionally clipped; genes are ordered by expression (descending, ties by token),
by token id, or in input column order. Cells with more genes than ``max_genes`` keep the
highest counts.
"""

from __future__ import annotations

import numpy as np
from scforge.kernels.binning import (
    MODE_LOG1P,
    MODE_RAW,
    _collapse_reference,
    _emit,
    _order_reference,
    _pack,
    valued_tokenize,
)
from scforge.kernels.common import GeneMap

TRANSFORMS = {"log1p": MODE_LOG1P, "raw": MODE_RAW}


def continuous_tokenize(
    indptr,
    indices,
    data,
    gene_map: GeneMap,
    *,
    max_genes: int,
    transform: str = "log1p",
    target_sum: float = 10_000.0,
    clip: float = 0.0,
    order: str = "expression",
    cls_id: int = -1,
    eos_id: int = -1,
):
    """Tokenizes a CSR chunk into (tokens int32, values float32, offsets int64)."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform={transform!r} is not one of {sorted(TRANSFORMS)}")
    n_rows = len(indptr) - 1
    return valued_tokenize(
        indptr,
        indices,
        data,
        gene_map,
        mode=TRANSFORMS[transform],
        row_ids=np.zeros(n_rows, np.int64),
        max_genes=max_genes,
        order=order,
        target_sum=target_sum,
        clip=clip,
        cls_id=cls_id,
        eos_id=eos_id,
    )


def continuous_reference(
    indptr,
    indices,
    data,
    gene_map: GeneMap,
    *,
    max_genes: int,
    transform: str = "log1p",
    target_sum: float = 10_000.0,
    clip: float = 0.0,
    order: str = "expression",
    cls_id: int = -1,
    eos_id: int = -1,
):
    """Plain-NumPy twin of :func:`continuous_tokenize`."""
    toks, vals, lens = [], [], []
    for r in range(len(indptr) - 1):
        cols = indices[indptr[r] : indptr[r + 1]]
        x = data[indptr[r] : indptr[r + 1]]
        t, c = _collapse_reference(cols, x, gene_map)
        v = np.log1p(c / x.astype(np.float64).sum() * target_sum) if transform == "log1p" else c
        if clip > 0:
            v = np.minimum(v, clip)
        idx = _order_reference(t, c, max_genes, order)
        _emit(toks, vals, lens, t[idx], v[idx], cls_id, eos_id)
    return _pack(toks, vals, lens)
