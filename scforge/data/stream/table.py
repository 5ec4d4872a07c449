"""``CellTable``: the decoded cells of one shuffle window, concatenated (columnar, numpy).

Windows are assembled by a :class:`WindowBuilder` that copies each block's cells into buffers it
reuses from window to window (fresh memory costs a page fault per 4 KiB on first touch, ~1.3 us
each here: more than decoding the cells), and keeps strings as object arrays, so that a batch's
metadata is one fancy-index + ``tolist()`` per column instead of a Python loop per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def _objects(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@dataclass
class CellTable:
    """Decoded cells of one shuffle window, concatenated.

    Attributes:
        tokens: uint16/uint32 [sum of lengths]; cell ``i`` is ``tokens[offsets[i]:offsets[i+1]]``.
        values: per-token values (uint8 bins or float32; float16 shards are widened exactly)
            or None.
        offsets: int64 [n + 1].
        gids: int64 [n]; manifest-wide cell index (the identity that seeds masks).
        cell_ids: object [n]; source obs names.
        obs: obs field -> object [n] of per-cell values (strings, None where absent).
        filled: bool [n]; True where a cell stands in for an unreadable one (on_error="skip").
    """

    tokens: np.ndarray
    values: np.ndarray | None
    offsets: np.ndarray
    gids: np.ndarray
    cell_ids: np.ndarray
    obs: dict[str, np.ndarray]
    filled: np.ndarray

    @property
    def n_cells(self) -> int:
        return len(self.gids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_block(cls, block: dict[str, Any], lo: int, hi: int, gid0: int,
                   obs_fields: list[str]) -> CellTable:
        """Cells ``[lo, hi)`` of a decoded block whose first cell has global index ``gid0``
        (copied: block arrays may live in a reader's recycled buffers)."""
        builder = WindowBuilder()
        builder.begin(hi - lo, obs_fields, values=block.get("values") is not None)
        builder.add_block(block, lo, hi, gid0)
        return builder.finish(copy=True)

    @classmethod
    def concat(cls, parts: list[CellTable]) -> CellTable:
        """One table of ``parts`` in order."""
        lengths = np.concatenate([np.diff(p.offsets) for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        has_values = parts[0].values is not None
        return cls(tokens=np.concatenate([p.tokens for p in parts]),
                   values=np.concatenate([p.values for p in parts]) if has_values else None,
                   offsets=offsets, gids=np.concatenate([p.gids for p in parts]),
                   cell_ids=np.concatenate([p.cell_ids for p in parts]),
                   obs={f: np.concatenate([p.obs[f] for p in parts]) for f in parts[0].obs},
                   filled=np.concatenate([p.filled for p in parts]))

    def take(self, idx: np.ndarray, *, filled: bool = False) -> CellTable:
        """The cells at ``idx`` (as a new table), optionally marked as stand-ins."""
        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.offsets[idx + 1] - self.offsets[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        pos = np.repeat(self.offsets[idx] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return CellTable(self.tokens[pos], None if self.values is None else self.values[pos],
                         offsets, self.gids[idx], self.cell_ids[idx],
                         {f: v[idx] for f, v in self.obs.items()},
                         np.full(len(idx), True) if filled else self.filled[idx])


class WindowBuilder:
    """Assembles a :class:`CellTable` from pieces of blocks, reusing its buffers.

    The table returned by :meth:`finish` views those buffers: it is valid until the next
    :meth:`begin` (one window at a time, as a worker builds them).
    """

    def __init__(self) -> None:
        self._tokens = np.empty(0, dtype=np.uint8)
        self._values = np.empty(0, dtype=np.uint8)
        self._n = 0

    def begin(self, n_cells: int, obs_fields: list[str], *, values: bool) -> None:
        """Starts a window of ``n_cells`` cells."""
        self._cap = n_cells
        self._n = 0
        self._t = 0
        self._tok_dtype: np.dtype | None = None
        self._val_dtype: np.dtype | None = None
        self._has_values = values
        self._offsets = np.zeros(n_cells + 1, dtype=np.int64)
        self._gids = np.empty(n_cells, dtype=np.int64)
        self._filled = np.zeros(n_cells, dtype=bool)
        self._cell_ids = np.empty(n_cells, dtype=object)
        self._obs = {f: np.empty(n_cells, dtype=object) for f in obs_fields}

    def _room(self, buf: np.ndarray, used: int, more: int, dtype: np.dtype) -> np.ndarray:
        """``buf`` (bytes) grown to hold ``used + more`` elements of ``dtype``."""
        need = (used + more) * dtype.itemsize
        if need <= len(buf):
            return buf
        grown = np.empty(max(need, len(buf) + len(buf) // 2), dtype=np.uint8)
        grown[: used * dtype.itemsize] = buf[: used * dtype.itemsize]
        return grown

    def add_block(self, block: dict[str, Any], lo: int, hi: int, gid0: int) -> None:
        """Appends cells ``[lo, hi)`` of a decoded block (first cell's global index ``gid0``)."""
        lengths = block["lengths"]
        ends = np.cumsum(lengths[:hi], dtype=np.int64)
        a = int(ends[lo - 1]) if lo else 0
        b = int(ends[hi - 1]) if hi else 0
        self._add(block["tokens"][a:b], None if block.get("values") is None
                  else block["values"][a:b], ends[lo:hi] - a)
        n0 = self._n - (hi - lo)
        self._gids[n0 : self._n] = np.arange(gid0 + lo, gid0 + hi, dtype=np.int64)
        self._cell_ids[n0 : self._n] = block["cell_id"][lo:hi]
        for f, col in self._obs.items():
            col[n0 : self._n] = block[f][lo:hi] if f in block else None

    def add_table(self, table: CellTable) -> None:
        """Appends every cell of ``table``."""
        self._add(table.tokens, table.values, table.offsets[1:])
        n0 = self._n - table.n_cells
        self._gids[n0 : self._n] = table.gids
        self._filled[n0 : self._n] = table.filled
        self._cell_ids[n0 : self._n] = table.cell_ids
        for f, col in self._obs.items():
            col[n0 : self._n] = table.obs[f]

    def _add(self, tokens: np.ndarray, values: np.ndarray | None, ends: np.ndarray) -> None:
        k = len(ends)
        if self._n + k > self._cap:
            raise RuntimeError(f"window overflow: {self._n + k} cells > {self._cap}")
        if self._tok_dtype is None:
            self._tok_dtype = tokens.dtype
        elif tokens.dtype != self._tok_dtype:  # one shard set has one tokenizer; be safe
            raise ValueError(f"token dtype {tokens.dtype} != {self._tok_dtype} within a window")
        m = len(tokens)
        self._tokens = self._room(self._tokens, self._t, m, self._tok_dtype)
        self._tokens[: (self._t + m) * self._tok_dtype.itemsize].view(self._tok_dtype)[
            self._t :] = tokens
        if self._has_values:
            if values is None:
                raise ValueError("a block without values in a window of shards with values")
            if self._val_dtype is None:  # Numba has no float16: widen (exactly) here
                self._val_dtype = np.dtype(np.float32 if values.dtype == np.float16
                                           else values.dtype)
            self._values = self._room(self._values, self._t, m, self._val_dtype)
            self._values[: (self._t + m) * self._val_dtype.itemsize].view(self._val_dtype)[
                self._t :] = values
        self._offsets[self._n + 1 : self._n + k + 1] = ends + self._t
        self._n += k
        self._t += m

    def finish(self, *, copy: bool = False, partial: bool = False) -> CellTable:
        """The window's table (views of the reusable buffers unless ``copy``); ``partial``:
        of the cells added so far, even if fewer than announced."""
        if self._n != self._cap and not partial:
            raise RuntimeError(f"window has {self._n} of {self._cap} cells")
        n = self._n
        dt = self._tok_dtype if self._tok_dtype is not None else np.dtype(np.uint16)
        tokens = self._tokens[: self._t * dt.itemsize].view(dt)
        values = None
        if self._has_values:
            vt = self._val_dtype if self._val_dtype is not None else np.dtype(np.float32)
            values = self._values[: self._t * vt.itemsize].view(vt)
        table = CellTable(tokens, values, self._offsets[: n + 1], self._gids[:n],
                          self._cell_ids[:n], {f: c[:n] for f, c in self._obs.items()},
                          self._filled[:n])
        if copy:
            table = CellTable(table.tokens.copy(), None if values is None else values.copy(),
                              table.offsets.copy(), table.gids.copy(), table.cell_ids.copy(),
                              {f: c.copy() for f, c in table.obs.items()}, table.filled.copy())
        return table
