"""One compiled pass per batch: pad, truncate (keeping ``<eos>``), attention mask and masking.

Bit-identical to the NumPy reference path (:meth:`Collator.build_reference`, which composes
``Collator._pad`` with the strategies in :mod:`scforge.data.stream.masking`): the same
counter-based draws (``mix32(key + position * golden)``, see
:mod:`scforge.data.stream.masking.base`), the same thresholds and the same random-gene pick. A
parity test on real shards keeps the two equal.

Why a kernel: the NumPy path makes about a dozen passes over each [B, L] batch (fill, row copies,
draws, compare, ``flatnonzero``, gathers, scatters, casts) and allocates as many temporaries;
here each token is read once and every output element written once, straight into the final
dtypes (int32 ids/labels, bool masks, float32 values), so the trainer's process converts
nothing. Single-threaded and ``nogil`` on purpose: parallelism comes from DataLoader workers,
and a kernel without threads is safe to call in forked processes.

All arithmetic is in uint64 holding 32-bit values (Numba would promote mixed uint32/int64
operations to float64).
"""

from __future__ import annotations

import numpy as np
from numba import njit

MODE_NONE, MODE_BERT, MODE_VALUE = 0, 1, 2

_MASK32 = np.uint64(0xFFFFFFFF)
_M1 = np.uint64(0x7FEB352D)
_M2 = np.uint64(0x846CA68B)
_S15, _S16, _S32 = np.uint64(15), np.uint64(16), np.uint64(32)
_PICK_SALT = np.uint64(0x68E31DA4)
"""Must equal the salt ``BertMasking.apply`` passes to ``rehash``."""
_GOLDEN32 = np.uint32(0x9E3779B9)
_M1_32, _M2_32 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)
_U15, _U16 = np.uint32(15), np.uint32(16)


@njit(cache=True, nogil=True, inline="always")
def _mix32(x: np.uint64) -> np.uint64:
    """lowbias32 of a 32-bit value held in a uint64 (for the few second draws)."""
    x ^= x >> _S16
    x = (x * _M1) & _MASK32
    x ^= x >> _S15
    x = (x * _M2) & _MASK32
    x ^= x >> _S16
    return x


@njit(cache=True, nogil=True, inline="always")
def _draw(key: np.uint32, t: int) -> np.uint32:
    """``mix32(key + t * golden)`` in uint32 arithmetic (vectorises: ~0.3 ns per token)."""
    x = np.uint32(key + np.uint32(t) * _GOLDEN32)
    x = np.uint32(x ^ (x >> _U16))
    x = np.uint32(x * _M1_32)
    x = np.uint32(x ^ (x >> _U15))
    x = np.uint32(x * _M2_32)
    return np.uint32(x ^ (x >> _U16))


