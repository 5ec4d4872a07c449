"""The CPU dropout-attention kernel equals softmax -> dropout -> @ V, gradients included."""

from __future__ import annotations

import math

import pytest
import torch

from scforge.models import attention as A


def _reference(q, k, v, mask, drop, p):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(-1).masked_fill(drop, 0.0) / (1 - p) @ v


@pytest.mark.parametrize("mask_kind", ["none", "keys", "causal"])
def test_matches_reference_with_the_same_drop_mask(mask_kind):
    g = torch.Generator().manual_seed(0)
    b, h, n, dh, p = 2, 3, 29, 8, 0.1
    q, k, v = (torch.randn(b, h, n, dh, dtype=torch.float64, generator=g, requires_grad=True)
               for _ in range(3))
    mask = None
    if mask_kind == "keys":
        mask = torch.rand(b, 1, 1, n, generator=g) > 0.3
        mask[..., 0] = True
    elif mask_kind == "causal":
        mask = torch.ones(n, n, dtype=torch.bool).tril().expand(b, 1, n, n)
    drop = torch.rand(b, h, n, n, generator=g) < p
    grad = torch.randn(b, h, n, dh, dtype=torch.float64, generator=g)
    out = A.dropout_attention(q, k, v, mask, p, drop=drop)
    ref = _reference(q, k, v, mask, drop, p)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_low_precision_matches_the_float64_reference(dtype, tol):
    """Flash kernel + float32 corrections in float32 and bf16 stay close to exact float64."""
    g = torch.Generator().manual_seed(1)
    b, h, n, dh, p = 2, 2, 70, 16, 0.2
    x64 = [torch.randn(b, h, n, dh, dtype=torch.float64, generator=g) for _ in range(3)]
    mask = torch.rand(b, 1, 1, n, generator=g) > 0.2
    mask[..., 0] = True
    drop = torch.rand(b, h, n, n, generator=g) < p
    grad = torch.randn(b, h, n, dh, dtype=torch.float64, generator=g)
    ref_in = [x.clone().requires_grad_() for x in x64]
    ref = _reference(*ref_in, mask, drop, p)
    want = torch.autograd.grad(ref, ref_in, grad)
    lo = [x.to(dtype).requires_grad_() for x in x64]
    out = A.dropout_attention(*lo, mask, p, drop=drop)
    assert out.dtype == dtype
    got = torch.autograd.grad(out, lo, grad.to(dtype))
    scale = float(ref.abs().max())
    assert float((out.double() - ref).abs().max()) < tol * 10 * scale
    for a, w in zip(got, want, strict=True):
        assert a.dtype == dtype
        assert float((a.double() - w).abs().max()) < tol * 10 * float(w.abs().max())


def test_dropped_entries_are_iid_at_rate_p_and_follow_the_global_rng():
    torch.manual_seed(3)
    a = A.draw_dropped(1 << 16, 0.02)
    torch.manual_seed(3)
    b = A.draw_dropped(1 << 16, 0.02)
    assert torch.equal(a, b)  # seeded by torch's global RNG: checkpointed RNG state resumes it
    n, p = 1 << 22, 0.02
    flat = A.draw_dropped(n, p)
    assert bool((flat[1:] > flat[:-1]).all()) and int(flat[0]) >= 0 and int(flat[-1]) < n
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(len(flat) - n * p) < 5 * sd  # Bernoulli(p) count (exact p, no quantisation)
    hit = torch.zeros(n, dtype=torch.bool)
    hit[flat] = True
    pairs = float((hit[1:] & hit[:-1]).float().sum())
    assert abs(pairs - (n - 1) * p * p) < 5 * ((n - 1) * p * p) ** 0.5  # neighbours independent
    thirds = hit.view(4, -1).float().mean(1)
    assert float((thirds - p).abs().max()) < 0.002  # no drift across the range
    # n tiny or p large: several geometric batches, still a subset of range(n)
    small = A.draw_dropped(10, 0.9)
    assert int(small.max()) < 10 and len(small.unique()) == len(small)


def test_training_dispatch_and_eval_path():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    ev = A.attention(q, k, v, None, dropout_p=0.1, training=False)  # eval: SDPA, no dropout
    torch.testing.assert_close(ev, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    tr = A.attention(q, k, v, None, dropout_p=0.1, training=True)
    assert not torch.allclose(tr, ev)  # training drops probabilities
    with pytest.raises(ValueError, match="dropout probability"):
        A.dropout_attention(q, k, v, None, 0.0)
    with pytest.raises(ValueError, match="bool"):
        A.dropout_attention(q, k, v, torch.ones(2, 1, 1, 16), 0.1)


def test_gradient_checkpointing_redraws_the_same_dropout():
    """Recompute in backward restores the CPU RNG, so the drop masks (and grads) are the same."""
    from scforge.contracts import Batch
    from scforge.models import ModelConfig, get_model

    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = get_model(ModelConfig(preset="debug", vocab_size=300, max_len=32, dropout=0.2,
                                      gradient_checkpointing=ckpt))
        ids = torch.randint(5, 300, (3, 32), generator=torch.Generator().manual_seed(1))
        labels = torch.full_like(ids, -100)
        labels[:, 3:9] = ids[:, 3:9]
        torch.manual_seed(5)
        model(Batch(input_ids=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool),
                    labels=labels)).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
