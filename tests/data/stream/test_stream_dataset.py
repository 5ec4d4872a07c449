"""ShardStream: every cell once per epoch over ranks x workers, equal batch counts, batch contents."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from _stream_util import all_cell_ids, assert_same, cell_ids, cfg

from scforge.contracts import Batch
from scforge.data.shard import load_manifest, read_shards
from scforge.data.stream import ShardStream, StatefulLoader, StreamConfig


@pytest.mark.parametrize("uneven", ["pad", "drop_last"])
def test_every_cell_once_over_two_ranks_and_two_workers(cb_shards, uneven):
    everyone = all_cell_ids(cb_shards)
    assert len(set(everyone)) == len(everyone) == 1408
    seen, counts = [], []
    for rank in (0, 1):
        stream = ShardStream(cb_shards, cfg(uneven=uneven), rank=rank, world_size=2)
        for worker in (0, 1):
            batches = list(stream.worker_batches(worker, 2))
            counts.append(len(batches))
            seen += cell_ids(batches)
        assert counts[-2] + counts[-1] == len(stream)
    assert counts[:2] == counts[2:]  # both ranks: same batches per worker and in total
    if uneven == "drop_last":
        assert len(seen) == len(set(seen)) == 1408  # 1408 is even: nothing dropped
    else:
        assert Counter(seen) == Counter(everyone)


def test_uneven_tail_pads_or_drops(cb_shards):
    # 1408 cells over 3 ranks: pad repeats 2 cells, drop_last drops 1.
    for uneven, total, distinct in (("pad", 1410, 1408), ("drop_last", 1407, 1407)):
        seen, lens = [], set()
        for rank in range(3):
            stream = ShardStream(cb_shards, cfg(uneven=uneven), rank=rank, world_size=3)
            batches = list(stream)
            lens.add(len(batches))
            seen += cell_ids(batches)
        assert len(lens) == 1, "every rank must yield the same number of batches"
        assert len(seen) == total and len(set(seen)) == distinct


def test_same_seed_same_order_other_epoch_or_seed_differs(cb_shards):
    def order(seed: int, epoch: int) -> list[str]:
        stream = ShardStream(cb_shards, cfg(seed=seed))
        stream.set_epoch(epoch)
        return cell_ids(list(stream))

    a = order(0, 0)
    assert a == order(0, 0)
    assert sorted(a) == sorted(order(0, 1)) and a != order(0, 1)
    assert a != order(1, 0)
    plain = ShardStream(cb_shards, cfg(shuffle=False, bucketing={"enabled": False}))
    assert cell_ids(list(plain)) == all_cell_ids(cb_shards)


def test_epochs_advance_after_a_full_pass(cb_shards):
    stream = ShardStream(cb_shards, cfg())
    first = cell_ids(list(stream))
    assert stream.epoch == 1 and stream.delivered == 0
    second = cell_ids(list(stream))
    assert stream.epoch == 2 and first != second


def test_batch_contents_match_the_shards(cb_shards):
    cells = {c["cell_id"]: c for c in read_shards(cb_shards)}
    man = load_manifest(cb_shards)
    eos = man["tokenizer"]["eos_id"]
    stream = ShardStream(cb_shards, cfg(max_len=300, masking={"name": "none"}))
    batches = list(stream)
    for b in batches:
        assert isinstance(b, Batch)
        assert b.input_ids.dtype == torch.int32 and b.attention_mask.dtype == torch.bool
        assert b.labels is None and b.values is None and b.value_mask is None
        assert b.input_ids.shape == b.attention_mask.shape and b.input_ids.shape[1] <= 300
        assert set(b.obs) == {"cell_type", "batch"} and len(b.obs["cell_type"]) == b.size
        for row, cid in enumerate(b.cell_ids):
            tok = cells[cid]["input_ids"].astype(np.int32)
            n = int(b.attention_mask[row].sum())
            assert n == min(len(tok), 300)
            want = tok[:n].copy()
            if len(tok) > 300:  # truncated: keeps <eos> as its last token
                want[-1] = eos
            assert torch.equal(b.input_ids[row, :n], torch.from_numpy(want))
            assert (b.input_ids[row, n:] == 0).all()  # <pad>
            assert b.obs["cell_type"][row] == cells[cid]["cell_type"]
    assert stream.metrics["cells"] == 1408 and stream.metrics["batches"] == len(batches)
    assert stream.metrics["truncated_cells"] > 0


def test_keep_eos_false_keeps_plain_prefix(cb_shards):
    cells = {c["cell_id"]: c for c in read_shards(cb_shards)}
    stream = ShardStream(cb_shards, cfg(max_len=50, keep_eos=False, masking={"name": "none"}))
    b = next(iter(stream))
    for row, cid in enumerate(b.cell_ids):
        want = torch.from_numpy(cells[cid]["input_ids"][:50].astype(np.int32))
        assert torch.equal(b.input_ids[row, :50], want)


@pytest.mark.parametrize("fixture", ["cb_binned", "cb_continuous"])
def test_values_pass_through_as_float(request, fixture):
    shards = request.getfixturevalue(fixture)
    cells = {c["cell_id"]: c for c in read_shards(shards)}
    stream = ShardStream(shards, cfg(max_len=128, masking={"name": "none"}))
    b = next(iter(stream))
    assert b.values is not None and b.values.dtype == torch.float32
    for row, cid in enumerate(b.cell_ids):
        n = int(b.attention_mask[row].sum())
        vals = cells[cid]["values"].astype(np.float32)
        # first n-1 positions as stored; the last is the cell's own last (<eos>) value
        assert np.array_equal(b.values[row, : n - 1].numpy(), vals[: n - 1])
        assert b.values[row, n - 1].item() == vals[-1 if len(vals) > n else n - 1]
        assert (b.values[row, n:] == 0).all()


def test_dataloader_workers_deliver_what_the_in_process_simulation_does(cb_shards):
    """Real DataLoader, 2 forkserver workers, groups of 3 batches in pooled shared memory."""
    sim = ShardStream(cb_shards, cfg())
    sim.transfer = 3
    expected = list(sim.iter_workers(2))
    stream = ShardStream(cb_shards, cfg())
    loader = StatefulLoader(stream, num_workers=2, transfer_batches=3, prefetch_factor=2)
    got = list(loader)
    assert_same(got, expected)
    assert stream.epoch == 1 and len(got) == len(loader)
    assert stream.metrics["cells"] == 1408
    # verify="first": workers report checked shards, so next epoch's workers skip the hashing
    assert stream.verified == {e["sha256"] for e in load_manifest(cb_shards)["shards"]}


def test_sources_file_url_url_list_and_fsspec(cb_shards):
    man = load_manifest(cb_shards)
    whole = cell_ids(list(ShardStream(cb_shards, cfg())))
    assert cell_ids(list(ShardStream(f"file://{cb_shards}", cfg()))) == whole
    subset = [f"file://{cb_shards / e['file']}" for e in man["shards"][1:3]]
    sub = ShardStream(subset, cfg(shuffle=False, bucketing={"enabled": False}))
    want = [c["cell_id"] for c in read_shards(cb_shards) if c["shard"] in
            {e["file"] for e in man["shards"][1:3]}]
    assert cell_ids(list(sub)) == want
    piped = [f"pipe:cat {cb_shards / e['file']}" for e in man["shards"][1:3]]
    sub = ShardStream(piped, cfg(shuffle=False, bucketing={"enabled": False}),
                      manifest=cb_shards / "manifest.json")
    assert cell_ids(list(sub)) == want
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for p in cb_shards.iterdir():
        fs.pipe(f"/cbmem/{p.name}", p.read_bytes())
    assert cell_ids(list(ShardStream("memory://cbmem", cfg()))) == whole


def test_rank_and_config_validation(cb_shards):
    with pytest.raises(ValueError, match="rank=2"):
        ShardStream(cb_shards, cfg(), rank=2, world_size=2)
    with pytest.raises(ValueError, match="both rank and world_size"):
        ShardStream(cb_shards, cfg(), rank=0)
    with pytest.raises(ValueError, match="uneven"):
        ShardStream(cb_shards, StreamConfig(uneven="spread"))
    with pytest.raises(KeyError, match="bert, none, value"):
        ShardStream(cb_shards, cfg(masking={"name": "span"}))


def test_default_recipe_loads_and_misspelled_keys_fail():
    from scforge.config import ConfigError, load_config

    recipe = Path(__file__).resolve().parents[3] / "configs" / "loader" / "default.yaml"
    c = load_config(StreamConfig, [recipe], ["masking.name=value", "batch_size=32"])
    assert c.batch_size == 32 and c.masking.name == "value" and c.max_len == 2048
    with pytest.raises(ConfigError, match="batchsize"):
        load_config(StreamConfig, [recipe], ["batchsize=32"])
