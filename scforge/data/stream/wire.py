"""How batches travel from DataLoader workers to the trainer: zero-copy, pooled, grouped.

Measured on the 2-core CPU machine (torch 2.13, forkserver workers): handing one tensor storage
from a worker to the main process costs ~0.4-0.5 ms of main-process CPU whatever its size (a
file-descriptor hand-over per storage), and every first touch of a fresh 4 KiB page costs
~1.3 us (writes in the worker, reads of a fresh mapping in the main process).

So a worker builds the tensors of a group of batches, in the contract's final dtypes (int64
ids/labels, bool masks, float32 values), inside one :class:`Arena` (one storage, one hand-over
per message), taken from a per-worker :class:`ShmPool` of reusable shared-memory slots. The
main process does no conversion and no copy: unpickling wraps the slot as the batches' tensors
(views), and the slot goes back to the worker when the last view dies (:func:`_lease`), so the
pages stay mapped on both sides. Nothing here is a file format: pickling is only the
DataLoader's own worker queue.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from scforge.contracts import Batch

_ALIGN = 64
_TORCH = {"int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
          "float32": torch.float32, "bool": torch.bool}

Layout = list[tuple[str, str, int, tuple[int, int]]]
"""(field, wire dtype, byte offset in the arena, [B, L]) of each tensor of one batch."""


@dataclass
class BatchInfo:
    """Where a batch came from: lets the main process track consumption and metrics.

    Attributes:
        epoch: epoch the batch belongs to.
        rank: rank that produced it.
        worker: logical worker (its index in the rank's worker split).
        index: the batch's index in that worker's stream of the epoch.
        stats: counters of this batch (cells, real/padded tokens, masked, truncated, filled).
        skipped: shards first found unreadable while preparing this batch (on_error="skip").
        verified: sha256 of shards whose checksum was verified while preparing this batch.
    """

    epoch: int
    rank: int
    worker: int
    index: int
    stats: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)


class Arena:
    """A byte buffer that the tensors of a batch (or a group of batches) are carved from.

    Args:
        buffer: uint8 tensor over one storage.
        start: first usable byte (pooled arenas keep a header before it).
        pooled: the buffer is a reusable :class:`ShmPool` slot (released in the main process
            once no tensor views it any more, see :func:`_lease`).
    """

    def __init__(self, buffer: torch.Tensor, *, start: int = 0, pooled: bool = False) -> None:
        self.buffer = buffer
        self.used = start
        self.pooled = pooled
        self._bytes: np.ndarray | None = None

    @classmethod
    def private(cls, nbytes: int) -> Arena:
        """An arena in ordinary memory (in-process batches), recycled once its views die."""
        return cls(torch.from_numpy(RECYCLER.empty((nbytes,), np.uint8)))

    @staticmethod
    def size(shape: tuple[int, int], dtype: str) -> int:
        """Bytes a [B, L] array of ``dtype`` takes in an arena (aligned)."""
        n = shape[0] * shape[1] * np.dtype(dtype).itemsize
        return -(-n // _ALIGN) * _ALIGN

    def take(self, shape: tuple[int, int], dtype: str) -> tuple[np.ndarray, int]:
        """A fresh uninitialised numpy view and its byte offset."""
        off = self.used
        self.used = off + self.size(shape, dtype)
        if self.used > self.buffer.numel():
            raise RuntimeError(f"arena overflow ({self.used} > {self.buffer.numel()} bytes)")
        if self._bytes is None:  # numpy slicing costs ~1 us, torch slice + views + .numpy() ~15
            self._bytes = self.buffer.numpy()
        n = shape[0] * shape[1] * np.dtype(dtype).itemsize
        return self._bytes[off : off + n].view(dtype).reshape(shape), off


class ShmPool:
    """A worker's shared-memory slots, reused once the main process no longer reads a group.

    First writes to fresh shared memory (in the worker) and first reads of a fresh mapping (in
    the main process) fault once per 4 KiB page; reusing slots keeps both mappings warm (torch
    re-sends a known storage without mapping it again while the main process holds it, see
    :func:`_keep_mapped`). A slot's first byte is its busy flag: set here when the slot is
    filled, cleared in the main process when the last tensor viewing the group dies (see
    :func:`_lease`). Slots held longer (the trainer keeps batches, or stopped reading) only cost
    memory: the pool then allocates fresh slots, up to ``max_slots``, and plain shared arenas
    beyond that, so a worker never waits for the trainer.
    """

    def __init__(self, max_slots: int = 16) -> None:
        self.max_slots = max_slots
        self.slots: list[torch.Tensor] = []

    def arena(self, nbytes: int) -> Arena:
        need = nbytes + _ALIGN
        for buf in self.slots:
            flag = buf[:1].numpy()
            if flag[0] == 0 and buf.numel() >= need:
                flag[0] = 1
                return Arena(buf, start=_ALIGN, pooled=True)
        size = 1 << (need - 1).bit_length()  # power-of-two capacity: later groups fit too
        buf = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(size))
        buf[:1].numpy()[0] = 1
        if len(self.slots) < self.max_slots:
            self.slots.append(buf)
        return Arena(buf, start=_ALIGN, pooled=True)


_MAPPED: OrderedDict[int, torch.Tensor] = OrderedDict()
_MAPPED_LOCK = threading.Lock()


def _keep_mapped(buffer: torch.Tensor, limit: int = 64) -> None:
    """Holds a received pool slot, so its next delivery reuses the existing mapping."""
    with _MAPPED_LOCK:
        key = buffer.data_ptr()
        _MAPPED[key] = buffer
        _MAPPED.move_to_end(key)
        while len(_MAPPED) > limit:
            _MAPPED.popitem(last=False)


def forget_mapped() -> None:
    """Drops the held slots (call when the workers that own them are gone)."""
    with _MAPPED_LOCK:
        _MAPPED.clear()


def _view(buffer: torch.Tensor, dtype: str, off: int, shape: tuple[int, int]) -> torch.Tensor:
    n = shape[0] * shape[1] * np.dtype(dtype).itemsize
    return buffer[off : off + n].view(_TORCH[dtype]).view(shape)


class Recycler:
    """Uninitialised arrays whose memory is reused once every view of them is gone.

    Fresh memory costs a page fault per 4 KiB on first touch, ~1.3 us each on this VM: for the
    int64 ids of a 64-cell batch that is more than the conversion itself. The trainer's process
    keeps few batches alive at a time, so recycling their buffers (returned by a finaliser when
    the last tensor/array view dies) avoids nearly all of it. Thread-safe; caches at most
    ``max_cached_bytes`` of idle buffers.
    """

    def __init__(self, max_cached_bytes: int = 256 << 20) -> None:
        self.max_cached_bytes = max_cached_bytes
        self._free: dict[int, list[np.ndarray]] = {}
        self._cached = 0
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        n = int(np.prod(shape)) * dt.itemsize
        size = max(1 << 16, 1 << max(n - 1, 1).bit_length())  # power-of-two size classes
        with self._lock:
            free = self._free.get(size)
            base = free.pop() if free else None
            if base is not None:
                self._cached -= size
        if base is None:
            base = np.empty(size, dtype=np.uint8)
        view = base[:n].view(dt).reshape(shape)
        weakref.finalize(view, self._release, base, size)
        return view

    def _release(self, base: np.ndarray, size: int) -> None:
        with self._lock:
            if self._cached + size <= self.max_cached_bytes:
                self._free.setdefault(size, []).append(base)
                self._cached += size


RECYCLER = Recycler()
"""Recycles the arenas of in-process batches (``num_workers=0``) once their tensors die."""


class StreamBatch(Batch):
    """A :class:`~scforge.contracts.Batch` carrying its :class:`BatchInfo`.

    ``info`` is a plain attribute, not a dataclass field: ``Batch.to()`` returns a plain
    ``Batch`` and ``dataclasses.replace`` a ``StreamBatch`` without it, so nothing downstream
    depends on it.
    """

    info: BatchInfo | None = None

    def pin_memory(self) -> StreamBatch:
        """Pinned copy (DataLoader's ``pin_memory=True`` calls this on custom batch types)."""
        pinned: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            pinned[f.name] = v.pin_memory() if torch.is_tensor(v) else v
        out = StreamBatch(**pinned)
        out.info = self.info
        return out


class StreamGroup:
    """Consecutive batches of one worker, delivered by the DataLoader as one item."""

    def __init__(self, batches: list[StreamBatch]) -> None:
        self.batches = batches

    def pin_memory(self) -> StreamGroup:
        return StreamGroup([b.pin_memory() for b in self.batches])


def materialize(buffer: torch.Tensor, layout: Layout, lengths: list[int],
                obs: dict[str, list[Any]], cell_ids: list[str], info: BatchInfo | None
                ) -> StreamBatch:
    """The contract batch over its arena: every tensor is a view of ``buffer`` (no copy).

    Workers build arrays in the contract's dtypes, so there is nothing to convert (``lengths``,
    the real tokens per row, are not needed here).
    """
    tensors = {name: _view(buffer, dtype, off, shape) for name, dtype, off, shape in layout}
    batch = StreamBatch(**tensors, obs=obs, cell_ids=cell_ids)
    batch.info = info
    return batch


def _lease(buffer: torch.Tensor) -> torch.Tensor:
    """A tensor over a pool slot that hands the slot back once every view of it is gone.

    ``torch.from_numpy`` makes a new storage that keeps the numpy array alive; the array dies
    when the last tensor (or view) of that storage does, and its finaliser then marks the slot
    free for the worker. So batches are zero-copy however long the trainer keeps them, and a
    slot is never overwritten while anything can still read it.
    """
    arr = buffer.numpy()
    lease = torch.from_numpy(arr)
    weakref.finalize(arr, _release, buffer)
    return lease


def _release(buffer: torch.Tensor) -> None:
    _keep_mapped(buffer)
    buffer[:1].numpy()[0] = 0


@dataclass
class Wire:
    """One batch in wire form (its arrays live in ``buffer`` at the offsets of ``layout``)."""

    buffer: torch.Tensor
    layout: Layout
    lengths: list[int]
    obs: dict[str, list[Any]]
    cell_ids: list[str]
    info: BatchInfo
    pooled: bool = False

    def parts(self) -> tuple[Any, ...]:
        return self.layout, self.lengths, self.obs, self.cell_ids, self.info

    def materialize(self) -> StreamBatch:
        return _materialize_one(self.buffer, self.pooled, self.parts())

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Arrives in the main process as the finished StreamBatch.
        return _materialize_one, (self.buffer, self.pooled, self.parts())


def _materialize_one(buffer: torch.Tensor, pooled: bool, part: tuple[Any, ...]) -> StreamBatch:
    return materialize(_lease(buffer) if pooled else buffer, *part)


def _materialize_group(buffer: torch.Tensor, pooled: bool,
                       parts: list[tuple[Any, ...]]) -> StreamGroup:
    base = _lease(buffer) if pooled else buffer
    return StreamGroup([materialize(base, *p) for p in parts])


@dataclass
class WireGroup:
    """Several batches of one worker sharing one arena: one DataLoader message, one storage."""

    buffer: torch.Tensor
    wires: list[Wire]
    pooled: bool = False

    def materialize(self) -> StreamGroup:
        return _materialize_group(self.buffer, self.pooled, [w.parts() for w in self.wires])

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _materialize_group, (self.buffer, self.pooled, [w.parts() for w in self.wires])
