"""Cells -> padded, masked ``Batch`` tensors; length bucketing of a shuffle window into batches.

Shape legend: B = cells in the batch, L = padded length (the longest cell, capped at max_len),
T = real tokens in the batch (the cells' token arrays concatenated).

A batch is built in one compiled pass (:mod:`scforge.data.stream.fused`): each token is read
once and written straight into the contract's dtypes (ids/labels int32, masks bool, values
float32) inside an arena (shared memory in a DataLoader worker), so the trainer's process only
wraps the arrays as tensors (:mod:`scforge.data.stream.wire`). With length bucketing B*L is
within a few percent of T, so almost nothing is spent on padding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scforge.data.stream.fused import collate_batch
from scforge.data.stream.masking import MaskingStrategy, Specials, cell_keys, token_draws
from scforge.data.stream.table import CellTable
from scforge.data.stream.wire import Arena, BatchInfo, Layout, StreamBatch, Wire


def plan_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None, *,
                 bucketing: bool, group_batches: int = 0) -> list[np.ndarray]:
    """Splits a window's cells into batches of row indices.

    Without bucketing: a random permutation (identity when ``rng`` is None) cut into batches.
    With bucketing (Geneformer's length-grouped sampler): within groups of ``group_batches``
    batches (0 = the whole window) cells are sorted by length (ties keep their shuffled order),
    cut into batches, and the full batches are shuffled; a partial batch always comes last.
    """
    n = len(lengths)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if bucketing:
        group = n if group_batches <= 0 else group_batches * batch_size
        for a in range(0, n, group):
            seg = order[a : a + group]
            order[a : a + group] = seg[np.argsort(lengths[seg], kind="stable")]
    batches = [order[a : a + batch_size] for a in range(0, n, batch_size)]
    if bucketing and rng is not None:
        full = [b for b in batches if len(b) == batch_size]
        tail = [b for b in batches if len(b) < batch_size]
        batches = [full[i] for i in rng.permutation(len(full))] + tail
    return batches


class Collator:
    """Pads, truncates and masks cells of a :class:`CellTable` into a batch.

    Truncation keeps a cell's first ``max_len`` tokens (rank-ordered tokenizers put the most
    informative genes first); with ``keep_eos`` a truncated cell that ended in ``<eos>`` keeps it
    as its last token instead (first ``max_len - 1`` tokens + ``<eos>``), so ``<eos>`` still
    marks every cell's end, as in the tokenizer's output.

    Batches are built by one compiled pass (:mod:`scforge.data.stream.fused`) whenever the
    masking strategy supports it, else (or with ``use_kernel=False``) by the NumPy reference
    path; both give identical batches.

    Args:
        max_len: longest padded length.
        specials: special token ids (pad fill, never-masked ids).
        eos_id: the ``<eos>`` id, or -1 when the tokenizer adds none.
        masking: the masking strategy.
        seed: the stream seed (masks are keyed on seed, epoch and cell identity).
        keep_eos: see above.
    """

    def __init__(self, *, max_len: int, specials: Specials, eos_id: int,
                 masking: MaskingStrategy, seed: int, keep_eos: bool = True) -> None:
        self.max_len = max_len
        self.specials = specials
        self.eos_id = eos_id
        self.masking = masking
        self.seed = seed
        self.keep_eos = keep_eos
        self.use_kernel = True
        """Use the fused kernel when the strategy allows (False: NumPy reference path)."""
        self._kernel = masking.kernel_params()
        self._is_special = specials.is_special_table()
        self._fields: tuple[Any, list[tuple[str, str]]] | None = None

    def fields(self, has_values: bool) -> list[tuple[str, str]]:
        """``(field, dtype)`` of every [B, L] array a batch carries (the contract's dtypes)."""
        key = (has_values, self.masking)
        if self._fields is not None and self._fields[0] == key:
            return self._fields[1]
        out = [("input_ids", "int32"), ("attention_mask", "bool")]
        if has_values:
            out.append(("values", "float32"))
        out += [(n, "int32" if d == "ids" else d) for n, d in self.masking.outputs]
        self._fields = (key, out)
        return out

    def nbytes(self, table: CellTable, idx: np.ndarray) -> int:
        """Arena bytes the batch of cells ``idx`` needs."""
        lens = table.offsets[idx + 1] - table.offsets[idx]
        shape = (len(idx), int(min(int(lens.max()), self.max_len)))
        return sum(Arena.size(shape, dt) for _, dt in self.fields(table.values is not None))

    def _pad(self, table: CellTable, ids: np.ndarray, vals: np.ndarray | None,
             lens: np.ndarray, starts: np.ndarray, full: np.ndarray) -> int:
        """Reference path: fills padded ids/values; returns how many cells were truncated."""
        ids.fill(self.specials.pad)
        if vals is not None:
            vals.fill(0.0)
        tokens = table.tokens
        values: Any = table.values  # not None whenever vals is not None
        for r, (a, n) in enumerate(zip(starts.tolist(), lens.tolist(), strict=True)):
            ids[r, :n] = tokens[a : a + n]
            if vals is not None:
                vals[r, :n] = values[a : a + n]
        cut = np.flatnonzero(full > lens)
        if self.keep_eos and self.eos_id >= 0 and len(cut):
            last = starts[cut] + full[cut] - 1
            keep = tokens[last] == self.eos_id
            rows, cols, last = cut[keep], lens[cut[keep]] - 1, last[keep]
            ids[rows, cols] = self.eos_id
            if vals is not None:
                vals[rows, cols] = values[last]
        return len(cut)

    def _fill_reference(self, table: CellTable, arrays: dict[str, np.ndarray], keys: np.ndarray,
                        starts: np.ndarray, full: np.ndarray, lens: np.ndarray) -> tuple[int, int]:
        ids, vals = arrays["input_ids"], arrays.get("values")
        n_cut = self._pad(table, ids, vals, lens, starts, full)
        np.less(np.arange(ids.shape[1])[None, :], lens[:, None], out=arrays["attention_mask"])
        n_masked = self.masking.apply(ids, vals, token_draws(keys, ids.shape[1]),
                                      {k: arrays[k] for k, _ in self.masking.outputs})
        return n_cut, n_masked

    def _fill_kernel(self, table: CellTable, arrays: dict[str, np.ndarray], keys: np.ndarray,
                     starts: np.ndarray, full: np.ndarray) -> tuple[int, int]:
        k = self._kernel
        assert k is not None
        if table.values is not None and table.values.dtype == np.float16:
            table.values = table.values.astype(np.float32)  # exact; Numba has no float16
            # (windows arrive widened already: see WindowBuilder)
        none = _EMPTY_F32
        values = table.values if table.values is not None else none.reshape(-1)
        n_cut, n_masked = collate_batch(
            table.tokens, values, starts, full, self.max_len, keys, self.eos_id,
            self.keep_eos, self.specials.pad, self._is_special, k.mode, np.uint64(k.t_select),
            np.uint64(k.t_mask), np.uint64(k.t_random), k.mask_id, k.genes,
            np.float32(k.fill_value), arrays["input_ids"], arrays["attention_mask"],
            arrays.get("values", none), arrays.get("labels", _EMPTY_I64),
            arrays.get("value_labels", none), arrays.get("value_mask", _EMPTY_BOOL))
        return int(n_cut), int(n_masked)

    def keys(self, table: CellTable, epoch: int) -> np.ndarray:
        """uint32 mask key of every cell of ``table`` for ``epoch`` (one vectorised hash per
        window instead of one per batch)."""
        return cell_keys(self.seed, epoch, table.gids, self.masking.stream)

    def summary(self, table: CellTable, plan: list[np.ndarray]) -> np.ndarray:
        """int64 [batches, 3]: padded width, real tokens and stand-in cells of each batch of
        ``plan`` (one vectorised pass per window instead of reductions per batch)."""
        if not plan:
            return np.zeros((0, 3), dtype=np.int64)
        order = np.concatenate(plan)
        cuts = np.zeros(len(plan), dtype=np.int64)
        np.cumsum([len(b) for b in plan[:-1]], out=cuts[1:])
        lens = np.minimum(table.offsets[order + 1] - table.offsets[order], self.max_len)
        return np.stack([np.maximum.reduceat(lens, cuts), np.add.reduceat(lens, cuts),
                         np.add.reduceat(table.filled[order].astype(np.int64), cuts)], axis=1)

    def nbytes_of(self, rows: int, width: int, has_values: bool) -> int:
        """Arena bytes of a [rows, width] batch."""
        return sum(Arena.size((rows, width), dt) for _, dt in self.fields(has_values))

    def build(self, table: CellTable, idx: np.ndarray, epoch: int, arena: Arena,
              info: BatchInfo, *, keys: np.ndarray | None = None,
              summary: tuple[int, int, int] | None = None) -> Wire:
        """The batch of cells ``idx``, masked for ``epoch``, its arrays carved from ``arena``.

        ``info.stats`` is filled with the batch's counters. ``keys``: the cells' mask keys
        when already known (``self.keys(table, epoch)[idx]``); ``summary``: the batch's row of
        :meth:`summary` when already known.
        """
        starts = table.offsets[idx]
        full = table.offsets[idx + 1] - starts
        lens = np.minimum(full, self.max_len)
        if summary is None:
            summary = (int(lens.max()), int(lens.sum()), int(table.filled[idx].sum()))
        width, real, filled = summary
        shape = (len(idx), width)
        arrays: dict[str, np.ndarray] = {}
        layout: Layout = []
        for name, dtype in self.fields(table.values is not None):
            arrays[name], off = arena.take(shape, dtype)
            layout.append((name, dtype, off, shape))
        if keys is None:
            keys = cell_keys(self.seed, epoch, table.gids[idx], self.masking.stream)
        if self.use_kernel and self._kernel is not None:
            n_cut, n_masked = self._fill_kernel(table, arrays, keys, starts, full)
        else:
            n_cut, n_masked = self._fill_reference(table, arrays, keys, starts, full, lens)
        info.stats = {"cells": shape[0], "real_tokens": real,
                      "padded_tokens": shape[0] * shape[1], "masked_tokens": n_masked,
                      "truncated_cells": n_cut, "filled_cells": filled}
        return Wire(arena.buffer, layout, lens.tolist(),
                    {f: col[idx].tolist() for f, col in table.obs.items()},
                    table.cell_ids[idx].tolist(), info, pooled=arena.pooled, ring=arena.ring)

    def __call__(self, table: CellTable, idx: np.ndarray, epoch: int) -> StreamBatch:
        """The finished batch of cells ``idx`` of ``table`` (in-process use)."""
        arena = Arena.private(self.nbytes(table, idx))
        return self.build(table, idx, epoch, arena, BatchInfo(epoch, -1, -1, -1)).materialize()


_EMPTY_F32 = np.zeros((0, 0), dtype=np.float32)
_EMPTY_I64 = np.zeros((0, 0), dtype=np.int64)
_EMPTY_BOOL = np.zeros((0, 0), dtype=bool)
