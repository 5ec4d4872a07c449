"""Sample order: a pure function of (shard sizes, seed, epoch, world layout).

Nothing here reads a file or keeps state, so every rank and every DataLoader worker computes the
same plan from the manifest alone, a resumed run recomputes exactly the plan it left, and tests
can check the invariants (every cell once per epoch, equal batches per rank) without any data.

The plan of one epoch, coarse to fine:

1. **Shards** are permuted by a generator seeded with ``(seed, epoch)`` (identity order when not
   shuffling). Shards keep their blocks in file order, so a reader seeks forward through a file.
2. The concatenated **cell sequence** (``N`` cells, block by block) is cut into ``world_size``
   equal contiguous rank spans of ``rank_cells`` cells. Equal spans are what keep DDP/ZeRO ranks in
   lockstep: every rank yields ``ceil(rank_cells / batch_size)`` batches. ``uneven="drop_last"``
   drops the last ``N mod world_size`` cells of the shuffled sequence; ``"pad"`` extends the
   sequence by wrapping around to its start (positions ``>= N`` read cell ``pos mod N``).
3. A rank span is cut at **batch** boundaries into ``num_workers`` contiguous worker spans, so
   only the last worker of a rank can end with a partial batch.
4. A worker span is cut into **shuffle windows** of ``window`` cells (a multiple of the batch
   size). A window is read whole, shuffled with a generator seeded by
   ``(seed, epoch, rank, worker, window index)``, optionally length-bucketed, and split into
   batches. Windows have a known batch count, so resuming skips whole windows unread.
5. Workers ship batches in groups (one shared-memory segment each, :func:`worker_groups`); the
   DataLoader takes groups from its workers round-robin. :func:`delivery_order` reproduces that
   order (including workers running out early) so a position in the delivered stream maps back
   to a position in each worker's stream (:func:`resume_point`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Distinct generator streams per purpose (the last element of the seed sequence).
_SHARD_STREAM = 0x5EED_0001
_WINDOW_STREAM = 0x5EED_0002


@dataclass(frozen=True)
class BlockSequence:
    """The epoch's blocks in read order.

    Attributes:
        shard: int64 [n_blocks]; index of each block's shard (into the manifest entry list).
        block: int64 [n_blocks]; block index inside its shard.
        start: int64 [n_blocks + 1]; position of each block's first cell in the cell sequence.
    """

    shard: np.ndarray
    block: np.ndarray
    start: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.start[-1])


@dataclass(frozen=True)
class Piece:
    """Cells ``[lo, hi)`` of block ``block`` of shard ``shard``: the unit a reader decodes."""

    shard: int
    block: int
    lo: int
    hi: int


def block_sizes(cells: Sequence[int], blocks: Sequence[int], block_cells: int) -> list[np.ndarray]:
    """Cells per block of each shard, from the manifest's ``cells``/``blocks``/``block_cells``.

    Raises:
        ValueError: a shard's block count disagrees with its cell count (a damaged manifest).
    """
    if block_cells < 1:
        raise ValueError(f"block_cells={block_cells} must be >= 1 (check the manifest)")
    out = []
    for i, (n, nb) in enumerate(zip(cells, blocks, strict=True)):
        if n < 1 or nb != -(-n // block_cells):
            raise ValueError(f"manifest shard #{i} has {n} cells in {nb} blocks of <= {block_cells}"
                             " cells; the manifest is damaged: re-shard or restore it")
        sizes = np.full(nb, block_cells, dtype=np.int64)
        sizes[-1] = n - block_cells * (nb - 1)
        out.append(sizes)
    return out


def shard_order(n_shards: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Permutation of shard indices for ``epoch`` (identity when ``shuffle`` is False)."""
    if not shuffle:
        return np.arange(n_shards, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, _SHARD_STREAM])
    return rng.permutation(n_shards).astype(np.int64)


def block_sequence(sizes: Sequence[np.ndarray], order: np.ndarray) -> BlockSequence:
    """Blocks of the shards in ``order``, each shard's blocks in file order."""
    shard = np.concatenate([np.full(len(sizes[s]), s, dtype=np.int64) for s in order])
    block = np.concatenate([np.arange(len(sizes[s]), dtype=np.int64) for s in order])
    start = np.zeros(len(shard) + 1, dtype=np.int64)
    np.cumsum(np.concatenate([sizes[s] for s in order]), out=start[1:])
    return BlockSequence(shard, block, start)


def rank_cells(n_cells: int, world_size: int, uneven: str) -> int:
    """Cells each rank reads per epoch (equal on every rank)."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    if uneven == "drop_last":
        per = n_cells // world_size
    elif uneven == "pad":
        per = -(-n_cells // world_size)
    else:
        raise ValueError(f"uneven={uneven!r}; choose 'pad' or 'drop_last'")
    if per < 1:
        raise ValueError(f"{n_cells} cells cannot be split over {world_size} ranks with "
                         f"uneven={uneven!r}; use uneven=pad or fewer ranks")
    return per


def rank_span(n_cells: int, rank: int, world_size: int, uneven: str) -> tuple[int, int]:
    """Positions ``[start, stop)`` of ``rank`` in the (wrapped) cell sequence."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside [0, world_size={world_size})")
    per = rank_cells(n_cells, world_size, uneven)
    return rank * per, (rank + 1) * per


