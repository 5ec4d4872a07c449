"""The ``scgpt`` family: forward/backward and overfitting per value mode, objectives, the
placeholder at hidden values never read, post-LN blocks, and refusals. Parity with scGPT's own
code is in tests/interop/test_interop_scgpt.py."""

from __future__ import annotations

import pytest
import torch

from scforge.models import get_model

SCGPT = dict(norm_placement="post", activation="relu", mlm_weight=0.0, pad_value=-2.0,
             mask_value=-1.0)


@pytest.mark.parametrize("zero_mvc", [False, True])
@pytest.mark.parametrize("value_mode", ["binned", "continuous"])
def test_scgpt_trains_on_masked_values(value_mode, zero_mvc, make_config, make_batch):
    over = dict(SCGPT, explicit_zero_prob=zero_mvc, mvc_decoder=zero_mvc)
    if value_mode == "binned":  # scGPT's category style: pad / mask are bin indices
        over.update(pad_value=11.0, mask_value=0.0, n_bins=12)
    model = get_model(make_config("scgpt", value_mode=value_mode, **over))
    batch = make_batch(value_mode=value_mode)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        if step == 0:
            want = {"value_loss"} | ({"zero_loss", "mvc_loss", "mvc_zero_loss"} if zero_mvc
                                     else set())
            assert want <= set(out.metrics), out.metrics
            n_hidden = int((batch.value_mask & batch.attention_mask).sum())
            assert out.logits is not None and out.logits.shape == (n_hidden,)
            assert out.embeddings is not None and out.embeddings.shape == (batch.size, 32)
    assert losses[-1] < 0.5 * losses[0], losses


def test_hidden_values_are_never_read(make_config, make_batch):
    model = get_model(make_config("scgpt", value_mode="continuous", **SCGPT)).eval()
    batch = make_batch(value_mode="continuous")
    other = make_batch(value_mode="continuous")
    assert batch.values is not None and batch.value_mask is not None and other.values is not None
    changed = torch.where(batch.value_mask | ~batch.attention_mask, other.values * 7 + 3,
                          batch.values)
    with torch.no_grad():
        a = model.encode(batch)
        b = model.encode(type(batch)(**{**batch.__dict__, "values": changed}))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_refusals(make_config):
    with pytest.raises(ValueError, match="value_mode='none'"):
        get_model(make_config("scgpt", value_mode="none", **{**SCGPT, "mlm_weight": 1.0}))
    with pytest.raises(ValueError, match="model.pad_value=-2.0 must be a bin index"):
        get_model(make_config("scgpt", value_mode="binned", **SCGPT))
