"""Attention kernels: ``F.scaled_dot_product_attention``, plus a CPU path for probability dropout.

Shape legend: B = batch, H = heads, L = query/key length, Dh = head width.

SDPA picks a fused kernel (flash on CPU; flash / memory-efficient on GPU) only when
``dropout_p == 0`` on CPU: with dropout on the attention probabilities (BERT's and Geneformer's
``attention_probs_dropout_prob``) PyTorch falls back to its "math" path, which materialises the
[B, H, L, L] scores several times over and draws the dropout mask with ``bernoulli_``; on 2
cores at L = 2,048 that path costs 5-9x the fused kernel and dominates a small model's step.

:func:`dropout_attention` computes exactly the same function (softmax, dropout of the
probabilities with rescaling by ``1 / (1 - p)``, weighted sum) from the no-dropout flash kernel
plus sparse corrections (:mod:`scforge.kernels.attention`):

- ``O = (P V - P_D V) / (1 - p)``, where ``P_D`` is ``P`` at the dropped entries only, a fraction
  ``p`` of them (2% for Geneformer); each dropped probability is rebuilt from the flash kernel's
  log-sum-exp with one dot product;
- backward runs the flash backward with ``dO / (1 - p)`` and ``out = (1 - p) O`` (so its
  softmax term ``rowsum(dO * out)`` is exact), then subtracts what it added for dropped entries;
- dropped entries are drawn as geometric gaps between successive drops (~``n p`` draws from
  torch's global CPU RNG instead of ``n``): exactly i.i.d. Bernoulli(``p``), and gradient
  checkpointing's RNG restore redraws the same ones.

Nothing of size [L, L] is ever allocated: memory is O(L Dh + n p). At 4 x 2,048 tokens on 2
cores, forward + backward of one layer took 0.42 s against 0.34 s for flash without dropout and
1.84 s for the math path (d = 256, 4 heads; ``benchmarks/bench_train.py`` measures whole steps).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

CORRECTION_DTYPES = (torch.float32, torch.float64)
"""Dtypes the sparse corrections run in; bf16/fp16 inputs are corrected in float32."""


def draw_dropped(n: int, p: float) -> torch.Tensor:
    """Sorted int64 indices of the dropped entries among ``n``: each independently with rate ``p``.

    The gaps between successive dropped entries of an i.i.d. Bernoulli(p) sequence are
    geometric, so ~``n p`` geometric draws (torch's global CPU RNG: seeding and the RNG state that
    gradient checkpointing restores work as usual) replace ``n`` uniform ones.
    """
    expected = n * p
    chunk = int(expected + 8.0 * math.sqrt(expected + 1.0) + 64)
    parts, last = [], -1
    while last < n - 1:
        gaps = torch.empty(chunk, dtype=torch.float64).geometric_(p)
        pos = gaps.cumsum_(0).add_(last).to(torch.int64)
        parts.append(pos)
        last = int(pos[-1])
    flat = torch.cat(parts) if len(parts) > 1 else parts[0]
    return flat[: int(torch.searchsorted(flat, n))]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    dropout_p: float,
    training: bool,
) -> torch.Tensor:
    """Scaled dot-product attention, [B, H, L, Dh] in and out.

    Args:
        q, k, v: [B, H, L, Dh].
        mask: bool, broadcastable to [B, H, L, L], True = may attend; None = everything.
        dropout_p: probability dropout (applied only when ``training``).
        training: the module's training flag.
    """
    p = dropout_p if training else 0.0
    if p > 0 and q.device.type == "cpu":
        return dropout_attention(q, k, v, mask, p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)


def dropout_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, p: float,
    *, drop: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(Dh) + mask) -> dropout(p) -> @ v`` with a chunked backward.

    Args:
        q, k, v: [B, H, L, Dh].
        mask: bool broadcastable to [B, H, L, L] (True = may attend) or None. Every query row
            must allow at least one key (see :func:`scforge.models.layers.attention_mask`).
        p: dropout probability in (0, 1).
        drop: optional bool [B, H, L, L] drop mask to use instead of drawing one (tests).

    Returns:
        [B, H, L, Dh].
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability {p} must lie in (0, 1)")
    return _DropoutAttention.apply(q, k, v, mask, p, drop)


def _flash(q, k, v, bias, scale):  # noqa: ANN001, ANN202
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, False, attn_mask=bias, scale=scale)


def _flash_backward(go, q, k, v, out, lse, bias, scale):  # noqa: ANN001, ANN202
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        go, q, k, v, out, lse, 0.0, False, attn_mask=bias, scale=scale)


def mask_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive bias (0 where allowed, -inf elsewhere) of a bool mask, [B, 1|H, 1|L, Lk]."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise ValueError(f"attention mask has dtype {mask.dtype}; pass a bool tensor")
    if mask.dim() != 4:
        raise ValueError(f"attention mask has shape {tuple(mask.shape)}; expected 4 dimensions")
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, float("-inf"))


def _bias_at(bias: torch.Tensor | None, flat: torch.Tensor, shape: tuple[int, ...],
             dtype: torch.dtype) -> torch.Tensor:
    """The additive mask at each flat index of the [B, H, L, Lk] probabilities (0 or -inf)."""
    if bias is None:
        return torch.zeros(len(flat), dtype=dtype)
    b, h, length, keys = shape
    dense = bias.contiguous()
    strides = dense.expand(shape).stride()  # 0 along broadcast dimensions
    rest, j = flat.div(keys, rounding_mode="floor"), flat.remainder(keys)
    rest, i = rest.div(length, rounding_mode="floor"), rest.remainder(length)
    bi, hi = rest.div(h, rounding_mode="floor"), rest.remainder(h)
    offset = bi * strides[0] + hi * strides[1] + i * strides[2] + j * strides[3]
    return dense.reshape(-1)[offset].to(dtype)


def _rows(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A C-contiguous [B*H, L, Dh] NumPy view (a copy when the layout or dtype differs)."""
    b, h, length, dh = t.shape
    return t.detach().to(dtype).contiguous().view(b * h, length, dh).numpy()


