"""Building blocks shared by every model family: embedding, attention, transformer stack, pooling.

Shape legend: B = batch, L = sequence length, D = width, H = heads, Dh = D / H.

Attention goes through :func:`scforge.models.attention.attention`: SDPA (PyTorch picks the
fastest kernel the mask allows: flash / memory-efficient on GPU, flash on CPU), except CPU
training with attention dropout, which SDPA could only run on its slow math path. Masks are
boolean with True meaning "may attend", built once per forward by :func:`attention_mask` rather
than per block, and left out (None) when every row is full.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from scforge.models.attention import attention
from scforge.models.config import ModelConfig


class GeneExpressionEmbedding(nn.Module):
    """Gene-token embedding plus value embedding, position embedding, LayerNorm and dropout.

    The value part depends on ``value_mode``: a table of ``n_bins + 1`` bin embeddings
    (binned), a ``Linear -> GELU -> Linear`` on the scalar (continuous), or nothing (rank-value
    tokens, whose order already is the expression signal). Where ``value_mask`` is True the value
    was hidden by the masking collator: a learned "masked value" vector replaces it so the model
    never reads the placeholder stored there.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.value_mode = cfg.value_mode
        self.max_len = cfg.max_len
        self.gene = nn.Embedding(cfg.vocab_size, d)
        self.value_encoder: nn.Module | None = None
        self.mask_value: nn.Parameter | None = None
        if cfg.value_mode == "binned":
            self.value_encoder = nn.Embedding(cfg.n_bins + 1, d)
        elif cfg.value_mode == "continuous":
            self.value_encoder = nn.Sequential(nn.Linear(1, d), nn.GELU(), nn.Linear(d, d))
        if self.value_encoder is not None:
            self.mask_value = nn.Parameter(torch.zeros(d))
        self.position = nn.Embedding(cfg.max_len, d) if cfg.position_embedding else None
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.embedding_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        values: torch.Tensor | None = None,
        value_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embeds tokens.

        Args:
            input_ids: long [B, L].
            attention_mask: bool [B, L], True on real tokens.
            values: float [B, L]; required unless ``value_mode="none"``.
            value_mask: bool [B, L] or None; True where the value is hidden.

        Returns:
            float [B, L, D].
        """
        length = input_ids.shape[1]
        if length > self.max_len:
            raise ValueError(
                f"sequence length {length} exceeds model.max_len={self.max_len}; raise "
                "model.max_len or truncate cells in the tokenizer"
            )
        x = self.gene(input_ids)
        if self.value_encoder is not None and self.mask_value is not None:
            if values is None:
                raise ValueError(
                    f"model.value_mode={self.value_mode!r} needs batch.values; use a valued "
                    "tokenizer or set model.value_mode='none'"
                )
            unread = ~attention_mask if value_mask is None else value_mask | ~attention_mask
            v = values.masked_fill(unread, 0)
            if self.value_mode == "binned":
                ve = self.value_encoder(v.long())
            else:  # continuous: run the MLP in the parameters' dtype (bf16 under DeepSpeed)
                ve = self.value_encoder(v.unsqueeze(-1).to(self.mask_value.dtype))
            if value_mask is not None:
                ve = torch.where(value_mask.unsqueeze(-1), self.mask_value.to(ve.dtype), ve)
            x = x + ve
        if self.position is not None:
            x = x + self.position(torch.arange(length, device=input_ids.device))
        return self.drop(self.norm(x))


def attention_mask(key_mask: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """Boolean SDPA mask (True = may attend) from a key padding mask.

    Non-causal: the key mask broadcast to [B, 1, 1, L]. Causal: its AND with the lower triangle,
    [B, 1, L, L]. A query row with no allowed key would softmax over all ``-inf`` and give NaN
    (which then poisons gradients even though the row is ignored), so every query may always
    attend to itself in the causal case, and a row with no real token at all attends to
    everything in the non-causal case. Neither changes the output at real positions.

    Args:
        key_mask: bool [B, L], True on real tokens.
        causal: also forbid attending to later positions.

    Returns:
        bool [B, 1, 1, L] or [B, 1, L, L].
    """
    if key_mask.dtype != torch.bool:
        raise ValueError(f"attention mask has dtype {key_mask.dtype}; pass a bool tensor")
    if not causal:
        key_mask = key_mask | ~key_mask.any(dim=-1, keepdim=True)
        return key_mask[:, None, None, :]
    length = key_mask.shape[-1]
    ones = torch.ones(length, length, dtype=torch.bool, device=key_mask.device)
    mask = key_mask[:, None, None, :] & ones.tril()
    return mask | torch.eye(length, dtype=torch.bool, device=key_mask.device)


class ResidualLinear(nn.Linear):
    """A projection that writes into the residual stream; :func:`init_weights` scales it down."""


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out = ResidualLinear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, length, d = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, L, Dh]
        o = attention(q, k, v, mask, dropout_p=self.dropout, training=self.training)
        return self.out(o.transpose(1, 2).reshape(b, length, d))


def activation(name: str) -> nn.Module:
    """The feed-forward activation module for ``ModelConfig.activation`` (no parameters, so the
    MLP's state-dict names do not depend on it)."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_new":  # Hugging Face's name for the tanh approximation
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"model.activation={name!r} is not one of ['gelu', 'gelu_new', 'relu']")


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))`` (stable without warmup tricks).

    ``post_norm=True`` gives the BERT / Geneformer / scGPT block instead: ``ln1(x + attn(x))``
    then ``ln2(x + mlp(x))``, with the same parameters under the same names.
    """

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, eps: float, *,
                 post_norm: bool = False, act: str = "gelu") -> None:
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.attn = SelfAttention(d, heads, dropout)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(d, ffn), activation(act), ResidualLinear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.post_norm:
            x = self.norm1(x + self.drop(self.attn(x, mask)))
            return self.norm2(x + self.drop(self.mlp(x)))
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class TransformerStack(nn.Module):
    """Blocks plus the final LayerNorm that pre-LN needs, with optional activation checkpointing.

    ``norm_placement="post"`` builds post-LN blocks, whose output is already normalised: the
    final norm is then the identity (no parameters), as in BERT.
    """

    def __init__(
        self,
        *,
        layers: int,
        d: int,
        heads: int,
        ffn: int,
        dropout: float,
        eps: float,
        causal: bool = False,
        gradient_checkpointing: bool = False,
        norm_placement: str = "pre",
        act: str = "gelu",
    ) -> None:
        super().__init__()
        if norm_placement not in ("pre", "post"):
            raise ValueError(f"model.norm_placement={norm_placement!r} is not one of "
                             "['pre', 'post']")
        post = norm_placement == "post"
        self.causal = causal
        self.gradient_checkpointing = gradient_checkpointing
        self.blocks = nn.ModuleList(
            TransformerBlock(d, heads, ffn, dropout, eps, post_norm=post, act=act)
            for _ in range(layers)
        )
        self.norm = nn.Identity() if post else nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """Runs the stack over ``x`` [B, L, D] with ``key_mask`` bool [B, L]."""
        # Full rows need no mask at all (one host sync): fused kernels skip the mask read.
        full = not self.causal and bool(key_mask.all())
        mask = None if full else attention_mask(key_mask, causal=self.causal)
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, mask, use_reentrant=False) if ckpt else block(x, mask)
        return self.norm(x)


def pool(hidden: torch.Tensor, key_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Cell embedding [B, D] from token states [B, L, D].

    ``"cls"`` takes position 0 (the ``<cls>`` token when the tokenizer adds one, else the
    top-ranked gene); ``"mean"`` averages real tokens only, so pad content never leaks in.
    """
    if mode == "cls":
        return hidden[:, 0]
    if mode != "mean":
        raise ValueError(f"model.pooling={mode!r} is not one of ['cls', 'mean']")
    keep = key_mask.unsqueeze(-1)
    total = hidden.masked_fill(~keep, 0).float().sum(dim=1)  # sum in fp32: bf16 loses ranks
    return (total / keep.sum(dim=1).clamp_min(1)).to(hidden.dtype)


def init_weights(module: nn.Module, *, std: float, num_layers: int) -> None:
    """BERT/GPT-2 init: N(0, std) weights, zero biases, unit norms; residual outputs scaled.

    Scaling residual output projections by ``1 / sqrt(2 * num_layers)`` keeps the residual
    stream's variance roughly depth-independent in pre-LN stacks.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            scale = 1.0 / math.sqrt(2 * num_layers) if isinstance(m, ResidualLinear) else 1.0
            nn.init.normal_(m.weight, 0.0, std * scale)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in module.named_parameters():
        if name.endswith("mask_value"):
            nn.init.normal_(p, 0.0, std)
