"""Every family x value mode: forward/backward, overfitting, embeddings, masking invariants."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from scforge.contracts import IGNORE_INDEX
from scforge.models import count_parameters, get_model, list_models
from scforge.models.masked_autoencoder import hidden_positions

FAMILIES = ["autoregressive", "masked_autoencoder", "transformer_encoder"]
VALUE_MODES = ["none", "binned", "continuous"]


@pytest.mark.parametrize("value_mode", VALUE_MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_backward_and_overfit(family, value_mode, make_config, make_batch) -> None:
    model = get_model(make_config(family, value_mode=value_mode))
    batch = make_batch(value_mode=value_mode)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        out = model(batch)
        assert torch.isfinite(out.loss), f"step {step}: loss {out.loss}"
        opt.zero_grad()
        out.loss.backward()
        if step == 0:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads)
            expected = {"autoregressive": "next_gene_loss"}.get(family, "mlm_loss")
            assert expected in out.metrics
            if value_mode != "none":
                value_key = "next_value_loss" if family == "autoregressive" else "value_loss"
                assert value_key in out.metrics
            assert all(isinstance(v, float) for v in out.metrics.values())
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_shape_and_embeddings(family, make_config, make_batch) -> None:
    model = get_model(make_config(family)).eval()
    batch = make_batch()
    with torch.no_grad():
        emb = model.encode(batch)
        out = model(batch)
    assert emb.shape == (batch.size, 32)
    assert out.embeddings is not None and out.embeddings.shape == (batch.size, 32)


@pytest.mark.parametrize("family", ["transformer_encoder", "masked_autoencoder"])
def test_logits_only_at_masked_positions(family, make_config, make_batch) -> None:
    model = get_model(make_config(family))
    batch = make_batch()
    out = model(batch)
    n_masked = int((batch.labels != IGNORE_INDEX).sum())
    assert out.logits is not None and out.logits.shape == (n_masked, 40)


def test_autoregressive_logits_only_at_real_pairs(make_config, make_batch) -> None:
    model = get_model(make_config("autoregressive"))
    batch = make_batch()
    out = model(batch)
    n_pairs = int((batch.attention_mask.sum(1) - 1).sum())  # right padding: length - 1 each
    assert out.logits is not None and out.logits.shape == (n_pairs, 40)


def test_pooling_cls_and_mean_differ(make_config, make_batch) -> None:
    batch = make_batch()
    torch.manual_seed(1)
    cls_model = get_model(make_config(pooling="cls")).eval()
    mean_model = get_model(make_config(pooling="mean")).eval()
    mean_model.load_state_dict(cls_model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(cls_model.encode(batch), mean_model.encode(batch))


@pytest.mark.parametrize("value_mode", ["none", "continuous"])
@pytest.mark.parametrize("family", FAMILIES)
def test_mean_pooling_ignores_pads(family, value_mode, make_config, make_batch) -> None:
    model = get_model(make_config(family, pooling="mean", value_mode=value_mode)).eval()
    batch = make_batch(value_mode=value_mode)
    pads = ~batch.attention_mask
    assert pads.any()
    noisy = dataclasses.replace(
        batch,
        input_ids=batch.input_ids.masked_fill(pads, 7),
        values=None if batch.values is None else batch.values.masked_fill(pads, 3.0),
    )
    with torch.no_grad():
        torch.testing.assert_close(model.encode(batch), model.encode(noisy))


def test_causal_output_independent_of_future(make_config, make_batch) -> None:
    model = get_model(make_config("autoregressive", value_mode="binned")).eval()
    batch = make_batch(value_mode="binned", lengths=[16] * 6, mask_prob=0.0)
    t = 7
    future = torch.arange(16) > t
    changed = dataclasses.replace(
        batch,
        input_ids=torch.where(future, torch.randint(3, 40, batch.input_ids.shape), batch.input_ids),
        values=torch.where(future, torch.randint(1, 11, batch.values.shape).float(), batch.values),
    )
    with torch.no_grad():
        h0, _ = model.encode_tokens(batch)
        h1, _ = model.encode_tokens(changed)
    torch.testing.assert_close(h0[:, : t + 1], h1[:, : t + 1])
    assert not torch.allclose(h0[:, t + 1 :], h1[:, t + 1 :])


def test_masked_autoencoder_encoder_sees_fewer_tokens(make_config, make_batch) -> None:
    model = get_model(make_config("masked_autoencoder", value_mode="continuous"))
    batch = make_batch(value_mode="continuous", mask_prob=0.5, length=24)
    seen: list[int] = []
    model.encoder.blocks[0].register_forward_hook(
        lambda m, args, out: seen.append(args[0].shape[1])
    )
    model(batch)
    visible = batch.attention_mask & ~hidden_positions(batch, use_values=True)
    assert seen[0] == int(visible.sum(1).max()) < batch.input_ids.shape[1]
    hidden, keys = model.encode_tokens(batch)
    assert hidden.shape[1] == seen[0]
    assert torch.equal(keys.sum(1), visible.sum(1))


def test_masked_autoencoder_without_values_keeps_value_masked_tokens(
    make_config, make_batch
) -> None:
    """With value_mode='none' a hidden value is not reconstructed, so its token stays visible."""
    model = get_model(make_config("masked_autoencoder"))
    batch = make_batch(value_mode="binned", mask_prob=0.4)
    _, keys = model.encode_tokens(batch)
    expected = batch.attention_mask & (batch.labels == IGNORE_INDEX)
    assert torch.equal(keys.sum(1), expected.sum(1))


def test_masked_autoencoder_encoder_ignores_hidden_content(make_config, make_batch) -> None:
    """What the encoder sees must not depend on what sits at hidden positions."""
    model = get_model(make_config("masked_autoencoder", value_mode="binned")).eval()
    batch = make_batch(value_mode="binned", mask_prob=0.4)
    hid = hidden_positions(batch, use_values=True)
    other = dataclasses.replace(
        batch,
        input_ids=batch.input_ids.masked_fill(hid, 9),
        values=batch.values.masked_fill(hid, 5.0),
    )
    with torch.no_grad():
        torch.testing.assert_close(model.encode(batch), model.encode(other))


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_autocast_forward(family, make_config, make_batch) -> None:
    model = get_model(make_config(family, value_mode="continuous", contrastive_weight=0.5))
    batch = make_batch(value_mode="continuous")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()


@pytest.mark.parametrize("family", FAMILIES)
def test_contrastive_objective(family, make_config, make_batch) -> None:
    cfg = make_config(family, contrastive_weight=0.5, dropout=0.0)
    model = get_model(cfg)
    batch = make_batch()
    model.generator = torch.Generator().manual_seed(3)
    first = model(batch)
    model.generator = torch.Generator().manual_seed(3)
    second = model(batch)
    assert "contrastive_loss" in first.metrics and "contrastive_acc" in first.metrics
    assert first.metrics["contrastive_loss"] == second.metrics["contrastive_loss"]
    gene_key = "next_gene_loss" if family == "autoregressive" else "mlm_loss"
    expected = first.metrics[gene_key] + 0.5 * first.metrics["contrastive_loss"]
    assert first.loss.item() == pytest.approx(expected, rel=1e-5)
    first.loss.backward()
    assert model.contrastive is not None
    assert model.contrastive.proj[0].weight.grad is not None


def test_contrastive_off_builds_no_head(make_config) -> None:
    with_head = get_model(make_config(contrastive_weight=0.1))
    without = get_model(make_config())
    assert without.contrastive is None
    assert count_parameters(with_head) > count_parameters(without)


def test_gradient_checkpointing_matches(make_config, make_batch) -> None:
    batch = make_batch(value_mode="binned")
    torch.manual_seed(5)
    plain = get_model(make_config(value_mode="binned"))
    ckpt = get_model(make_config(value_mode="binned", gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    a, b = plain(batch), ckpt(batch)
    a.loss.backward()
    b.loss.backward()
    torch.testing.assert_close(a.loss, b.loss)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_value_mask_hides_placeholder_values(make_config, make_batch) -> None:
    model = get_model(make_config(value_mode="continuous")).eval()
    batch = make_batch(value_mode="continuous")
    leaked = dataclasses.replace(batch, values=batch.values.masked_fill(batch.value_mask, 99.0))
    with torch.no_grad():
        torch.testing.assert_close(model(batch).loss, model(leaked).loss)


@pytest.mark.parametrize("family", FAMILIES)
def test_fully_padded_row_stays_finite(family, make_config, make_batch) -> None:
    model = get_model(make_config(family, value_mode="binned"))
    batch = make_batch(value_mode="binned", lengths=[16, 9, 0, 4, 16, 1])
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(model.encode(batch)).all()


@pytest.mark.parametrize("family", ["transformer_encoder", "masked_autoencoder"])
def test_batch_with_nothing_masked_gives_zero_not_nan(family, make_config, make_batch) -> None:
    model = get_model(make_config(family))
    batch = make_batch(mask_prob=0.0)
    if family == "masked_autoencoder":  # nothing hidden, but the loss must still be defined
        batch = dataclasses.replace(batch, labels=torch.full_like(batch.labels, IGNORE_INDEX))
    out = model(batch)
    assert out.loss.item() == 0.0 and out.logits.shape[0] == 0
    out.loss.backward()


def test_batch_without_labels_raises(make_config, make_batch) -> None:
    model = get_model(make_config())
    batch = dataclasses.replace(make_batch(), labels=None)
    with pytest.raises(ValueError, match="enable masking"):
        model(batch)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            lambda b: dataclasses.replace(b, attention_mask=b.attention_mask.long()),
            "attention_mask",
        ),
        (lambda b: dataclasses.replace(b, labels=b.labels[:, :-1]), "batch.labels"),
        (lambda b: dataclasses.replace(b, input_ids=b.input_ids.float()), "batch.input_ids"),
        (lambda b: dataclasses.replace(b, values=None), "batch.values"),
        (lambda b: dataclasses.replace(b, value_labels=None), "value_labels"),
    ],
)
def test_bad_batches_raise_naming_the_field(change, needle, make_config, make_batch) -> None:
    model = get_model(make_config(value_mode="binned"))
    with pytest.raises(ValueError, match=needle):
        model(change(make_batch(value_mode="binned")))


def test_sequence_longer_than_max_len_raises(make_config, make_batch) -> None:
    model = get_model(make_config(max_len=8))
    with pytest.raises(ValueError, match="max_len"):
        model(make_batch())


def test_registry_and_get_model(make_config) -> None:
    assert list_models() == sorted([*FAMILIES, "scgpt"])  # scgpt: tests/models/test_scgpt.py
    cfg = make_config()
    by_name = get_model("masked_autoencoder", cfg)
    assert by_name.config.family == "masked_autoencoder"
    from_mapping = get_model(dataclasses.asdict(cfg))
    assert from_mapping.config == get_model(cfg).config
    with pytest.raises(ValueError, match="model.family"):
        get_model("bert", cfg)
    with pytest.raises(ValueError, match="hiden_size"):
        get_model({**dataclasses.asdict(cfg), "hiden_size": 8})
    with pytest.raises(ValueError, match="model.vocab_size"):
        get_model(dataclasses.replace(cfg, vocab_size=0))


def test_tied_head_shares_the_embedding(make_config) -> None:
    tied = get_model(make_config())
    untied = get_model(make_config(tie_embeddings=False))
    assert tied.gene_head.decoder.weight is tied.embed.gene.weight
    assert count_parameters(untied) - count_parameters(tied) == 40 * 32