class _DropoutAttention(torch.autograd.Function):
    """Flash attention without dropout, corrected at the dropped entries (see the module doc).

    Saves q, k, v, the pre-scaling output ``(1 - p) O``, the log-sum-exp, and for the dropped
    entries only their flat index and probability: no [L, L] tensor is ever built.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, p, drop):  # noqa: ANN001, ANN205 - autograd signature
        from scforge.kernels.attention import dropped_forward, run_split, segments

        b, h, length, dh = q.shape
        keys = k.shape[2]
        shape = (b, h, length, keys)
        scale = 1.0 / math.sqrt(dh)
        bias = mask_bias(mask, q.dtype)
        o0, lse = _flash(q, k, v, bias, scale)
        if drop is None:
            flat = draw_dropped(math.prod(shape), p)
        else:
            flat = drop.expand(shape).reshape(-1).nonzero().squeeze(1)
        cdt = q.dtype if q.dtype in CORRECTION_DTYPES else torch.float32
        qn, kn, vn = _rows(q, cdt), _rows(k, cdt), _rows(v, cdt)
        flat_np = flat.numpy()
        seg = segments(flat_np, b * h, length * keys)
        pd = np.empty(len(flat_np), dtype=qn.dtype)
        corr = np.zeros_like(qn)
        run_split(dropped_forward, b * h, qn, kn, vn,
                  lse.detach().to(cdt).reshape(b * h, length).numpy(),
                  _bias_at(bias, flat, shape, cdt).numpy(), flat_np, seg, scale, pd, corr,
                  threads=torch.get_num_threads())
        kept_out = o0 - torch.from_numpy(corr).view(b, h, length, dh).to(o0.dtype)
        keep_scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(q, k, v, kept_out, lse, bias, flat, torch.from_numpy(pd))
        ctx.scale, ctx.keep_scale = scale, keep_scale
        return kept_out * keep_scale

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205 - autograd signature
        from scforge.kernels.attention import dropped_backward, run_split, segments

        q, k, v, kept_out, lse, bias, flat, pd = ctx.saved_tensors
        scale, keep_scale = ctx.scale, ctx.keep_scale
        b, h, length, dh = q.shape
        keys = k.shape[2]
        go = grad_out.contiguous()
        # Flash backward with dO / (1 - p) and out = (1 - p) O: its rowsum(dO' * out) is the
        # exact softmax-backward term rowsum(dO * O); only the dropped entries need fixing.
        dq, dk, dv = _flash_backward(go * keep_scale, q, k, v, kept_out, lse, bias, scale)
        cdt = pd.dtype
        qn, kn, vn, gn = (_rows(t, cdt) for t in (q, k, v, go))
        cq, ck, cv = np.zeros_like(qn), np.zeros_like(kn), np.zeros_like(vn)
        flat_np = flat.numpy()
        kind = qn.dtype.type
        run_split(dropped_backward, b * h, qn, kn, vn, gn, flat_np,
                  segments(flat_np, b * h, length * keys), pd.numpy() * kind(keep_scale),
                  kind(scale), cq, ck, cv, threads=torch.get_num_threads())

        def fix(g: torch.Tensor, c: np.ndarray, like: torch.Tensor) -> torch.Tensor:
            return g.add_(torch.from_numpy(c).view(like.shape).to(g.dtype))

        return fix(dq, cq, q), fix(dk, ck, k), fix(dv, cv, v), None, None, None
