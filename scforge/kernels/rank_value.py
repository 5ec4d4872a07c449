"""Rank-value tokenization (Geneformer).

Per cell: ``v = x / n_counts * target_sum / median[token]`` over vocabulary genes, with
``n_counts`` the cell's total over ALL input genes and the float64 operations in Geneformer's
order, so values are bit-identical to Geneformer's. Nonzero genes are sorted by ``v`` descending;
exactly equal values are ordered by ascending token id (Geneformer's argsort is not stable, so its
order among exact ties is arbitrary; ours is fixed). Output: optional ``<cls>``, up to
``max_genes`` tokens, optional ``<eos>``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange
from scforge.kernels.common import GeneMap, compact, gather_cell, partition_rows, sort_desc


@njit(parallel=True, cache=True, nogil=True)
def _rank_value_chunk(
    indptr,
    indices,
    data,
    col_token,
    col_group,
    group_token,
    token_factor,
    target_sum,
    max_genes,
    cls_id,
    eos_id,
    bounds,
    starts,
    out,
    lengths,
):
    n_parts = len(bounds) - 1
    n_groups = len(group_token)
    for p in prange(n_parts):
        lo = bounds[p]
        hi = bounds[p + 1]
        width = 1
        for r in range(lo, hi):
            width = max(width, indptr[r + 1] - indptr[r])
        tok = np.empty(width, dtype=np.int32)
        val = np.empty(width, dtype=np.float64)
        fkey = np.empty(width, dtype=np.float32)
        key_tmp = np.empty(width, dtype=np.uint32)
        idx = np.empty(width, dtype=np.int32)
        idx_tmp = np.empty(width, dtype=np.int32)
        counts = np.empty(256, dtype=np.int64)
        digits = np.empty(width, dtype=np.uint8)
        group_acc = np.zeros(max(n_groups, 1), dtype=np.float64)
        touched = np.empty(max(n_groups, 1), dtype=np.int32)
        for r in range(lo, hi):
            n_counts = 0.0
            for k in range(indptr[r], indptr[r + 1]):
                n_counts += np.float64(data[k])
            n = gather_cell(
                indptr,
                indices,
                data,
                r,
                col_token,
                col_group,
                group_token,
                group_acc,
                touched,
                tok,
                val,
            )
            for i in range(n):
                val[i] = val[i] / n_counts * target_sum / token_factor[tok[i]]
            sort_desc(val, tok, n, fkey, key_tmp, idx, idx_tmp, counts, digits, False)
            m = min(n, max_genes)
            o = starts[r]
            j = 0
            if cls_id >= 0:
                out[o] = cls_id
                j = 1
            for i in range(m):
                out[o + j] = tok[idx[i]]
                j += 1
            if eos_id >= 0:
                out[o + j] = eos_id
                j += 1
            lengths[r] = j


def rank_value_tokenize(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    gene_map: GeneMap,
    token_median: np.ndarray,
    *,
    max_genes: int,
    target_sum: float = 10_000.0,
    cls_id: int = -1,
    eos_id: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes a CSR chunk of raw counts into rank-value token sequences.

    Args:
        indptr, indices, data: CSR arrays of the chunk (``indptr[0]`` may be nonzero).
        gene_map: column -> token map with collapse groups.
        token_median: float64 [vocab_size]; the normalisation median of each token (only tokens
            reachable from ``gene_map`` are read; they must be positive).
        max_genes: genes kept per cell (special tokens not counted).
        target_sum: Geneformer's 10,000.
        cls_id, eos_id: token ids to put first/last, or -1 for none.

    Returns:
        ``(tokens int32, offsets int64)``.
    """
    n_rows = len(indptr) - 1
    nnz = np.diff(indptr).astype(np.int64)
    extra = int(cls_id >= 0) + int(eos_id >= 0)
    cap = np.minimum(nnz, max_genes) + extra
    starts = np.zeros(n_rows, dtype=np.int64)
    if n_rows:
        np.cumsum(cap[:-1], out=starts[1:])
    out = np.empty(int(cap.sum()), dtype=np.int32)
    lengths = np.zeros(n_rows, dtype=np.int64)
    bounds = partition_rows(n_rows, 4 * numba.get_num_threads())
    if n_rows:
        _rank_value_chunk(
            indptr,
            indices,
            data,
            gene_map.col_token,
            gene_map.col_group,
            gene_map.group_token,
            token_median,
            float(target_sum),
            int(max_genes),
            int(cls_id),
            int(eos_id),
            bounds,
            starts,
            out,
            lengths,
        )
    return compact(out, starts, lengths)


def rank_value_reference(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    gene_map: GeneMap,
    token_median: np.ndarray,
    *,
    max_genes: int,
    target_sum: float = 10_000.0,
    cls_id: int = -1,
    eos_id: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """Plain-NumPy twin of :func:`rank_value_tokenize` (one cell at a time; defines semantics)."""
    seqs = []
    for r in range(len(indptr) - 1):
        cols = indices[indptr[r] : indptr[r + 1]]
        x = data[indptr[r] : indptr[r + 1]].astype(np.float64)
        n_counts = x.sum()
        tok = gene_map.col_token[cols]
        keep = (tok >= 0) & (x != 0)
        utok, inv = np.unique(tok[keep], return_inverse=True)
        summed = np.zeros(len(utok))
        np.add.at(summed, inv, x[keep])
        v = summed / n_counts * target_sum / token_median[utok]
        order = np.lexsort((utok, -v))[:max_genes]
        seq = utok[order].tolist()
        if cls_id >= 0:
            seq = [cls_id, *seq]
        if eos_id >= 0:
            seq = [*seq, eos_id]
        seqs.append(np.asarray(seq, dtype=np.int32))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    tokens = np.concatenate(seqs) if seqs else np.zeros(0, np.int32)
    return tokens.astype(np.int32), offsets
