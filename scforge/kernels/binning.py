"""Binned-expression tokenization (scGPT) and the valued-sequence kernel it shares.

scGPT bins each cell over its nonzero raw counts: ``edges = np.quantile(nonzero, linspace(0, 1,
n_bins - 1))`` (NumPy's linear method, float64 edges from float32 counts), then ``digitize`` with
a tie between the left and right edge broken by ``np.random.rand``. We compute the same edges with
the same float operations and break ties by the same formula, ``ceil(r * (right - left) + left)``,
but with ``r`` drawn from a counter-based hash of (seed, cell, token): deterministic, seedable, and
independent of thread count and chunking. Where scGPT's result is not random ours equals it.

Edges use every nonzero count of the row (as scGPT's reference does, before any gene filtering);
genes that collapse onto one token are binned by their summed count against the same edges.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange
from scforge.kernels.common import (
    GeneMap,
    compact,
    gather_cell,
    partition_rows,
    radix_sort_f32,
    sort_desc,
)

ORDER_INPUT, ORDER_TOKEN, ORDER_EXPRESSION = 0, 1, 2
ORDERS = {"input": ORDER_INPUT, "token": ORDER_TOKEN, "expression": ORDER_EXPRESSION}
MODE_BINNED, MODE_LOG1P, MODE_RAW = 0, 1, 2


@njit(cache=True, nogil=True)
def _mix64(z):
    """splitmix64 finaliser: a well-mixed 64-bit hash of ``z``."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def tie_uniform(seed, cell, token):
    """Uniform [0, 1) draw keyed on (seed, cell, token)."""
    h = _mix64(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(cell))
    h = _mix64(h + np.uint64(token) * np.uint64(0xD1B54A32D192ED03))
    return np.float64(h >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, nogil=True)
def quantile_edges(sorted_vals, n, q, edges):
    """np.quantile(sorted_vals[:n], q) (linear method) for float32 input, written into ``edges``."""
    for i in range(len(q)):
        virtual = (n - 1) * q[i]
        if virtual >= n - 1:
            edges[i] = np.float64(sorted_vals[n - 1])
            continue
        prev = int(math.floor(virtual))
        gamma = virtual - prev
        a = sorted_vals[prev]
        b = sorted_vals[prev + 1]
        diff = np.float64(b - a)  # float32 subtraction, as NumPy does before promoting
        if gamma >= 0.5:
            edges[i] = np.float64(b) - diff * (1.0 - gamma)
        else:
            edges[i] = np.float64(a) + diff * gamma


