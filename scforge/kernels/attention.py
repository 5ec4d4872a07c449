"""Sparse corrections that turn no-dropout flash attention into attention with probability dropout.

Why: on CPU, ``F.scaled_dot_product_attention`` has a fused (flash) kernel only without dropout;
with BERT/Geneformer's attention-probability dropout it materialises [B, H, L, L] several times.
Dropout keeps a fraction ``1 - p`` of the probabilities, so the dropped ones are few (p = 0.02:
2%), and the exact dropout result differs from the flash result only at them:

    O = (P V - P_D V) / (1 - p)        P_D = P at the dropped entries, 0 elsewhere

Given the flash kernel's log-sum-exp per query row, ``P_ij = exp(s_ij - lse_i)`` for one dropped
entry costs one Dh-long dot product; its key/value rows stay in cache (one (batch, head) pair at
a time). These kernels walk the dropped entries of each (batch, head) pair: forward computes
``P_D`` and ``P_D V``, backward the parts of dQ, dK, dV that the flash backward (run with
``dO / (1 - p)``) adds for entries that were in fact dropped.

Layout: q, k, v, grads are [BH, L, Dh] float32/float64 (C-contiguous); ``flat`` are sorted int64
indices into the [BH, L, Lk] probability tensor; ``seg[bh]:seg[bh + 1]`` are those of pair ``bh``.
Each call handles pairs ``bh0:bh1`` without threads of its own (``nogil``): the caller runs
disjoint ranges in Python threads. Numba's parallel (OpenMP) layer is avoided on purpose: a
process that ran an OpenMP kernel aborts when it later forks (DataLoader workers, tests).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=True)
def dropped_forward(q, k, v, lse, bias, flat, seg, scale, pd, corr, bh0, bh1):  # noqa: ANN001, ANN201
    """Fills ``pd[e]`` = P at dropped entry ``e`` and ``corr`` [BH, L, Dh] = P_D V.

    ``bias[e]`` is the additive attention mask at entry ``e`` (0 or -inf); ``corr`` starts at 0.
    Entries are sorted, so one query row's entries are consecutive: its q row and its sum stay
    in registers.
    """
    length, dh = q.shape[1], q.shape[2]
    keys = k.shape[1]
    block = length * keys
    for bh in range(bh0, bh1):
        base = bh * block
        qb, kb, vb, cb = q[bh], k[bh], v[bh], corr[bh]
        e, end = seg[bh], seg[bh + 1]
        while e < end:
            i = (flat[e] - base) // keys
            row_end = base + (i + 1) * keys
            qi, ci = qb[i], cb[i]
            while e < end and flat[e] < row_end:
                kj = kb[flat[e] - base - i * keys]
                vj = vb[flat[e] - base - i * keys]
                s = qi[0] * kj[0]
                for t in range(1, dh):
                    s += qi[t] * kj[t]
                pd[e] = math.exp(s * scale + bias[e] - lse[bh, i])
                pe = pd[e]  # in the input dtype: the update below stays single precision
                for t in range(dh):
                    ci[t] += pe * vj[t]
                e += 1


@njit(cache=True, nogil=True, fastmath=True)
def dropped_backward(q, k, v, go, flat, seg, pd, scale, dq, dk, dv, bh0, bh1):  # noqa: ANN001, ANN201
    """Adds the dropped entries' corrections to ``dq``, ``dk``, ``dv`` ([BH, L, Dh], input dtype).

    ``go`` is the unscaled output gradient dO; ``pd`` holds ``P / (1 - p)`` at the dropped
    entries and ``scale`` is the softmax scale (both in the input dtype). The flash backward,
    given ``dO / (1 - p)``, counts every entry as kept; for a dropped entry it adds
    ``a P dO_i`` to dV_j and ``a P (dO_i . v_j)`` to dS_ij (a = 1 / (1 - p)), which are
    subtracted here (dS times ``scale`` times k_j / q_i for dQ_i / dK_j). Its ``-P delta``
    term is correct as it is.
    """
    length, dh = q.shape[1], q.shape[2]
    keys = k.shape[1]
    block = length * keys
    for bh in range(bh0, bh1):
        base = bh * block
        qb, kb, vb, gb = q[bh], k[bh], v[bh], go[bh]
        dqb, dkb, dvb = dq[bh], dk[bh], dv[bh]
        e, end = seg[bh], seg[bh + 1]
        while e < end:
            i = (flat[e] - base) // keys
            row_end = base + (i + 1) * keys
            qi, gi, dqi = qb[i], gb[i], dqb[i]
            while e < end and flat[e] < row_end:
                j = flat[e] - base - i * keys
                vj, kj, dvj, dkj = vb[j], kb[j], dvb[j], dkb[j]
                w = pd[e]
                dot = gi[0] * vj[0]
                for t in range(1, dh):
                    dot += gi[t] * vj[t]
                ds = -(w * dot) * scale
                for t in range(dh):
                    dvj[t] -= w * gi[t]
                    dqi[t] += ds * kj[t]
                    dkj[t] += ds * qi[t]
                e += 1


def segments(flat: np.ndarray, n_bh: int, block: int) -> np.ndarray:
    """int64 [n_bh + 1]: where each (batch, head) pair's entries start in the sorted ``flat``."""
    return np.searchsorted(flat, np.arange(n_bh + 1, dtype=np.int64) * block).astype(np.int64)


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def run_split(kernel, n_bh: int, *args, threads: int = 1) -> None:  # noqa: ANN001
    """Runs ``kernel(*args, bh0, bh1)`` over ``range(n_bh)`` split into ``threads`` parts.

    The pool is per process (rebuilt after a fork) and per thread count.
    """
    global _POOL
    threads = max(1, min(threads, n_bh))
    if threads == 1:
        kernel(*args, 0, n_bh)
        return
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != threads:
        _POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, "scforge-attn"))
    cuts = [n_bh * t // threads for t in range(threads + 1)]
    spans = zip(cuts[:-1], cuts[1:], strict=True)
    jobs = [_POOL[2].submit(kernel, *args, a, b) for a, b in spans if b > a]
    for job in jobs:
        job.result()
