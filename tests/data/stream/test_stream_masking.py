"""Masking strategies: rates, the 80/10/10 split, specials never masked, seeded per cell."""

from __future__ import annotations

import pytest
import torch
from _stream_util import cfg

from scforge.contracts import IGNORE_INDEX
from scforge.data.shard import load_manifest
from scforge.data.stream import ShardStream, StreamConfig, get_masking, list_maskings

MASK, CLS, EOS, PAD = 1, 2, 3, 0  # Geneformer V2 specials


def _pairs(shards, **kw):
    """(masked batch, unmasked batch) pairs over one epoch with identical cells."""
    masked = list(ShardStream(shards, cfg(max_len=512, **kw)))
    plain = list(ShardStream(shards, cfg(max_len=512, masking={"name": "none"})))
    for m, p in zip(masked, plain, strict=True):
        assert m.cell_ids == p.cell_ids
    return list(zip(masked, plain, strict=True))


def test_registry_lists_strategies():
    assert list_maskings() == ["bert", "none", "value"]
    assert get_masking("bert").name == "bert"
    with pytest.raises(KeyError, match="registered: bert, none, value"):
        get_masking("span")


def test_bert_rate_split_and_specials(cb_shards):
    selected = genes = to_mask = kept = rand = 0
    for m, p in _pairs(cb_shards):
        real = p.attention_mask
        special = (p.input_ids == CLS) | (p.input_ids == EOS) | (p.input_ids == PAD)
        sel = m.labels != IGNORE_INDEX
        assert not (sel & special).any(), "<cls>/<eos>/<pad> must never be masked"
        assert not (sel & ~real).any()
        assert torch.equal(m.labels[sel], p.input_ids[sel])  # labels = original ids
        assert torch.equal(m.input_ids[~sel], p.input_ids[~sel])  # the rest untouched
        genes += int((real & ~special).sum())
        selected += int(sel.sum())
        to_mask += int((m.input_ids[sel] == MASK).sum())
        kept += int((m.input_ids[sel] == p.input_ids[sel]).sum())
        rand += int(((m.input_ids[sel] != MASK) & (m.input_ids[sel] != p.input_ids[sel])).sum())
        assert m.input_ids[sel][m.input_ids[sel] != MASK].min() > EOS  # random ids are genes
    rate = selected / genes
    assert abs(rate - 0.15) < 0.005, rate
    assert abs(to_mask / selected - 0.8) < 0.01
    assert abs(kept / selected - 0.1) < 0.01
    assert abs(rand / selected - 0.1) < 0.01


def test_bert_configurable_rates(cb_shards):
    sel = genes = masked = 0
    for m, p in _pairs(cb_shards, masking={"probability": 0.3, "mask_fraction": 1.0,
                                           "random_fraction": 0.0}):
        s = m.labels != IGNORE_INDEX
        sel += int(s.sum())
        genes += int((p.attention_mask & (p.input_ids > EOS)).sum())
        masked += int((m.input_ids[s] == MASK).sum())
    assert abs(sel / genes - 0.3) < 0.01 and masked == sel


def test_masks_are_seeded_per_cell_not_per_batch(cb_shards):
    """The same cell gets the same mask whatever batch, worker or rank it lands in."""
    def masks(**kw):
        out = {}
        for rank in range(kw.get("world_size", 1)):
            stream = ShardStream(cb_shards, cfg(max_len=512, batch_size=kw.get("bs", 32)),
                                 rank=rank, world_size=kw.get("world_size", 1))
            for b in stream:
                for row, cid in enumerate(b.cell_ids):
                    out[cid] = b.labels[row][b.attention_mask[row]].tolist()
        return out

    a = masks()
    assert a == masks(world_size=2, bs=16)
    stream = ShardStream(cb_shards, cfg(max_len=512))
    stream.set_epoch(1)
    other_epoch = {cid: b.labels[row][b.attention_mask[row]].tolist()
                   for b in stream for row, cid in enumerate(b.cell_ids)}
    assert sum(a[c] != other_epoch[c] for c in a) > 0.99 * len(a)  # dynamic across epochs


def test_value_masking_on_binned_values(cb_binned):
    man = load_manifest(cb_binned)
    specials = set(man["vocab"]["specials"].values())
    hidden = genes = 0
    for m, p in _pairs(cb_binned, masking={"name": "value"}):
        assert m.labels is None and m.value_mask is not None
        vm = m.value_mask
        assert vm.dtype == torch.bool
        is_special = torch.zeros_like(vm)
        for s in specials:
            is_special |= p.input_ids == s
        assert not (vm & (is_special | ~p.attention_mask)).any()
        assert (m.values[vm] == 0).all()
        assert torch.equal(m.values[~vm], p.values[~vm])
        assert torch.equal(m.value_labels[p.attention_mask], p.values[p.attention_mask])
        assert torch.equal(m.input_ids, p.input_ids)  # gene ids stay visible
        hidden += int(vm.sum())
        genes += int((p.attention_mask & ~is_special).sum())
    assert abs(hidden / genes - 0.15) < 0.01


def test_value_masking_needs_values(cb_shards):
    with pytest.raises(ValueError, match="rank_value shards: use masking.name=bert"):
        ShardStream(cb_shards, cfg(masking={"name": "value"}))


def test_masking_config_is_validated():
    c = StreamConfig()
    c.masking.mask_fraction, c.masking.random_fraction = 0.9, 0.2
    with pytest.raises(ValueError, match="sum to <= 1"):
        c.validate()