@njit(cache=True, nogil=True)
def bin_value(x, edges, r):
    """scGPT's _digitize(side="both") for one value with the uniform draw ``r``."""
    left = 0  # number of edges <= x  (np.digitize(x, edges))
    right = 0  # number of edges < x  (np.digitize(x, edges, right=True))
    lo, hi = 0, len(edges)
    while lo < hi:
        mid = (lo + hi) // 2
        if edges[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    left = lo
    lo, hi = 0, left
    while lo < hi:
        mid = (lo + hi) // 2
        if edges[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    right = lo
    if left == right:
        return left
    return int(math.ceil(r * (right - left) + left))


@njit(parallel=True, cache=True, nogil=True)
def _valued_chunk(
    indptr,
    indices,
    data,
    col_token,
    col_group,
    group_token,
    row_ids,
    mode,
    q,
    seed,
    target_sum,
    clip,
    order,
    max_genes,
    cls_id,
    eos_id,
    bounds,
    starts,
    out_tok,
    out_val,
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
        cnt = np.empty(width, dtype=np.float64)
        emit = np.empty(width, dtype=np.float32)
        nz = np.empty(width, dtype=np.float32)
        fkey = np.empty(width, dtype=np.float32)
        key_tmp = np.empty(width, dtype=np.uint32)
        idx = np.empty(width, dtype=np.int32)
        idx_tmp = np.empty(width, dtype=np.int32)
        packed = np.empty(width, dtype=np.int64)
        counts = np.empty(256, dtype=np.int64)
        digits = np.empty(width, dtype=np.uint8)
        edges = np.empty(max(len(q), 1), dtype=np.float64)
        group_acc = np.zeros(max(n_groups, 1), dtype=np.float64)
        touched = np.empty(max(n_groups, 1), dtype=np.int32)
        for r in range(lo, hi):
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
                cnt,
            )
            if mode == MODE_BINNED:
                n_nz = 0
                for k in range(indptr[r], indptr[r + 1]):
                    if data[k] != 0:
                        nz[n_nz] = data[k]
                        n_nz += 1
                if n_nz > 0:
                    radix_sort_f32(nz, n_nz, key_tmp, counts)
                    quantile_edges(nz, n_nz, q, edges)
                for i in range(n):
                    u = tie_uniform(seed, row_ids[r], tok[i])
                    emit[i] = bin_value(cnt[i], edges[: len(q)], u)
            else:
                n_counts = 0.0
                for k in range(indptr[r], indptr[r + 1]):
                    n_counts += np.float64(data[k])
                for i in range(n):
                    v = cnt[i]
                    if mode == MODE_LOG1P:
                        v = math.log1p(v / n_counts * target_sum)
                    if clip > 0 and v > clip:
                        v = clip
                    emit[i] = v
            # Order and truncate; truncation keeps the highest counts (ties: lower token).
            m = min(n, max_genes)
            if order == ORDER_EXPRESSION or n > max_genes:
                sort_desc(cnt, tok, n, fkey, key_tmp, idx, idx_tmp, counts, digits, True)
            else:
                for i in range(n):
                    idx[i] = i
            if order == ORDER_INPUT and n > max_genes:
                idx[:m].sort()  # distinct ints: quicksort is fine here
            elif order == ORDER_TOKEN:
                for i in range(m):
                    packed[i] = (np.int64(tok[idx[i]]) << 32) | np.int64(idx[i])
                packed[:m].sort()
                for i in range(m):
                    idx[i] = np.int32(packed[i] & 0xFFFFFFFF)
            o = starts[r]
            j = 0
            if cls_id >= 0:
                out_tok[o] = cls_id
                out_val[o] = 0.0
                j = 1
            for i in range(m):
                out_tok[o + j] = tok[idx[i]]
                out_val[o + j] = emit[idx[i]]
                j += 1
            if eos_id >= 0:
                out_tok[o + j] = eos_id
                out_val[o + j] = 0.0
                j += 1
            lengths[r] = j


def valued_tokenize(
    indptr,
    indices,
    data,
    gene_map: GeneMap,
    *,
    mode: int,
    row_ids: np.ndarray,
    max_genes: int,
    order: str,
    n_bins: int = 51,
    seed: int = 0,
    target_sum: float = 10_000.0,
    clip: float = 0.0,
    cls_id: int = -1,
    eos_id: int = -1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shared driver of the binned and continuous kernels. Returns (tokens, values, offsets)."""
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is not one of {sorted(ORDERS)}")
    n_rows = len(indptr) - 1
    nnz = np.diff(indptr).astype(np.int64)
    cap = np.minimum(nnz, max_genes) + int(cls_id >= 0) + int(eos_id >= 0)
    starts = np.zeros(n_rows, dtype=np.int64)
    if n_rows:
        np.cumsum(cap[:-1], out=starts[1:])
    out_tok = np.empty(int(cap.sum()), dtype=np.int32)
    out_val = np.empty(int(cap.sum()), dtype=np.float32)
    lengths = np.zeros(n_rows, dtype=np.int64)
    q = np.linspace(0, 1, n_bins - 1) if mode == MODE_BINNED else np.zeros(0)
    bounds = partition_rows(n_rows, 4 * numba.get_num_threads())
    if n_rows:
        _valued_chunk(
            indptr,
            indices,
            data,
            gene_map.col_token,
            gene_map.col_group,
            gene_map.group_token,
            np.ascontiguousarray(row_ids, dtype=np.int64),
            int(mode),
            q,
            np.uint64(seed),
            float(target_sum),
            float(clip),
            ORDERS[order],
            int(max_genes),
            int(cls_id),
            int(eos_id),
            bounds,
            starts,
            out_tok,
            out_val,
            lengths,
        )
    tokens, offsets = compact(out_tok, starts, lengths)
    values, _ = compact(out_val, starts, lengths)
    return tokens, values, offsets


def binned_tokenize(
    indptr,
    indices,
    data,
    gene_map: GeneMap,
    *,
    row_ids: np.ndarray,
    n_bins: int = 51,
    seed: int = 0,
    max_genes: int,
    order: str = "input",
    cls_id: int = -1,
    eos_id: int = -1,
):
    """Tokenizes a CSR chunk into (tokens, bins as uint8, offsets); see the module docstring.

    ``row_ids`` are the cells' global indices: together with ``seed`` they key the tie-breaks,
    so a cell gets the same bins whichever chunk or worker processes it.
    """
    if not 3 <= n_bins <= 256:
        raise ValueError(f"n_bins={n_bins} must be in [3, 256] (bins are stored as uint8)")
    tokens, values, offsets = valued_tokenize(
        indptr,
        indices,
        data,
        gene_map,
        mode=MODE_BINNED,
        row_ids=row_ids,
        max_genes=max_genes,
        order=order,
        n_bins=n_bins,
        seed=seed,
        cls_id=cls_id,
        eos_id=eos_id,
    )
    return tokens, values.astype(np.uint8), offsets


def quantile_edges_reference(nonzero: np.ndarray, n_bins: int) -> np.ndarray:
    """scGPT's edges, computed by NumPy itself."""
    return np.quantile(nonzero, np.linspace(0, 1, n_bins - 1))


def binned_reference(
    indptr,
    indices,
    data,
    gene_map: GeneMap,
    *,
    row_ids,
    n_bins: int = 51,
    seed: int = 0,
    max_genes: int,
    order: str = "input",
    cls_id: int = -1,
    eos_id: int = -1,
):
    """Plain-NumPy twin of :func:`binned_tokenize` (per cell, np.quantile + np.digitize)."""
    toks, vals, lens = [], [], []
    for r in range(len(indptr) - 1):
        cols = indices[indptr[r] : indptr[r + 1]]
        x = data[indptr[r] : indptr[r + 1]]
        nonzero = x[x != 0]
        edges = quantile_edges_reference(nonzero, n_bins) if len(nonzero) else np.zeros(n_bins - 1)
        t, c = _collapse_reference(cols, x, gene_map)
        left = np.digitize(c, edges)
        right = np.digitize(c, edges, right=True)
        u = np.array([tie_uniform(np.uint64(seed), int(row_ids[r]), int(tt)) for tt in t])
        b = np.where(left == right, left, np.ceil(u * (right - left) + left)).astype(np.int64)
        order_idx = _order_reference(t, c, max_genes, order)
        _emit(toks, vals, lens, t[order_idx], b[order_idx], cls_id, eos_id)
    tokens, values, offsets = _pack(toks, vals, lens)
    return tokens, values.astype(np.uint8), offsets


def _collapse_reference(cols, x, gene_map: GeneMap):
    """(tokens, summed counts) in the kernel's gather order: singletons by column, then groups."""
    t = gene_map.col_token[cols]
    keep = (t >= 0) & (x != 0)
    cols, x = cols[keep], x[keep].astype(np.float64)
    g = gene_map.col_group[cols]
    single = g < 0
    grp_order = list(dict.fromkeys(g[~single].tolist()))
    sums = [x[~single][g[~single] == gg].sum() for gg in grp_order]
    tok = np.concatenate([gene_map.col_token[cols[single]], gene_map.group_token[grp_order]])
    cnt = np.concatenate([x[single], np.asarray(sums, dtype=np.float64)])
    return tok.astype(np.int32), cnt


def _order_reference(tok, cnt, max_genes: int, order: str) -> np.ndarray:
    n = len(tok)
    pos = np.arange(n)
    expr_first = order == "expression" or n > max_genes
    sel = np.lexsort((tok, -cnt))[:max_genes] if expr_first else pos
    if order == "input":
        return np.sort(sel)
    if order == "token":
        return sel[np.argsort(tok[sel], kind="stable")]
    return sel


def _emit(toks, vals, lens, t, v, cls_id, eos_id):
    t = list(t)
    v = list(v)
    if cls_id >= 0:
        t, v = [cls_id, *t], [0, *v]
    if eos_id >= 0:
        t, v = [*t, eos_id], [*v, 0]
    toks.append(np.asarray(t, dtype=np.int32))
    vals.append(np.asarray(v, dtype=np.float32))
    lens.append(len(t))


def _pack(toks, vals, lens):
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    cat = np.concatenate
    tokens = cat(toks).astype(np.int32) if toks else np.zeros(0, np.int32)
    values = cat(vals).astype(np.float32) if vals else np.zeros(0, np.float32)
    return tokens, values, offsets
