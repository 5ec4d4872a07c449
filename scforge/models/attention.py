"""Attention kernels: ``F.scaled_dot_product_attention``, plus a CPU path for probability dropout.

Shape legend: B = batch, H = heads, L = query/key length, Dh = head width, C = (batch, head)
pairs in one chunk.

SDPA picks a fused kernel (flash on CPU; flash / memory-efficient on GPU) only when
``dropout_p == 0`` on CPU: with dropout on the attention probabilities (BERT's and Geneformer's
``attention_probs_dropout_prob``) PyTorch falls back to its "math" path, which materialises the
[B, H, L, L] scores several times over and draws the dropout mask with ``bernoulli_``; on 2
cores at L = 2,048 that path costs ~9x the fused kernel and dominates a small model's step.

:func:`dropout_attention` computes exactly the same function (softmax, then dropout of the
probabilities with rescaling by ``1 / (1 - p)``, then the weighted sum) with a hand-written
backward, one cell (or a bounded block of heads/rows) at a time:

- it draws the drop mask with cheap 16-bit draws instead of ``bernoulli_``, and does fewer
  passes over the [L, L] scores than the math path (no safe-softmax re-masking);
- the keep/drop decision is one 16-bit draw per probability (four per 64-bit word of torch's
  global CPU generator, so seeding and checkpointed RNG state work as usual): a probability is
  dropped when its draw is below ``round(p * 65536)``, i.e. the drop rate is ``p`` rounded to a
  multiple of 1/65,536 (0.02 -> 0.020004);
- forward zeroes the dropped probabilities in place and keeps that matrix (in the input dtype)
  plus, for the dropped entries only (a fraction ``p``), their flat index and probability;
  backward uses ``dS = P * (dP - rowsum(dO * O))``, the identity flash attention uses, with
  ``dP - rowsum`` from one matmul of ``[dO, rowsum]`` by ``[V, -1]`` and ``P`` at the dropped
  entries written back sparsely, so no extra ``[L, L]`` pass rebuilds a dropped matrix.

Memory is below that of the math path (one [L, L] matrix per layer, no bool mask); time
~1.3x-1.6x less at L = 2,048 on 2 shared cores (``benchmarks/bench_train.py`` measures the
whole step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_BITS = 16
_SPAN = 1 << _BITS
CHUNK_ELEMENTS = 1 << 26
"""Score elements per chunk (64M: 256 MiB per fp32 temporary), which bounds the transient memory
of long sequences. Cache-sized chunks (1-4M scores) measured slower on 2 shared cores: per-op
overhead and thread synchronisation outweigh the cache reuse; one chunk per cell was fastest."""


def drop_threshold(p: float) -> int:
    """Signed 16-bit threshold: a draw below it drops the probability (rate ``p`` quantised)."""
    return -(_SPAN // 2) + round(p * _SPAN)


def draw_drop_mask(shape: tuple[int, ...], p: float) -> torch.Tensor:
    """bool ``shape``: True where a probability is dropped, rate ``p`` (global CPU RNG)."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    return (words.view(torch.int16)[:n] < drop_threshold(p)).view(shape)


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


