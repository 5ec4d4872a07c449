"""How batches travel from DataLoader workers to the trainer: zero-copy, pooled, grouped.

Measured on the 2-core CPU machine (torch 2.13, forkserver workers): handing one tensor storage
from a worker to the main process costs ~0.4-0.5 ms of main-process CPU whatever its size (a
file-descriptor hand-over per storage), and every first touch of a fresh 4 KiB page costs
~1.3 us (writes in the worker, reads of a fresh mapping in the main process).

So a worker builds the tensors of a group of batches, in the contract's final dtypes (int32
ids/labels, bool masks, float32 values), inside one :class:`Arena` (one storage, one hand-over
per message), taken from a per-worker :class:`ShmPool` of reusable shared-memory slots. The
slots come first from the trainer's :class:`Ring` (created by
:class:`~scforge.data.stream.loader.StatefulLoader` and handed to each worker once, when it
starts), so a message names its slot and carries no file descriptor at all; only when the
trainer holds every ring slot does a worker fall back to segments of its own. The main process
does no conversion and no copy: unpickling wraps the slot as the batches' tensors (views), and
the slot goes back to the worker when the last view dies (:func:`_lease`), so the pages stay
mapped on both sides. Nothing here is a file format: pickling is only the DataLoader's own
worker queue.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
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

    def __init__(self, buffer: torch.Tensor, *, start: int = 0, pooled: bool = False,
                 ring: tuple[str, int] | None = None) -> None:
        self.buffer = buffer
        self.used = start
        self.pooled = pooled
        self.ring = ring
        """(ring key, slot) when the buffer is a slot of the trainer's :class:`Ring`."""
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

    def __init__(self, max_slots: int = 16, ring: RingPart | None = None) -> None:
        self.max_slots = max_slots
        self.slots: list[torch.Tensor] = []
        self.ring = ring

    def arena(self, nbytes: int) -> Arena:
        need = nbytes + _ALIGN
        if self.ring is not None:
            for i, buf in zip(self.ring.ids, self.ring.slots, strict=True):
                flag = buf[:1].numpy()
                if flag[0] == 0 and buf.numel() >= need:
                    flag[0] = 1
                    return Arena(buf, start=_ALIGN, pooled=True, ring=(self.ring.key, i))
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


_RINGS: dict[str, list[torch.Tensor]] = {}
"""Rings created in this (the trainer's) process, by key: a batch in a ring slot arrives as
(key, slot) and is looked up here, so no file descriptor travels with it."""


@dataclass
class RingPart:
    """One worker's slots of a :class:`Ring` (``ids``: their indices in the ring)."""

    key: str
    ids: list[int]
    slots: list[torch.Tensor]


class Ring:
    """Shared-memory slots created by the trainer's process before its workers start.

    Workers receive the slots once, when they start (as part of the dataset), and then send a
    filled slot as its (ring key, index): handing a worker-made segment over costs a socket
    round trip with authentication and a file-descriptor transfer on both sides (~0.5 ms of
    CPU each) per message, a ring slot nothing. Each worker owns ``per_worker`` slots; the
    busy flag protocol is :class:`ShmPool`'s (the worker sets it, the trainer's process clears
    it when the last tensor viewing the slot dies). When all its slots are held, a worker falls
    back to its own pool, so it never waits for the trainer.

    Pages are only allocated when first written (tmpfs), so worst-case slot sizes cost address
    space, not memory.
    """

    def __init__(self, num_workers: int, per_worker: int, slot_bytes: int) -> None:
        self.key = f"{os.getpid()}-{next(_RING_IDS)}"
        self.per_worker = per_worker
        size = -(-(slot_bytes + _ALIGN) // 4096) * 4096
        self.slots = []
        for _ in range(num_workers * per_worker):
            buf = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(size))
            buf[:1].numpy()[0] = 0
            self.slots.append(buf)
        _RINGS[self.key] = self.slots

    def part(self, worker: int) -> RingPart:
        """The slots of physical worker ``worker``."""
        ids = list(range(worker * self.per_worker, (worker + 1) * self.per_worker))
        return RingPart(self.key, ids, [self.slots[i] for i in ids])

    def close(self) -> None:
        """Forgets the ring here (slots still viewed by batches live on until those die)."""
        _RINGS.pop(self.key, None)


_RING_IDS = itertools.count()


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
    int32 ids of a 64-cell batch that is more than the conversion itself. The trainer's process
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


def _lease(buffer: torch.Tensor, *, keep: bool = True) -> torch.Tensor:
    """A tensor over a pool slot that hands the slot back once every view of it is gone.

    ``torch.from_numpy`` makes a new storage that keeps the numpy array alive; the array dies
    when the last tensor (or view) of that storage does, and its finaliser then marks the slot
    free for the worker. So batches are zero-copy however long the trainer keeps them, and a
    slot is never overwritten while anything can still read it.
    """
    arr = buffer.numpy()
    lease = torch.from_numpy(arr)
    weakref.finalize(arr, _release, buffer, keep)
    return lease


def _release(buffer: torch.Tensor, keep: bool = True) -> None:
    if keep:  # a worker's segment: hold it so its next delivery reuses this mapping
        _keep_mapped(buffer)
    buffer[:1].numpy()[0] = 0


def _ring_slot(ring: tuple[str, int]) -> torch.Tensor:
    slots = _RINGS.get(ring[0])
    if slots is None:
        raise RuntimeError(f"a batch in slot {ring[1]} of ring {ring[0]!r}, which this process "
                           "did not create or already closed (a worker outlived its loader?)")
    return _lease(slots[ring[1]], keep=False)


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
    ring: tuple[str, int] | None = None

    def parts(self) -> tuple[Any, ...]:
        return self.layout, self.lengths, self.obs, self.cell_ids, self.info

    def materialize(self) -> StreamBatch:
        return _materialize_one(self.buffer, self.pooled, self.parts())

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Arrives in the main process as the finished StreamBatch.
        if self.ring is not None:
            return _materialize_ring, (self.ring, [self.parts()], False)
        return _materialize_one, (self.buffer, self.pooled, self.parts())


def _materialize_one(buffer: torch.Tensor, pooled: bool, part: tuple[Any, ...]) -> StreamBatch:
    return materialize(_lease(buffer) if pooled else buffer, *part)


def _materialize_group(buffer: torch.Tensor, pooled: bool,
                       parts: list[tuple[Any, ...]]) -> StreamGroup:
    base = _lease(buffer) if pooled else buffer
    return StreamGroup([materialize(base, *p) for p in parts])


def _materialize_ring(ring: tuple[str, int], parts: list[tuple[Any, ...]], group: bool
                      ) -> StreamBatch | StreamGroup:
    base = _ring_slot(ring)
    batches = [materialize(base, *p) for p in parts]
    return StreamGroup(batches) if group else batches[0]


@dataclass
class WireGroup:
    """Several batches of one worker sharing one arena: one DataLoader message, one storage."""

    buffer: torch.Tensor
    wires: list[Wire]
    pooled: bool = False
    ring: tuple[str, int] | None = None

    def materialize(self) -> StreamGroup:
        return _materialize_group(self.buffer, self.pooled, [w.parts() for w in self.wires])

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.ring is not None:
            return _materialize_ring, (self.ring, [w.parts() for w in self.wires], True)
        return _materialize_group, (self.buffer, self.pooled, [w.parts() for w in self.wires])
