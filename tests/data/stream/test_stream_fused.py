"""The fused Numba batch kernel against its NumPy reference twin: identical batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _stream_util import assert_same, cfg

from scforge.contracts import IGNORE_INDEX
from scforge.data.stream import ShardStream


def _both(shards, epoch: int = 1, **kw):
    """Batches of one epoch built by the kernel and by the NumPy path (same stream)."""
    out = []
    for use_kernel in (True, False):
        stream = ShardStream(shards, cfg(**kw))
        stream.collator.use_kernel = use_kernel
        stream.set_epoch(epoch)
        out.append((list(stream.iter_workers(2)), dict(stream.metrics)))
    return out


CASES = [
    ("cb_shards", {}),  # every cell truncated at 256, <eos> kept
    ("cb_shards", {"max_len": 0, "bucketing": {"enabled": False}}),  # padding, no truncation
    ("cb_shards", {"max_len": 1200, "keep_eos": False}),  # a mix, plain prefix
    ("cb_shards", {"max_len": 64, "masking": {"probability": 1.0, "mask_fraction": 0.5,
                                              "random_fraction": 0.5}}),
    ("cb_shards", {"masking": {"probability": 0.3, "mask_fraction": 0.0,
                               "random_fraction": 0.0}}),
    ("cb_shards", {"masking": {"name": "none"}}),
    ("cb_binned", {"max_len": 300, "masking": {"name": "value"}}),
    ("cb_binned", {"max_len": 0, "masking": {"name": "bert"}}),
    ("cb_continuous", {"max_len": 300, "masking": {"name": "value", "fill_value": -1.0}}),
    ("cb_continuous", {"shuffle": False, "masking": {"name": "none"}}),
]


@pytest.mark.parametrize(("fixture", "kw"), CASES)
def test_kernel_equals_numpy_reference(request, fixture, kw):
    (fast, m_fast), (ref, m_ref) = _both(request.getfixturevalue(fixture), **kw)
    assert len(fast) > 10
    assert_same(fast, ref)
    assert m_fast == m_ref
    b = fast[0]
    assert b.input_ids.dtype == torch.int32 and b.attention_mask.dtype == torch.bool
    mask = b.attention_mask
    assert (mask[:, 1:] <= mask[:, :-1]).all() and mask[:, 0].all()  # a prefix per row
    assert (b.input_ids[~mask] == ShardStream(request.getfixturevalue(fixture), cfg(**kw))
            .collator.specials.pad).all()
    if b.labels is not None:
        assert b.labels.dtype == torch.int32
        assert ((b.labels == IGNORE_INDEX) | b.attention_mask).all()
    if b.values is not None:
        assert b.values.dtype == torch.float32


def test_strategy_subclass_falls_back_to_its_own_apply(cb_shards):
    """A subclass overriding ``apply`` must not silently get the parent's kernel."""
    from scforge.data.stream.masking.bert import BertMasking

    class Doubled(BertMasking):
        def apply(self, ids, values, draws, out):
            n = super().apply(ids, values, draws, out)
            out["labels"][:, 0] = 7  # something the kernel would never write
            return n

    stream = ShardStream(cb_shards, cfg())
    masking = stream.collator.masking
    stream.collator.masking = Doubled(masking.cfg, masking.specials, has_values=False)
    stream.collator._kernel = stream.collator.masking.kernel_params()
    assert stream.collator._kernel is None
    batch = next(iter(stream))
    assert (batch.labels[:, 0] == 7).all()


def test_batches_are_zero_copy_views_that_outlive_the_stream(cb_shards):
    """In-process batches share one arena per batch; keeping them keeps their data intact."""
    stream = ShardStream(cb_shards, cfg())
    kept = list(stream)
    again = list(ShardStream(cb_shards, cfg()))
    assert_same(kept, again)
    b = kept[0]
    base = b.input_ids.untyped_storage().data_ptr()
    assert b.labels.untyped_storage().data_ptr() == base  # one arena, several views
    assert np.shares_memory(b.attention_mask.numpy(), b.input_ids.numpy()) is False