@njit(cache=True, nogil=True)
def collate_batch(tokens, values, starts, full, max_len, keys, eos_id, keep_eos, pad_id,
                  is_special, mode, t_select, t_mask, t_random, mask_id, genes, fill_value,
                  ids, attn, vals, labels, vlabels, vmask):  # pragma: no cover (compiled)
    """Fills one batch's [B, L] outputs; returns (truncated cells, masked positions).

    Per row: plain copy/fill loops (vectorised), the draws of the row's real tokens into a
    scratch array (vectorised), a branch-free compaction of the positions whose draw selects
    them (~``probability`` of them), then the masking decisions at those positions only. Doing
    it all in one loop with branches costs about twice as much (mispredicted branches).

    Args:
        tokens, values: the window's concatenated tokens and per-token values (``values`` is
            ignored unless ``vals`` has B rows).
        starts, full: int64 [B]; first token and full length of each cell in ``tokens``.
        max_len: truncation length; L (the width of the outputs) is min(max full, max_len).
        keys: uint32 [B]; the cells' mask keys (:func:`~.masking.base.cell_keys`).
        eos_id, keep_eos: a truncated cell whose last token is ``eos_id`` ends with it.
        pad_id: id written past each cell's end.
        is_special: bool [vocab]; ids never selected for masking.
        mode: MODE_NONE, MODE_BERT or MODE_VALUE.
        t_select, t_mask, t_random: uint64 thresholds (draw < t) for selection, ``<mask>``
            and ``<mask>`` or random gene.
        mask_id, genes: the ``<mask>`` id and the ids random replacements are drawn from.
        fill_value: what hidden values become (value masking).
        ids, attn: int32 / bool [B, L] outputs.
        vals: float32 [B, L] output, or a [0, 0] array when the shards carry no values.
        labels: int32 [B, L] output (bert), else any [0, 0] array.
        vlabels, vmask: float32 / bool [B, L] outputs (value), else [0, 0] arrays.
    """
    n_rows, width = ids.shape
    has_values = vals.shape[0] == n_rows
    n_genes = np.uint64(len(genes))
    draws = np.empty(width, dtype=np.uint32)
    cand = np.empty(width, dtype=np.int64)
    n_cut = 0
    n_masked = 0
    for r in range(n_rows):
        a = starts[r]
        f = full[r]
        n = min(f, max_len)
        row = ids[r]
        arow = attn[r]
        src = tokens[a : a + n]
        for t in range(n):
            row[t] = src[t]
        for t in range(n):
            arow[t] = True
        for t in range(n, width):
            row[t] = pad_id
        for t in range(n, width):
            arow[t] = False
        if has_values:
            vrow = vals[r]
            vsrc = values[a : a + n]
            for t in range(n):
                vrow[t] = vsrc[t]
            for t in range(n, width):
                vrow[t] = 0.0
        if f > n:
            n_cut += 1
            if keep_eos and eos_id >= 0 and tokens[a + f - 1] == eos_id:
                row[n - 1] = eos_id
                if has_values:
                    vals[r, n - 1] = values[a + f - 1]
        if mode == MODE_BERT:
            lrow = labels[r]
            for t in range(width):
                lrow[t] = -100
        elif mode == MODE_VALUE:
            for t in range(width):
                vlabels[r, t] = vals[r, t]
            for t in range(width):
                vmask[r, t] = False
        else:
            continue
        key = np.uint32(keys[r])
        for t in range(n):  # positions >= n hold <pad>, which is special: never selected
            draws[t] = _draw(key, t)
        k = 0
        for t in range(n):
            cand[k] = t
            k += np.uint64(draws[t]) < t_select
        for j in range(k):
            t = cand[j]
            tok = row[t]
            if is_special[tok]:
                continue
            n_masked += 1
            if mode == MODE_BERT:
                u = np.uint64(draws[t])
                labels[r, t] = tok
                if u < t_mask:
                    row[t] = mask_id
                elif u < t_random:
                    row[t] = genes[(_mix32(u ^ _PICK_SALT) * n_genes) >> _S32]
            else:
                vmask[r, t] = True
                vals[r, t] = fill_value
    return n_cut, n_masked


def warm() -> None:
    """Loads (or compiles) the kernel for the common argument types: rank-value shards
    (uint16/uint32 tokens, no values) and value shards (uint8 bins, float32 values).

    The forkserver that starts DataLoader workers runs this once (see
    :class:`~scforge.data.stream.loader.StatefulLoader`), so workers fork with the kernel
    ready instead of each loading it (~0.2-1 s) before their first batch.
    """
    e2 = np.zeros((0, 0), dtype=np.float32)
    for tok_dtype in (np.uint16, np.uint32):
        for values in (np.zeros(0, dtype=np.float32), np.zeros(2, dtype=np.uint8),
                       np.zeros(2, dtype=np.float32)):
            has = len(values) > 0
            for mode in (MODE_BERT, MODE_VALUE) if has else (MODE_BERT,):
                ids = np.empty((1, 2), dtype=np.int64)
                collate_batch(np.full(2, 4, dtype=tok_dtype), values, np.zeros(1, np.int64),
                              np.full(1, 2, np.int64), 2, np.zeros(1, np.uint32), -1, True, 0,
                              np.zeros(8, dtype=bool), mode, np.uint64(0), np.uint64(0),
                              np.uint64(0), -1, np.zeros(1, np.int64), np.float32(0), ids,
                              np.empty((1, 2), dtype=bool),
                              np.empty((1, 2), np.float32) if has else e2,
                              np.empty((1, 2), np.int64), np.empty((1, 2), np.float32),
                              np.empty((1, 2), dtype=bool))