def batches_per_rank(n_cells: int, world_size: int, batch_size: int, uneven: str) -> int:
    """Batches every rank yields per epoch, from the manifest alone (the DDP lockstep count)."""
    return -(-rank_cells(n_cells, world_size, uneven) // batch_size)


def worker_spans(n: int, batch_size: int, num_workers: int) -> list[tuple[int, int]]:
    """Cuts ``n`` cells (a rank span) at batch boundaries into ``num_workers`` relative spans."""
    if num_workers < 1:
        raise ValueError(f"num_workers={num_workers} must be >= 1")
    nb = -(-n // batch_size)
    out = []
    for w in range(num_workers):
        b0, b1 = w * nb // num_workers, (w + 1) * nb // num_workers
        out.append((min(b0 * batch_size, n), min(b1 * batch_size, n)))
    return out


def worker_batch_counts(n: int, batch_size: int, num_workers: int) -> list[int]:
    """Batches each worker of a rank yields per epoch."""
    return [-(-(b - a) // batch_size) for a, b in worker_spans(n, batch_size, num_workers)]


def window_size(shuffle_buffer: int, batch_size: int) -> int:
    """Shuffle window in cells: ``shuffle_buffer`` rounded up to whole batches."""
    return max(1, -(-shuffle_buffer // batch_size)) * batch_size


def window_spans(start: int, stop: int, window: int) -> list[tuple[int, int]]:
    """Consecutive windows of ``window`` cells covering ``[start, stop)`` (the last may be short)."""
    return [(a, min(a + window, stop)) for a in range(start, stop, window)]


def window_rng(seed: int, epoch: int, rank: int, worker: int, window: int) -> np.random.Generator:
    """The generator that shuffles one window (and orders its batches)."""
    return np.random.default_rng([seed, epoch, rank, worker, window, _WINDOW_STREAM])


def pieces(seq: BlockSequence, start: int, stop: int) -> list[Piece]:
    """Block pieces holding positions ``[start, stop)``; positions ``>= N`` wrap to ``pos mod N``."""
    n = seq.n_cells
    out: list[Piece] = []
    pos = start
    while pos < stop:
        base = pos - pos % n
        p, q = pos - base, min(stop, base + n) - base
        i = int(np.searchsorted(seq.start, p, side="right")) - 1
        while p < q:
            b0, b1 = int(seq.start[i]), int(seq.start[i + 1])
            hi = min(q, b1)
            out.append(Piece(int(seq.shard[i]), int(seq.block[i]), p - b0, hi - b0))
            p = hi
            i += 1
        pos = base + q
    return out


def worker_groups(n: int, batch_size: int, num_workers: int, window: int,
                  transfer: int = 1) -> list[list[int]]:
    """Sizes of the transfer groups each worker sends, in order.

    A worker ships its batches in groups of up to ``transfer`` batches (one shared-memory
    segment per group: DataLoader's per-message cost is far above the cost of a batch). Groups
    never span a shuffle window, so the last group of a window may be shorter.
    """
    if transfer < 1:
        raise ValueError(f"transfer={transfer} must be >= 1")
    out = []
    for a, b in worker_spans(n, batch_size, num_workers):
        sizes: list[int] = []
        for wa, wb in window_spans(a, b, window):
            nb = -(-(wb - wa) // batch_size)
            sizes += [transfer] * (nb // transfer) + ([nb % transfer] if nb % transfer else [])
        out.append(sizes)
    return out


def delivery_order(groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Worker id of each delivered batch when a DataLoader polls workers round-robin.

    PyTorch's DataLoader (``in_order=True``) takes one item from workers 0, 1, ..., W-1 in turn
    and, once a worker is exhausted, keeps cycling over the others. Here an item is a group of
    batches (``groups[w]`` lists worker ``w``'s group sizes), delivered back to back.
    """
    order: list[int] = []
    for r in range(max((len(g) for g in groups), default=0)):
        for w, g in enumerate(groups):
            if r < len(g):
                order += [w] * g[r]
    return np.asarray(order, dtype=np.int64)


def resume_point(groups: Sequence[Sequence[int]], delivered: int) -> tuple[list[int], int]:
    """Per-worker batches consumed after ``delivered`` batches, and the worker that comes next.

    A resumed DataLoader whose physical worker ``p`` serves logical worker
    ``(p + rotation) % W`` continues the unbroken order exactly: the next worker first sends the
    rest of its interrupted group, then the others follow in the same cyclic order, and
    exhausted workers drop out of the cycle in both runs alike (see :func:`delivery_order`).
    """
    order = delivery_order(groups)
    if not 0 <= delivered <= len(order):
        raise ValueError(f"{delivered} batches delivered, but an epoch has {len(order)}")
    consumed = np.bincount(order[:delivered], minlength=len(groups)).tolist()
    rotation = int(order[delivered]) if delivered < len(order) else 0
    return consumed, rotation