def _chunks(b: int, h: int, length: int, keys: int) -> list[tuple[int, int, int, int, int]]:
    """(batch, first head, end head, first row, end row) blocks of ~``CHUNK_ELEMENTS`` scores.

    Short sequences group heads of one cell; long ones split one head's query rows.
    """
    per_head = length * keys
    if per_head <= CHUNK_ELEMENTS:
        step = max(1, CHUNK_ELEMENTS // per_head)
        return [(i, j, min(j + step, h), 0, length) for i in range(b) for j in range(0, h, step)]
    rows = max(64, CHUNK_ELEMENTS // keys)
    return [(i, j, j + 1, r, min(r + rows, length))
            for i in range(b) for j in range(h) for r in range(0, length, rows)]


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


def _bias_block(bias: torch.Tensor, i: int, j0: int, j1: int, r0: int, r1: int) -> torch.Tensor:
    heads = slice(None) if bias.shape[1] == 1 else slice(j0, j1)
    rows = slice(None) if bias.shape[2] == 1 else slice(r0, r1)
    return bias[i, heads, rows]


class _DropoutAttention(torch.autograd.Function):
    """Saves the kept probabilities ``P * keep`` (dropped entries zeroed in place) and, for the
    few dropped entries (rate ``p``), their flat index and probability: backward needs ``P``
    there for the softmax term, and nowhere else, so neither the full ``P`` nor the bool mask
    is kept and no ``[L, L]`` pass rebuilds the dropped matrix."""

    @staticmethod
    def forward(ctx, q, k, v, mask, p, drop):  # noqa: ANN001, ANN205 - autograd signature
        b, h, length, dh = q.shape
        keys = k.shape[2]
        scale = 1.0 / math.sqrt(dh)
        bias = mask_bias(mask, q.dtype)
        if drop is None:
            drop = draw_drop_mask((b, h, length, keys), p)
        keep_scale = 1.0 / (1.0 - p)
        qs = q * scale
        k, v = k.contiguous(), v.contiguous()  # small; strided head views would be copied per chunk
        kept = torch.empty((b, h, length, keys), dtype=q.dtype, device=q.device)
        out = torch.empty((b, h, length, dh), dtype=q.dtype, device=q.device)
        exact = q.dtype in (torch.float32, torch.float64)
        where, dropped = [], []
        for i, j0, j1, r0, r1 in _chunks(b, h, length, keys):
            s = torch.matmul(qs[i, j0:j1, r0:r1], k[i, j0:j1].transpose(-1, -2))  # [C, R, Lk]
            if bias is not None:
                s.add_(_bias_block(bias, i, j0, j1, r0, r1))
            pr = kept[i, j0:j1, r0:r1]  # contiguous: one head's rows, or whole heads
            if exact:
                torch.softmax(s, dim=-1, out=pr)
            else:  # bf16/fp16: normalise in fp32
                pr.copy_(torch.softmax(s.float(), dim=-1))
            flat = pr.view(-1)
            idx = drop[i, j0:j1, r0:r1].reshape(-1).nonzero().squeeze(1)
            dropped.append(flat.index_select(0, idx))
            where.append(idx)
            flat.index_fill_(0, idx, 0.0)
            torch.matmul(pr, v[i, j0:j1], out=out[i, j0:j1, r0:r1])
        out.mul_(keep_scale)
        ctx.save_for_backward(qs, k, v, kept, out, *where, *dropped)
        ctx.scale, ctx.keep_scale = scale, keep_scale
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205 - autograd signature
        qs, k, v, kept, out, *rest = ctx.saved_tensors
        where, dropped = rest[: len(rest) // 2], rest[len(rest) // 2:]
        scale, keep_scale = ctx.scale, ctx.keep_scale
        b, h, length, _ = qs.shape
        keys = k.shape[2]
        go = (grad_out * keep_scale).contiguous()  # the dropout rescaling, folded into dO
        # rowsum(dP * P) = rowsum(dO * O): the softmax-backward term without an [L, L] pass.
        acc = torch.promote_types(qs.dtype, torch.float32)
        delta = (go.to(acc) * out.to(acc)).sum(dim=-1, keepdim=True).div_(keep_scale)
        delta = delta.to(qs.dtype)
        # [dO, delta] @ [V, -1]^T = dP - delta in the matmul itself: no extra [L, L] pass.
        g_aug = torch.cat([go, delta], dim=-1)
        v_aug = torch.cat([v, v.new_full((*v.shape[:-1], 1), -1.0)], dim=-1)
        dq = torch.empty_like(qs)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        ds = None
        blocks = zip(where, dropped, _chunks(b, h, length, keys), strict=True)
        for idx, pd, (i, j0, j1, r0, r1) in blocks:
            pr, g, dl = kept[i, j0:j1, r0:r1], go[i, j0:j1, r0:r1], delta[i, j0:j1, r0:r1]
            whole = r0 == 0 and r1 == length  # the block holds every query row: no accumulation
            if whole:  # dV^T = dO^T P reads P row-major (faster than P^T dO)
                dv[i, j0:j1].copy_(torch.matmul(g.transpose(-1, -2), pr).transpose(-1, -2))
            else:
                dv[i, j0:j1].baddbmm_(pr.transpose(-1, -2), g)
            if ds is None or ds.shape != pr.shape:
                ds = torch.empty_like(pr)
            # dS = P * (dP - delta): kept entries from the kept matrix, dropped ones (dP = 0)
            # are -P * delta from the saved probabilities.
            torch.matmul(g_aug[i, j0:j1, r0:r1], v_aug[i, j0:j1].transpose(-1, -2), out=ds)
            ds.mul_(pr)
            ds.view(-1).index_put_((idx,), pd * dl.reshape(-1)[idx // keys].neg())
            torch.matmul(ds, k[i, j0:j1], out=dq[i, j0:j1, r0:r1])
            if whole:
                torch.matmul(ds.transpose(-1, -2), qs[i, j0:j1], out=dk[i, j0:j1])
            else:
                dk[i, j0:j1].baddbmm_(ds.transpose(-1, -2), qs[i, j0:j1, r0:r1])
        # qs already carries dK's 1/sqrt(Dh); dQ gets it here.
        return dq.mul_(scale), dk, dv, None, None, None
