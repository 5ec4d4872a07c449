"""Attention masking, embedding and pooling building blocks against plain references."""

from __future__ import annotations

import math

import pytest
import torch

from scforge.contracts import Batch
from scforge.models.config import ModelConfig
from scforge.models.contrastive import nt_xent, token_dropout
from scforge.models.layers import (
    GeneExpressionEmbedding,
    SelfAttention,
    TransformerStack,
    attention_mask,
    pool,
)


def reference_attention(
    attn: SelfAttention, x: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """Explicit softmax(QK^T / sqrt(dh)) V with ``allowed`` [B, Lq, Lk]."""
    b, length, d = x.shape
    h = attn.heads
    q, k, v = attn.qkv(x).view(b, length, 3, h, d // h).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    out = scores.softmax(-1) @ v
    return attn.out(out.transpose(1, 2).reshape(b, length, d))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_reference_at_real_positions(causal: bool) -> None:
    torch.manual_seed(0)
    attn = SelfAttention(16, 4, dropout=0.0)
    x = torch.randn(3, 7, 16)
    keys = torch.arange(7)[None, :] < torch.tensor([7, 5, 2])[:, None]
    allowed = keys[:, None, :].expand(3, 7, 7)
    if causal:
        allowed = allowed & torch.ones(7, 7, dtype=torch.bool).tril()
    got = attn(x, attention_mask(keys, causal=causal))
    want = reference_attention(attn, x, allowed)
    torch.testing.assert_close(got[keys], want[keys])


def test_causal_mask_combines_padding_and_triangle() -> None:
    keys = torch.tensor([[True, True, True, False], [False, True, True, True]])  # right, left pad
    mask = attention_mask(keys, causal=True)
    assert mask.shape == (2, 1, 4, 4)
    tri = torch.ones(4, 4, dtype=torch.bool).tril()
    for row in range(2):
        expected = (keys[row][None, :] & tri) | torch.eye(4, dtype=torch.bool)
        assert torch.equal(mask[row, 0], expected)


@pytest.mark.parametrize("causal", [False, True])
def test_no_nan_for_rows_without_real_keys(causal: bool) -> None:
    torch.manual_seed(0)
    stack = TransformerStack(layers=2, d=16, heads=4, ffn=32, dropout=0.0, eps=1e-5, causal=causal)
    keys = torch.tensor(
        [[False, False, False, False], [False, False, True, True], [True, True, False, False]]
    )
    x = torch.randn(3, 4, 16, requires_grad=True)
    out = stack(x, keys)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def _embedding(value_mode: str, **kw: object) -> GeneExpressionEmbedding:
    cfg = ModelConfig(
        preset="none", vocab_size=20, hidden_size=16, num_layers=1, num_heads=2,
        intermediate_size=32, dropout=0.0, max_len=8, value_mode=value_mode, n_bins=5, **kw,
    )  # fmt: skip
    return GeneExpressionEmbedding(cfg)


@pytest.mark.parametrize("value_mode", ["binned", "continuous"])
def test_embedding_reads_no_value_under_value_mask(value_mode: str) -> None:
    emb = _embedding(value_mode)
    ids = torch.randint(3, 20, (2, 6))
    keys = torch.ones(2, 6, dtype=torch.bool)
    values = torch.randint(0, 6, (2, 6)).float()
    vmask = torch.zeros(2, 6, dtype=torch.bool)
    vmask[:, 2] = True
    a = emb(ids, keys, values, vmask)
    b = emb(ids, keys, values.masked_fill(vmask, 3.0), vmask)
    torch.testing.assert_close(a, b)
    c = emb(ids, keys, values.masked_fill(vmask, 3.0), None)  # unmasked: the value is read
    assert not torch.allclose(a[:, 2], c[:, 2])


def test_embedding_table_sizes_and_rank_value_mode() -> None:
    assert _embedding("binned").value_encoder.num_embeddings == 6  # n_bins + 1
    plain = _embedding("none")
    assert plain.value_encoder is None and plain.mask_value is None
    assert _embedding("none", position_embedding=False).position is None


def test_mean_pool_ignores_pads_and_cls_takes_first() -> None:
    hidden = torch.randn(2, 5, 3)
    keys = torch.tensor([[True, True, True, False, False], [True] * 5])
    torch.testing.assert_close(pool(hidden, keys, "mean")[0], hidden[0, :3].mean(0))
    torch.testing.assert_close(pool(hidden, keys, "cls"), hidden[:, 0])
    hidden[0, 3:] = float("nan")  # pad content, even non-finite, must not leak in
    assert torch.isfinite(pool(hidden, keys, "mean")).all()


def test_token_dropout_is_a_seeded_subset_keeping_first() -> None:
    keys = torch.arange(50)[None, :] < torch.tensor([50, 30, 1, 0])[:, None]
    batch = Batch(input_ids=torch.zeros(4, 50, dtype=torch.long), attention_mask=keys)
    a = token_dropout(batch, 0.5, generator=torch.Generator().manual_seed(1))
    b = token_dropout(batch, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.attention_mask, b.attention_mask)
    assert not (a.attention_mask & ~keys).any()  # only removes real tokens
    assert torch.equal(a.attention_mask[:, 0], keys[:, 0])
    assert 10 < int(a.attention_mask[0].sum()) < 40
    assert batch.attention_mask is keys  # input untouched
    with pytest.raises(ValueError, match="drop_prob"):
        token_dropout(batch, 1.0)


def test_nt_xent_prefers_aligned_views() -> None:
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    aligned, acc = nt_xent(z, z + 0.01 * torch.randn(8, 16), temperature=0.1)
    shuffled, _ = nt_xent(z, z[torch.randperm(8)], temperature=0.1)
    assert acc.item() == 1.0 and aligned < shuffled
