"""Shared pieces of the tokenization kernels: the column->token map and an exact descending sort.

Why a radix sort: sorting dominates rank-value tokenization, and Numba's comparison sorts are
several times slower than NumPy's SIMD sorts. We sort a 32-bit key (the float32 image of each
float64 value, which preserves order because rounding is monotone) with a 4-pass LSD radix sort,
then repair the rare runs whose float32 keys collide by an exact (float64 value descending, token
ascending) insertion sort. The result is exactly the order of ``np.lexsort((token, -value))``:
equal values are ordered by ascending token id, a stable, documented rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit


@dataclass(frozen=True)
class GeneMap:
    """How the input's columns map onto vocabulary tokens.

    Attributes:
        col_token: int32 [n_input_genes]; token id of each input column, or -1 if the column is
            not in the vocabulary.
        col_group: int32 [n_input_genes]; for columns that collapse onto the same token with other
            columns, the index of their group (their counts are summed), else -1.
        group_token: int32 [n_groups]; the token of each collapse group.
    """

    col_token: np.ndarray
    col_group: np.ndarray
    group_token: np.ndarray

    @classmethod
    def from_col_token(cls, col_token: np.ndarray) -> GeneMap:
        """Builds the collapse groups from a column->token array (-1 = unmapped)."""
        col_token = np.ascontiguousarray(col_token, dtype=np.int32)
        mapped = np.flatnonzero(col_token >= 0)
        toks, inverse, counts = np.unique(
            col_token[mapped], return_inverse=True, return_counts=True
        )
        dup_tok_mask = counts > 1
        group_of_unique = np.full(len(toks), -1, dtype=np.int32)
        group_of_unique[dup_tok_mask] = np.arange(int(dup_tok_mask.sum()), dtype=np.int32)
        col_group = np.full(len(col_token), -1, dtype=np.int32)
        col_group[mapped] = group_of_unique[inverse]
        return cls(col_token, col_group, toks[dup_tok_mask].astype(np.int32))

    @property
    def n_groups(self) -> int:
        return len(self.group_token)


@njit(cache=True, nogil=True)
def gather_cell(
    indptr,
    indices,
    data,
    row,
    col_token,
    col_group,
    group_token,
    group_acc,
    touched,
    out_tok,
    out_val,
):
    """Collects (token, count) of one row's vocabulary genes, summing collapsed columns.

    Returns the number of entries written to ``out_tok``/``out_val`` (float64 counts).
    ``group_acc`` must be all zeros on entry and is left all zeros.
    """
    n = 0
    n_touched = 0
    for k in range(indptr[row], indptr[row + 1]):
        c = indices[k]
        t = col_token[c]
        if t < 0:
            continue
        x = np.float64(data[k])
        if x == 0.0:
            continue
        g = col_group[c]
        if g >= 0:
            if group_acc[g] == 0.0:
                touched[n_touched] = g
                n_touched += 1
            group_acc[g] += x
        else:
            out_tok[n] = t
            out_val[n] = x
            n += 1
    for j in range(n_touched):
        g = touched[j]
        out_tok[n] = group_token[g]
        out_val[n] = group_acc[g]
        group_acc[g] = 0.0
        n += 1
    return n


@njit(cache=True, nogil=True)
def _precedes(va, ta, vb, tb):
    """True if (va, ta) sorts before (vb, tb): value descending, then token ascending."""
    return va > vb or (va == vb and ta < tb)


@njit(cache=True, nogil=True)
def _radix_pass(src_k, src_i, dst_k, dst_i, n, digits, counts):
    """One stable counting-sort pass by ``digits[i]`` (0..255) moving keys and indices.

    Returns False (and moves nothing) when every element has the same digit.
    """
    for b in range(256):
        counts[b] = 0
    for i in range(n):
        counts[digits[i]] += 1
    if n == 0 or counts[digits[0]] == n:
        return False
    total = 0
    for b in range(256):
        c = counts[b]
        counts[b] = total
        total += c
    for i in range(n):
        d = digits[i]
        p = counts[d]
        dst_k[p] = src_k[i]
        dst_i[p] = src_i[i]
        counts[d] = p + 1
    return True


@njit(cache=True, nogil=True)
def sort_desc(vals, toks, n, fkey, key_tmp, idx, idx_tmp, counts, digits, presort_tokens):
    """Writes into ``idx[:n]`` the permutation ordering ``vals[:n]`` descending (ties: token asc).

    ``vals`` must be positive and finite. Scratch arrays (``fkey`` float32, ``key_tmp`` uint32,
    ``idx``/``idx_tmp`` int32, ``digits`` uint8) must hold at least ``n`` entries; ``counts``
    holds 256. With ``presort_tokens`` the elements are first radix-sorted by token, so runs of
    exactly equal values (common when sorting raw counts) come out already in token order and the
    repair step is linear; without it (rank values, where exact ties are rare) two passes are saved.
    """
    for i in range(n):
        fkey[i] = np.float32(vals[i])
    key = fkey.view(np.uint32)  # positive floats order like their bit patterns
    max_tok = 0
    for i in range(n):
        key[i] = np.uint32(0xFFFFFFFF) - key[i]
        idx[i] = i
        max_tok = max(max_tok, toks[i])
    src_k, dst_k, src_i, dst_i = key, key_tmp, idx, idx_tmp
    swapped = False
    if presort_tokens:
        shift = 0
        while shift < 32 and (max_tok >> shift) > 0:
            for i in range(n):
                digits[i] = (toks[src_i[i]] >> shift) & 0xFF
            if _radix_pass(src_k, src_i, dst_k, dst_i, n, digits, counts):
                src_k, dst_k = dst_k, src_k
                src_i, dst_i = dst_i, src_i
                swapped = not swapped
            shift += 8
    for shift in (0, 8, 16, 24):
        for i in range(n):
            digits[i] = (src_k[i] >> shift) & 0xFF
        if _radix_pass(src_k, src_i, dst_k, dst_i, n, digits, counts):
            src_k, dst_k = dst_k, src_k
            src_i, dst_i = dst_i, src_i
            swapped = not swapped
    if swapped:
        for i in range(n):
            idx[i] = src_i[i]
            key[i] = src_k[i]
    # Exact repair inside runs of equal float32 keys (near-ties and exact ties).
    i = 0
    while i < n:
        j = i + 1
        while j < n and key[j] == key[i]:
            j += 1
        if j - i > 1:
            for a in range(i + 1, j):
                cur = idx[a]
                b = a - 1
                while b >= i and _precedes(vals[cur], toks[cur], vals[idx[b]], toks[idx[b]]):
                    idx[b + 1] = idx[b]
                    b -= 1
                idx[b + 1] = cur
        i = j


def partition_rows(n_rows: int, n_parts: int) -> np.ndarray:
    """Row boundaries splitting ``n_rows`` into ``n_parts`` contiguous ranges for prange."""
    n_parts = max(1, min(n_parts, n_rows))
    return np.linspace(0, n_rows, n_parts + 1).astype(np.int64)


def compact(
    buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Packs per-row segments ``buf[starts[i]:starts[i]+lengths[i]]`` into one ragged array."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if len(lengths) and np.array_equal(starts, offsets[:-1]):
        return buf[: offsets[-1]].copy(), offsets
    return _compact(buf, starts, lengths, offsets), offsets


@njit(cache=True, nogil=True)
def _compact(buf, starts, lengths, offsets):
    out = np.empty(offsets[-1], dtype=buf.dtype)
    for i in range(len(lengths)):
        s = starts[i]
        o = offsets[i]
        for j in range(lengths[i]):
            out[o + j] = buf[s + j]
    return out


@njit(cache=True, nogil=True)
def radix_sort_f32(vals, n, tmp, counts):
    """Sorts ``vals[:n]`` (float32, no NaN) ascending in place with an LSD radix sort.

    Numba's quicksort degrades badly on arrays full of repeated values, which is exactly what
    count data is (most nonzero counts are 1, 2 or 3); a radix sort is linear whatever the ties.
    ``tmp`` is uint32 scratch of at least ``n``; ``counts`` holds 256.
    """
    key = vals.view(np.uint32)
    for i in range(n):
        k = key[i]
        key[i] = k ^ np.uint32(0xFFFFFFFF) if k >> 31 else k ^ np.uint32(0x80000000)
    src, dst = key, tmp
    swapped = False
    for shift in (0, 8, 16, 24):
        for b in range(256):
            counts[b] = 0
        for i in range(n):
            counts[(src[i] >> shift) & 0xFF] += 1
        if n == 0 or counts[(src[0] >> shift) & 0xFF] == n:
            continue
        total = 0
        for b in range(256):
            c = counts[b]
            counts[b] = total
            total += c
        for i in range(n):
            d = (src[i] >> shift) & 0xFF
            dst[counts[d]] = src[i]
            counts[d] += 1
        src, dst = dst, src
        swapped = not swapped
    if swapped:
        for i in range(n):
            key[i] = src[i]
    for i in range(n):
        k = key[i]
        key[i] = k ^ np.uint32(0x80000000) if k >> 31 else k ^ np.uint32(0xFFFFFFFF)
