"""``ShardStream``: scforge shards -> padded, masked training batches, split over ranks/workers.

The stream is a pure function of (manifest, :class:`StreamConfig`, epoch, world layout): see
:mod:`scforge.data.stream.ordering` for the plan. Batching happens inside the dataset, so
DataLoader workers return finished tensors; use ``DataLoader(stream, batch_size=None)`` or,
for exact resume, :class:`~scforge.data.stream.loader.StatefulLoader`.

Consumption is tracked where batches are *delivered* (the main process), never in workers:
workers prefetch ahead and their copies of the dataset die with them. Each batch carries a
:class:`~scforge.data.stream.collate.BatchInfo` (epoch, worker, index, counters) from which the
main process updates ``state_dict()`` and ``metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from scforge.data.shard import ShardFormatError
from scforge.data.stream import ordering as od
from scforge.data.stream.collate import Collator, plan_batches
from scforge.data.stream.config import StreamConfig
from scforge.data.stream.masking import Specials, get_masking
from scforge.data.stream.source import BlockReader, ShardSet
from scforge.data.stream.state import ResumeError, check_state, make_state
from scforge.data.stream.table import CellTable, WindowBuilder
from scforge.data.stream.wire import (
    Arena,
    BatchInfo,
    Ring,
    ShmPool,
    StreamBatch,
    Wire,
    WireGroup,
)

_COUNTERS = ("cells", "batches", "real_tokens", "padded_tokens", "masked_tokens",
             "truncated_cells", "filled_cells", "skipped_shards")


def _world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit arguments, else torch.distributed when initialised, else a single process."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if rank is not None or world_size is not None:
        raise ValueError(f"pass both rank and world_size (got rank={rank}, "
                         f"world_size={world_size}), or neither to read torch.distributed")
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardStream(IterableDataset):
    """Iterable dataset of :class:`StreamBatch` over an scforge shard directory or URL list.

    Three ways to iterate:

    - ``StatefulLoader(stream, num_workers=...)``: worker processes, exact ``state_dict()``
      resume, epochs advance by themselves, metrics of delivered batches. The default.
    - ``for batch in stream``: in this process (one epoch, then the epoch advances); the stream
      tracks its own position and metrics.
    - ``DataLoader(stream, batch_size=None, num_workers=N)``: works (each worker takes its share
      of the epoch), but nothing in this process sees what was consumed: call
      ``set_epoch(e)`` before each epoch; ``state_dict()`` and ``metrics`` stay at zero.

    Args:
        source: shard directory (path, ``file://`` or fsspec URL), ``manifest.json``, or a list
            of shard URLs (local, ``file://``, fsspec, ``pipe:``).
        cfg: loader settings (``StreamConfig()`` defaults when None).
        manifest: manifest location when it is not next to the shards.
        rank: this process's rank; with ``world_size``, overrides torch.distributed.
        world_size: number of ranks.

    Attributes:
        metrics: counters of delivered batches: ``cells``, ``batches``, ``real_tokens``,
            ``padded_tokens``, ``pad_fraction`` (padding share of the delivered tensors),
            ``masked_tokens``, ``truncated_cells``, ``filled_cells`` (stand-ins for unreadable
            cells), ``skipped_shards``.
        skipped_shards: URLs of shards skipped under ``on_error="skip"``.
        verified: sha256 of shards already checked; passed to new workers, so
            ``verify="first"`` hashes each shard once per training process.
    """

    def __init__(self, source: str | Path | Sequence[str | Path], cfg: StreamConfig | None = None,
                 *, manifest: str | Path | None = None, rank: int | None = None,
                 world_size: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else StreamConfig()
        self.cfg.validate()
        self.shards = ShardSet(source, manifest=manifest)
        self.rank, self.world_size = _world(rank, world_size)
        sh = self.shards
        self.rank_cells = od.rank_cells(sh.n_cells, self.world_size, self.cfg.uneven)
        od.rank_span(sh.n_cells, self.rank, self.world_size, self.cfg.uneven)  # validates rank
        self.window = od.window_size(self.cfg.shuffle_buffer, self.cfg.batch_size)
        self.max_len = self.cfg.max_len or sh.max_length
        specials = Specials.from_manifest(sh.specials, sh.vocab_size)
        masking = get_masking(self.cfg.masking.name)(self.cfg.masking, specials,
                                                     has_values=sh.value_dtype is not None)
        self.collator = Collator(max_len=self.max_len, specials=specials,
                                 eos_id=sh.specials.get("<eos>", -1), masking=masking,
                                 seed=self.cfg.seed, keep_eos=self.cfg.keep_eos)
        self._epoch = 0
        self._consumed: list[int] = []
        self._num_workers = 1
        self._pool: ShmPool | None = None
        self.ring: Ring | None = None
        """Shared-memory slots of the trainer's process for worker batches (set by
        StatefulLoader before workers start; None: workers use their own segments)."""
        self.transfer = 1
        """Batches per DataLoader message from a worker (set by StatefulLoader; 1 = plain)."""
        self.metrics: dict[str, float] = {k: 0 for k in _COUNTERS}
        self.metrics["pad_fraction"] = 0.0
        self.skipped_shards: set[str] = set()
        self.verified: set[str] = set()
        """sha256 of shards verified by this stream's readers (travels to new workers)."""

    # ------------------------------------------------------------------ position and state
    @property
    def epoch(self) -> int:
        """The epoch the next delivered batch belongs to."""
        return self._epoch

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank yields per epoch; equal on every rank (computed from the manifest)."""
        return -(-self.rank_cells // self.cfg.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def delivered(self) -> int:
        """Batches of the current epoch delivered so far."""
        return sum(self._consumed)

    def set_epoch(self, epoch: int) -> None:
        """Starts ``epoch`` from its beginning (for plain DataLoader loops; discards a position)."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        self._epoch, self._consumed = int(epoch), []

    def layout(self, num_workers: int | None = None) -> dict[str, Any]:
        """What decides where each cell goes (must match to resume mid-epoch)."""
        c = self.cfg
        workers = self._num_workers if num_workers is None else num_workers
        return {"world_size": self.world_size, "num_workers": workers,
                "batch_size": c.batch_size, "seed": c.seed, "shuffle": c.shuffle,
                "shuffle_buffer": c.shuffle_buffer, "uneven": c.uneven,
                "bucketing": c.bucketing.enabled, "group_batches": c.bucketing.group_batches,
                "fingerprint": self.shards.fingerprint, "n_cells": self.shards.n_cells,
                "transfer": self.transfer if workers > 1 else 1}

    def state_dict(self) -> dict[str, Any]:
        """Resume state of the *delivered* stream (see :mod:`scforge.data.stream.state`)."""
        return make_state(epoch=self._epoch, delivered=self.delivered,
                          consumed=self._consumed if self.delivered else [], rank=self.rank,
                          layout=self.layout())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues exactly where ``state`` was taken (mid-epoch: same layout required).

        Raises:
            ResumeError: a mid-epoch state with a different layout (world size, workers, batch
                size, seed, shuffle settings or shards).
        """
        saved_workers = int(state.get("num_workers", 1))
        epoch, delivered, consumed = check_state(state, self.layout(saved_workers))
        if delivered >= self.batches_per_epoch:
            raise ResumeError(f"state says {delivered} batches delivered of an epoch of "
                              f"{self.batches_per_epoch}; it belongs to other shards or settings")
        self._epoch, self._consumed = epoch, consumed
        if delivered:
            self._num_workers = saved_workers

    def _begin(self, num_workers: int) -> tuple[list[int], int]:
        """Fixes the worker layout of the current epoch; returns per-worker skips and rotation."""
        mid_epoch = self.delivered > 0
        if mid_epoch and len(self._consumed) != num_workers:
            raise ResumeError(f"this epoch was started with {len(self._consumed)} loader workers "
                              f"and {self.delivered} batches are delivered; resume it with "
                              f"num_workers={len(self._consumed)} (or at an epoch boundary)")
        consumed, rotation = od.resume_point(self._groups(num_workers), self.delivered)
        if mid_epoch and consumed != self._consumed:
            raise ResumeError(f"per-worker positions {self._consumed} do not follow the "
                              f"DataLoader's round-robin order (expected {consumed})")
        self._consumed, self._num_workers = consumed, num_workers
        return consumed, rotation

    def _groups(self, num_workers: int) -> list[list[int]]:
        return od.worker_groups(self.rank_cells, self.cfg.batch_size, num_workers, self.window,
                                self.transfer if num_workers > 1 else 1)

    def record(self, info: BatchInfo) -> None:
        """Counts a batch as delivered (called where batches reach the trainer)."""
        if info.epoch != self._epoch or info.index != self._consumed[info.worker]:
            raise RuntimeError(
                f"batch (epoch {info.epoch}, worker {info.worker}, index {info.index}) arrived "
                f"out of order (expected epoch {self._epoch}, index "
                f"{self._consumed[info.worker]}); the DataLoader must keep in_order=True")
        self._consumed[info.worker] += 1
        for k, v in info.stats.items():
            self.metrics[k] = self.metrics.get(k, 0) + v
        self.metrics["batches"] += 1
        self.skipped_shards.update(info.skipped)
        self.verified.update(info.verified)
        self.metrics["skipped_shards"] = len(self.skipped_shards)
        padded = self.metrics["padded_tokens"]
        self.metrics["pad_fraction"] = 1.0 - self.metrics["real_tokens"] / padded if padded else 0.0
        if self.delivered == self.batches_per_epoch:
            self._epoch, self._consumed = self._epoch + 1, []

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[StreamBatch | Wire | WireGroup]:
        info = get_worker_info()
        if info is None:
            yield from self.iter_workers(self._num_workers if self.delivered else 1)
            return
        consumed, rotation = self._begin(info.num_workers)
        worker = (info.id + rotation) % info.num_workers
        groups = self._worker_groups(worker, info.num_workers, skip=consumed[worker],
                                     transfer=self.transfer, shared=True)
        for group in groups:  # become StreamBatch / StreamGroup when unpickled in the main process
            yield group if self.transfer > 1 else group.wires[0]
        # This worker's part of the epoch is done. A persistent worker is only asked for more
        # once the trainer received the whole epoch: it continues with the next one.
        self._epoch, self._consumed = self._epoch + 1, []

    def iter_workers(self, num_workers: int = 1) -> Iterator[StreamBatch]:
        """The rest of the epoch in-process, in the order a DataLoader with ``num_workers``
        workers delivers it (round-robin over transfer groups); records consumption. Used for
        ``num_workers=0``, and lets tests check multi-worker order and resume without processes.
        """
        consumed, rotation = self._begin(num_workers)
        transfer = self.transfer if num_workers > 1 else 1
        gens = {p: self._worker_groups((p + rotation) % num_workers, num_workers,
                                       skip=consumed[(p + rotation) % num_workers],
                                       transfer=transfer, shared=False)
                for p in range(num_workers)}
        while gens:
            for p in list(gens):
                group = next(gens[p], None)
                if group is None:
                    del gens[p]
                    continue
                for wire in group.wires:
                    batch = wire.materialize()
                    self.record(wire.info)
                    yield batch

    def worker_batches(self, worker: int, num_workers: int, *, skip: int = 0
                       ) -> Iterator[StreamBatch]:
        """Batches of logical ``worker`` (of ``num_workers``) this epoch, after the first ``skip``.

        Pure: depends only on the manifest, config, epoch and layout (not on consumption state).
        """
        for group in self._worker_groups(worker, num_workers, skip=skip, transfer=1,
                                         shared=False):
            yield group.wires[0].materialize()

    def _plan(self, worker: int, num_workers: int) -> tuple[od.BlockSequence, tuple[int, int]]:
        sh, c = self.shards, self.cfg
        order = od.shard_order(len(sh.entries), seed=c.seed, epoch=self._epoch, shuffle=c.shuffle)
        seq = od.block_sequence(sh.sizes, order)
        start, _ = od.rank_span(sh.n_cells, self.rank, self.world_size, c.uneven)
        a, b = od.worker_spans(self.rank_cells, c.batch_size, num_workers)[worker]
        return seq, (start + a, start + b)

    def _worker_groups(self, worker: int, num_workers: int, *, skip: int, transfer: int,
                       shared: bool) -> Iterator[WireGroup]:
        """Groups of up to ``transfer`` consecutive batches of one worker (never spanning a
        window), each group's tensors carved from one arena (in shared memory if ``shared``)."""
        c, epoch = self.cfg, self._epoch
        seq, (lo, hi) = self._plan(worker, num_workers)
        reader = BlockReader(self.shards, verify=c.verify, on_error=c.on_error,
                             verified=frozenset(self.verified))
        if shared and self._pool is None:  # kept across epochs: slots stay mapped on both sides
            info = get_worker_info()
            ring = self.ring.part(info.id) if self.ring is not None and info is not None else None
            self._pool = ShmPool(ring=ring)
        pool = self._pool if shared else None
        builder = WindowBuilder()
        index = 0
        try:
            for wi, (a, b) in enumerate(od.window_spans(lo, hi, self.window)):
                n_batches = -(-(b - a) // c.batch_size)
                if index + n_batches <= skip:
                    index += n_batches
                    continue
                table = self._load_window(reader, seq, (a, b), (lo, hi), worker, builder)
                keys = self.collator.keys(table, epoch)
                rng = od.window_rng(c.seed, epoch, self.rank, worker, wi) if c.shuffle else None
                lengths = np.minimum(table.lengths, self.max_len)
                plan = plan_batches(lengths, c.batch_size, rng, bucketing=c.bucketing.enabled,
                                    group_batches=c.bucketing.group_batches)
                summary = self.collator.summary(table, plan).tolist()
                has_values = table.values is not None
                for g0 in range(0, len(plan), transfer):
                    todo = [(index + g0 + j, plan[g0 + j], summary[g0 + j])
                            for j in range(min(transfer, len(plan) - g0))
                            if index + g0 + j >= skip]
                    if not todo:
                        continue
                    nbytes = sum(self.collator.nbytes_of(len(idx), s[0], has_values)
                                 for _, idx, s in todo)
                    arena = pool.arena(nbytes) if pool is not None else Arena.private(nbytes)
                    wires = [self.collator.build(table, idx, epoch, arena,
                                                 BatchInfo(epoch=epoch, rank=self.rank,
                                                           worker=worker, index=k,
                                                           skipped=reader.take_skips(),
                                                           verified=reader.take_verified()),
                                                 keys=keys[idx], summary=tuple(s))
                             for k, idx, s in todo]
                    yield WireGroup(arena.buffer, wires, pooled=arena.pooled, ring=arena.ring)
                index += n_batches
        finally:
            reader.close()

    def _load_window(self, reader: BlockReader, seq: od.BlockSequence, span: tuple[int, int],
                     worker_span: tuple[int, int], worker: int,
                     builder: WindowBuilder | None = None) -> CellTable:
        """Decodes a window; under on_error="skip" unreadable cells get readable stand-ins.

        The table views ``builder``'s buffers (valid until its next window) when one is given.
        """
        builder = builder if builder is not None else WindowBuilder()
        fields = self.shards.obs_fields
        has_values = self.shards.value_dtype is not None
        builder.begin(span[1] - span[0], fields, values=has_values)
        parts: list[tuple[int, int] | int] = []  # cells [first, end) in the builder, or a gap
        done = 0
        for p in od.pieces(seq, *span):
            block = reader.read(p.shard, p.block)
            if block is None:
                parts.append(p.hi - p.lo)
                continue
            gid0 = int(self.shards.gid_base[p.shard]) + p.block * self.shards.block_cells
            # Copied now: the block's buffers are recycled once two more blocks are read.
            builder.add_block(block, p.lo, p.hi, gid0)
            parts.append((done, done + p.hi - p.lo))
            done += p.hi - p.lo
        if done == span[1] - span[0]:
            return builder.finish()
        # Some cells are unreadable: the window again, readable cells standing in for them.
        pool = (builder.finish(copy=True, partial=True) if done
                else self._stand_in(reader, seq, span, worker_span, worker))
        builder.begin(span[1] - span[0], fields, values=has_values)
        k = 0
        for t in parts:
            if isinstance(t, int):
                builder.add_table(pool.take((k + np.arange(t)) % pool.n_cells, filled=True))
                k += t
            else:
                builder.add_table(pool.take(np.arange(*t)))
        return builder.finish()

    def _stand_in(self, reader: BlockReader, seq: od.BlockSequence, span: tuple[int, int],
                  worker_span: tuple[int, int], worker: int) -> CellTable:
        """The first readable block after ``span`` in the worker's span (wrapping around)."""
        lo, hi = worker_span
        for a, b in ((span[1], hi), (lo, span[0])):
            for p in od.pieces(seq, a, b):
                block = reader.read(p.shard, p.block)
                if block is not None:
                    gid0 = int(self.shards.gid_base[p.shard]) + p.block * self.shards.block_cells
                    return CellTable.from_block(block, p.lo, p.hi, gid0, self.shards.obs_fields)
        raise ShardFormatError(
            f"on_error='skip': no readable block left for rank {self.rank} worker {worker} in "
            f"epoch {self._epoch} (skipped: {[self.shards.urls[i] for i in sorted(reader.bad)]}); nothing can stand in "
            "for the unreadable cells, so batch counts could not stay equal across ranks. "
            "Restore the shards or drop them from the manifest")
