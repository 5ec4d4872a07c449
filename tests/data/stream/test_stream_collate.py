"""Length bucketing: batches of similar length, padding reported on the stream."""

from __future__ import annotations

import numpy as np
from _stream_util import cfg

from scforge.data.stream import ShardStream, plan_batches


def test_plan_batches_covers_every_cell_and_sorts_groups():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 2000, size=1000)
    for bucketing, group in ((False, 0), (True, 0), (True, 4)):
        batches = plan_batches(lengths, 64, np.random.default_rng(1), bucketing=bucketing,
                               group_batches=group)
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(1000))
        assert [len(b) for b in batches[:-1]] == [64] * 15 and len(batches[-1]) == 40
    whole = plan_batches(lengths, 64, np.random.default_rng(1), bucketing=True)
    spread = [int(np.ptp(lengths[b])) for b in whole]
    assert max(spread[:-1]) < 300  # neighbours in length share a batch
    assert plan_batches(lengths, 64, None, bucketing=False)[0].tolist() == list(range(64))


def test_bucketing_cuts_padding_on_real_pbmc_cells(pbmc_shards, capsys):
    fractions = {}
    for name, bucketing in (("off", {"enabled": False}), ("on", {"enabled": True}),
                            ("hf50", {"enabled": True, "group_batches": 50})):
        stream = ShardStream(pbmc_shards, cfg(batch_size=64, max_len=2048, shuffle_buffer=8192,
                                              masking={"name": "none"}, bucketing=bucketing))
        n = sum(b.size for b in stream)
        assert n == 10668
        fractions[name] = stream.metrics["pad_fraction"]
    with capsys.disabled():
        print(f"\npbmc pad fraction (batch 64, max_len 2048): {fractions}")
    assert fractions["on"] < 0.25 * fractions["off"]
    assert fractions["hf50"] < 0.5 * fractions["off"]
