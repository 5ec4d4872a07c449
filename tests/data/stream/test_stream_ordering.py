"""Ordering invariants of the pure plan functions (no data needed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scforge.data.stream import ordering as od

SIZES = od.block_sizes([300, 300, 300, 300, 208], [5, 5, 5, 5, 4], 64)


def _cells(seq: od.BlockSequence, pieces: list[od.Piece]) -> list[tuple[int, int, int]]:
    """(shard, block, cell) of every cell the pieces cover."""
    return [(p.shard, p.block, c) for p in pieces for c in range(p.lo, p.hi)]


def test_block_sizes_follow_manifest_and_reject_damage():
    assert [int(s.sum()) for s in SIZES] == [300, 300, 300, 300, 208]
    assert SIZES[4].tolist() == [64, 64, 64, 16]
    with pytest.raises(ValueError, match="damaged"):
        od.block_sizes([300], [4], 64)


def test_shard_order_is_seeded_and_changes_with_epoch_and_seed():
    a = od.shard_order(50, seed=1, epoch=0, shuffle=True)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, od.shard_order(50, seed=1, epoch=0, shuffle=True))
    assert not np.array_equal(a, od.shard_order(50, seed=1, epoch=1, shuffle=True))
    assert not np.array_equal(a, od.shard_order(50, seed=2, epoch=0, shuffle=True))
    assert od.shard_order(5, seed=1, epoch=3, shuffle=False).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("world", [1, 2, 3, 7])
@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("uneven", ["pad", "drop_last"])
def test_every_cell_once_across_ranks_workers_windows(world, workers, uneven):
    seq = od.block_sequence(SIZES, od.shard_order(5, seed=3, epoch=1, shuffle=True))
    n, batch, window = seq.n_cells, 32, 96
    per = od.rank_cells(n, world, uneven)
    seen = []
    for rank in range(world):
        start, stop = od.rank_span(n, rank, world, uneven)
        spans = od.worker_spans(per, batch, workers)
        assert spans[0][0] == 0 and spans[-1][1] == per
        for a, b in spans:
            for wa, wb in od.window_spans(start + a, start + b, window):
                seen += _cells(seq, od.pieces(seq, wa, wb))
    unique = set(seen)
    if uneven == "drop_last":
        assert len(seen) == len(unique) == n - n % world
    else:
        assert len(unique) == n
        assert len(seen) == per * world and len(seen) - n < world


def test_batches_per_rank_is_equal_and_matches_worker_counts():
    n = 1408
    for world, workers, bs in itertools.product([1, 2, 3, 8], [1, 2, 4], [1, 7, 64]):
        per = od.rank_cells(n, world, "pad")
        total = od.batches_per_rank(n, world, bs, "pad")
        assert sum(od.worker_batch_counts(per, bs, workers)) == total
        groups = od.worker_groups(per, bs, workers, window=od.window_size(200, bs), transfer=3)
        assert sum(map(sum, groups)) == total


def test_rank_cells_rejects_impossible_split():
    with pytest.raises(ValueError, match="cannot be split"):
        od.rank_cells(3, 4, "drop_last")
    assert od.rank_cells(3, 4, "pad") == 1


def _dataloader_order(groups: list[list[int]]) -> list[int]:
    """Round-robin with exhaustion, as torch's DataLoader(in_order=True) polls workers."""
    queues = [list(g) for g in groups]
    active, out = list(range(len(groups))), []
    while active:
        for w in list(active):
            if not queues[w]:
                active.remove(w)
                continue
            out += [w] * queues[w].pop(0)
    return out


def test_delivery_order_and_rotated_resume_match_round_robin():
    groups = od.worker_groups(1000, 16, 3, window=64, transfer=3)
    order = od.delivery_order(groups)
    assert order.tolist() == _dataloader_order(groups)
    for k in range(len(order) + 1):
        consumed, rot = od.resume_point(groups, k)
        assert consumed == np.bincount(order[:k], minlength=3).tolist()
        # Resumed: physical worker p serves logical (p + rot) % W, each starting after its
        # consumed batches; the interrupted group is finished first.
        rest = []
        for p in range(3):
            w = (p + rot) % 3
            sizes, left = [], consumed[w]
            for g in groups[w]:
                take = min(g, max(0, g - left))
                left = max(0, left - g)
                if take:
                    sizes.append(take)
            rest.append(sizes)
        resumed = [(p + rot) % 3 for p in _dataloader_order(rest)]
        assert resumed == order[k:].tolist()
