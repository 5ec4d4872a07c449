"""Real worker processes: pinned memory on CPU, dead and stuck workers never hang the trainer."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings

import pytest
from _stream_util import assert_same, cfg

from scforge.data.stream import ShardStream, StatefulLoader


def _loader(shards, **kw) -> StatefulLoader:
    # Small batches, one per message: many messages, so a worker is mid-epoch when hit.
    return StatefulLoader(ShardStream(shards, cfg(batch_size=8)), num_workers=2,
                          prefetch_factor=2, transfer_batches=1, **kw)


def test_pin_memory_on_cpu_delivers_the_same_batches(cb_shards):
    plain = list(_loader(cb_shards))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "no accelerator is found" (pinning is a no-op)
        pinned = list(_loader(cb_shards, pin_memory=True))
    assert_same(pinned, plain)


@pytest.mark.parametrize("how", ["killed", "stuck"])
def test_dead_or_stuck_worker_raises_instead_of_hanging(cb_shards, how):
    loader = _loader(cb_shards, timeout=3 if how == "stuck" else 600)
    it = iter(loader)
    next(it)
    pids = loader.worker_pids
    assert len(pids) == 2
    t0 = time.monotonic()
    os.kill(pids[0], signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    try:
        match = "exited unexpectedly" if how == "killed" else "timed out"
        with pytest.raises(RuntimeError, match=match):
            for _ in it:
                pass
    finally:
        for pid in pids:  # never leave a stopped process behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # Liveness, not speed: torch alone would wait for `timeout` (600 s) or forever.
    assert time.monotonic() - t0 < 60
    assert loader.worker_pids == []


def test_trainer_time_between_batches_does_not_count_as_a_timeout(cb_shards):
    next(iter(_loader(cb_shards)))  # start the forkserver: its start-up is not the point here
    loader = StatefulLoader(ShardStream(cb_shards, cfg()), num_workers=2, timeout=2)
    n = 0
    for _ in loader:
        n += 1
        if n <= 2:
            time.sleep(3)  # a slow training step (longer than the timeout)
    assert n == len(loader)


def test_workers_persist_across_full_epochs_and_restart_after_a_break(cb_shards):
    """Reused workers continue with the next epoch exactly as fresh ones would."""
    sim = ShardStream(cb_shards, cfg(batch_size=8))
    sim.transfer = 1
    want = [list(sim.iter_workers(2)) for _ in range(3)]
    loader = _loader(cb_shards)
    pids = []
    got = []
    for _ in range(2):
        epoch = []
        for batch in loader:
            epoch.append(batch)
            pids.append(tuple(loader.worker_pids))
        got.append(epoch)
    assert len(set(pids)) == 1 and len(pids[0]) == 2  # the same two processes both epochs
    assert_same(got[0], want[0])
    assert_same(got[1], want[1])
    head = []
    for batch in loader:  # epoch 2: stop early, then continue: fresh workers, nothing lost
        head.append(batch)
        if len(head) == 3:
            break
    assert loader.worker_pids == []
    rest = list(loader)
    assert not set(loader.worker_pids) & set(pids[0])
    assert_same(head + rest, want[2])
    loader.close()
    assert loader.worker_pids == []


def test_ring_slots_are_never_reused_while_the_trainer_holds_a_batch(cb_shards):
    """Batches kept for two epochs (far more than the ring holds) stay intact."""
    import scforge.data.stream.wire as wire

    sim = ShardStream(cb_shards, cfg(batch_size=8))
    sim.transfer = 2
    want = list(sim.iter_workers(2)) + list(sim.iter_workers(2))
    loader = StatefulLoader(ShardStream(cb_shards, cfg(batch_size=8)), num_workers=2,
                            prefetch_factor=2, transfer_batches=2)
    kept = list(loader)
    ring = loader._ring
    assert ring is not None and ring.key in wire._RINGS
    kept += list(loader)
    assert_same(kept, want)  # compared after both epochs: an overwritten slot would show
    loader.close()
    assert ring.key not in wire._RINGS
