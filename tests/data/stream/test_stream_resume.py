"""A resumed stream equals the unbroken one (torchtitan's dataset-checkpointing pattern)."""

from __future__ import annotations

import itertools
import json

import pytest
from _stream_util import assert_same, cfg

from scforge.data.stream import ResumeError, ShardStream, StatefulLoader


def _consume(stream: ShardStream, n: int, workers: int) -> list:
    """The next ``n`` delivered batches, across epoch boundaries."""
    out: list = []
    while len(out) < n:
        out += list(itertools.islice(stream.iter_workers(workers), n - len(out)))
    return out


def _stream(shards, transfer: int = 2, **kw) -> ShardStream:
    s = ShardStream(shards, cfg(), **kw)
    s.transfer = transfer
    return s


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_resume_equals_unbroken_in_process(cb_shards, workers):
    """Cut points inside a window, at a window edge, in the last batch, and in epoch 2."""
    per_epoch = len(_stream(cb_shards))
    want = _consume(_stream(cb_shards), per_epoch + 10, workers)
    for cut in (1, 4, 5, per_epoch - 1, per_epoch, per_epoch + 3):
        first = _stream(cb_shards)
        head = _consume(first, cut, workers)
        state = json.loads(json.dumps(first.state_dict()))  # a plain JSON-able dict
        resumed = _stream(cb_shards)
        resumed.load_state_dict(state)
        assert_same(head + _consume(resumed, len(want) - cut, workers), want)


def test_resume_two_ranks(cb_shards):
    for rank in (0, 1):
        def make(rank: int = rank) -> ShardStream:
            return ShardStream(cb_shards, cfg(), rank=rank, world_size=2)

        want = list(make())
        for cut in (3, 11):
            first = make()
            head = _consume(first, cut, 1)
            resumed = make()
            # any rank's state resumes any rank: the position is the same in lockstep
            other = ShardStream(cb_shards, cfg(), rank=1 - rank, world_size=2)
            _consume(other, cut, 1)
            resumed.load_state_dict(other.state_dict())
            assert resumed.state_dict()["delivered"] == first.state_dict()["delivered"]
            assert_same(head + list(resumed), want)


def test_stateful_loader_resume_with_real_workers(cb_shards):
    """Break out mid-epoch with prefetching workers, resume in a new loader: nothing lost."""
    sim = ShardStream(cb_shards, cfg())
    sim.transfer = 2
    want = list(sim.iter_workers(2))
    stream = ShardStream(cb_shards, cfg())
    loader = StatefulLoader(stream, num_workers=2, transfer_batches=2, prefetch_factor=2)
    head = []
    for batch in loader:
        head.append(batch)
        if len(head) == 7:  # odd: mid-group, and the other worker has prefetched ahead
            break
    state = loader.state_dict()
    assert state["delivered"] == 7 and state["num_workers"] == 2
    stream2 = ShardStream(cb_shards, cfg())
    loader2 = StatefulLoader(stream2, num_workers=2, transfer_batches=2, prefetch_factor=2)
    loader2.load_state_dict(state)
    assert_same(head + list(loader2), want)
    assert stream2.epoch == 1


def test_mid_epoch_layout_change_is_refused(cb_shards):
    first = ShardStream(cb_shards, cfg(), rank=0, world_size=2)
    _consume(first, 3, 2)
    state = first.state_dict()
    with pytest.raises(ResumeError, match="world_size: saved 2, now 1"):
        ShardStream(cb_shards, cfg()).load_state_dict(state)
    with pytest.raises(ResumeError, match="batch_size"):
        ShardStream(cb_shards, cfg(batch_size=16), rank=0, world_size=2).load_state_dict(state)
    same = ShardStream(cb_shards, cfg(), rank=0, world_size=2)
    same.load_state_dict(state)
    with pytest.raises(ResumeError, match="num_workers=2"):
        next(same.iter_workers(3))


def test_epoch_boundary_allows_a_new_layout(cb_shards):
    first = ShardStream(cb_shards, cfg(), rank=1, world_size=2)
    list(first)
    state = first.state_dict()
    assert state["epoch"] == 1 and state["delivered"] == 0
    single = ShardStream(cb_shards, cfg(batch_size=16))
    single.load_state_dict(state)
    assert single.epoch == 1
    fresh = ShardStream(cb_shards, cfg(batch_size=16))
    fresh.set_epoch(1)
    assert_same(list(single), list(fresh))


def test_damaged_or_foreign_state_is_refused(cb_shards):
    stream = ShardStream(cb_shards, cfg())
    with pytest.raises(ResumeError, match="not a loader state"):
        stream.load_state_dict({"epoch": 0})
    state = stream.state_dict()
    state["consumed"], state["delivered"] = [5], 4
    with pytest.raises(ResumeError, match="damaged"):
        stream.load_state_dict(state)
