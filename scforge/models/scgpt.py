"""The ``scgpt`` family: scGPT's ``TransformerModel`` (Cui et al. 2024) for pretraining and
embedding, so published scGPT checkpoints run (and fine-tune) in scforge unchanged.

Forward, as scGPT 0.2.4's ``TransformerModel._encode`` / ``forward`` compute it:

- gene encoder: ``LayerNorm(Embedding(genes))``;
- value encoder, by ``value_mode``: ``continuous`` = scGPT's ``ContinuousValueEncoder``
  (``clamp(v, max=512) -> Linear(1, d) -> ReLU -> Linear(d, d) -> LayerNorm -> dropout``),
  ``binned`` = its ``CategoryValueEncoder`` (``LayerNorm(Embedding(bins))``);
- their sum through a post-LN ReLU transformer (``norm_placement="post"``, ``activation="relu"``:
  ``nn.TransformerEncoderLayer``'s computation);
- expression decoder (``ExprDecoder``): ``Linear -> LeakyReLU -> Linear -> LeakyReLU -> Linear(1)``
  at every position, plus the zero-probability twin with ``explicit_zero_prob``;
- cell embedding: the ``<cls>`` position (scGPT ``cell_emb_style="cls"``) or the mean
  (``avg-pool``; scforge averages real tokens only, where scGPT averages every padded position);
- optional MVC decoder (``mvc_decoder``, scGPT's "inner product" style): predicts each gene's
  value from the cell embedding and the gene embedding, ``sigmoid(gene2query(g)) W . cell``.

Values at padded positions are ``pad_value`` and at ``value_mask`` positions ``mask_value``
(scGPT's ``-2`` and ``-1``), so the value encoder sees what scGPT's collator feeds it.
Objectives: masked-value MSE (``value``; scGPT's ``masked_mse_loss``), its Bernoulli zero term
with ``explicit_zero_prob``, and the MVC term (``mvc``) when that decoder exists. ``logits`` are
the predicted values at masked positions; ``embeddings`` the pooled cells.

Shape legend: B = batch, L = length, D = width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scforge.contracts import Batch, ModelOutput
from scforge.models.base import MODELS, Objectives, SingleCellModel, check_batch, value_targets
from scforge.models.config import ModelConfig
from scforge.models.layers import TransformerStack, pool

MAX_VALUE = 512.0
"""scGPT's ``ContinuousValueEncoder.max_value``: inputs are clamped above it."""


class ScGPTEmbedding(nn.Module):
    """Gene encoder + value encoder; returns their sum and the gene part (MVC reads it)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.cfg = cfg
        self.gene = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_token_id)
        self.gene_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.value_in: nn.Linear | None = None
        self.value_out: nn.Linear | None = None
        self.value_table: nn.Embedding | None = None
        if cfg.value_mode == "continuous":
            self.value_in, self.value_out = nn.Linear(1, d), nn.Linear(d, d)
        elif cfg.value_mode == "binned":
            rows = cfg.n_bins + 1
            for key in ("pad_value", "mask_value"):
                v = getattr(cfg, key)
                if not (v == int(v) and 0 <= v < rows):
                    raise ValueError(f"model.{key}={v} must be a bin index in [0, {rows}) for "
                                     "value_mode=binned (scGPT category style)")
            self.value_table = nn.Embedding(rows, d, padding_idx=int(cfg.pad_value))
        self.value_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(input to the transformer [B, L, D], gene embeddings [B, L, D])."""
        cfg = self.cfg
        if batch.input_ids.shape[1] > cfg.max_len:
            raise ValueError(f"sequence length {batch.input_ids.shape[1]} exceeds model.max_len="
                             f"{cfg.max_len}; raise model.max_len or truncate cells")
        genes = self.gene_norm(self.gene(batch.input_ids))
        if batch.values is None:
            raise ValueError(f"model.value_mode={cfg.value_mode!r} needs batch.values; use the "
                             "binned_expression tokenizer (scGPT's recipe)")
        v = batch.values.float().masked_fill(~batch.attention_mask, cfg.pad_value)
        if batch.value_mask is not None:
            v = v.masked_fill(batch.value_mask, cfg.mask_value)
        if self.value_table is not None:
            values = self.value_norm(self.value_table(v.long()))
        else:
            assert self.value_in is not None and self.value_out is not None
            x = v.clamp(max=MAX_VALUE).unsqueeze(-1).to(self.value_in.weight.dtype)
            values = self.drop(self.value_norm(self.value_out(F.relu(self.value_in(x)))))
        return genes + values, genes


def _mlp(d: int) -> nn.Sequential:
    """scGPT's ExprDecoder trunk: ``Linear -> LeakyReLU -> Linear -> LeakyReLU -> Linear(1)``."""
    return nn.Sequential(nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, d), nn.LeakyReLU(),
                         nn.Linear(d, 1))


class MVCHead(nn.Module):
    """scGPT's ``MVCDecoder`` ("inner product"): value of each gene from the cell embedding."""

    def __init__(self, d: int, *, zero_prob: bool) -> None:
        super().__init__()
        self.gene2query = nn.Linear(d, d)
        self.W = nn.Linear(d, d, bias=False)  # noqa: N815 - scGPT's parameter name
        self.W_zero_logit = nn.Linear(d, d) if zero_prob else None  # noqa: N815

    def forward(self, cell: torch.Tensor, genes: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(values [B, L], zero probabilities [B, L] or None) from cells [B, D], genes [B, L, D]."""
        query = torch.sigmoid(self.gene2query(genes))
        pred = torch.bmm(self.W(query), cell.unsqueeze(2)).squeeze(2)
        if self.W_zero_logit is None:
            return pred, None
        return pred, torch.sigmoid(torch.bmm(self.W_zero_logit(query), cell.unsqueeze(2))
                                   .squeeze(2))


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the gathered positions (scGPT's ``masked_mse_loss``), fp32."""
    if target.numel() == 0:
        return pred.float().sum() * 0.0
    return F.mse_loss(pred.float(), target.float())


def bernoulli_nll(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-mean log p(target > 0)`` under ``Bernoulli(prob)`` (scGPT's zero-probability loss)."""
    if target.numel() == 0:
        return prob.float().sum() * 0.0
    p = prob.float().clamp(1e-7, 1 - 1e-7)
    return F.binary_cross_entropy(p, (target > 0).float())


@MODELS.register("scgpt")
class ScGPTModel(SingleCellModel):
    """scGPT's ``TransformerModel`` (see the module docstring)."""

    family = "scgpt"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cfg = self.config
        if cfg.value_mode == "none":
            raise ValueError("model.value_mode='none': the scgpt family embeds and predicts "
                             "expression values; use value_mode=continuous (scGPT's default) or "
                             "binned, with binned_expression or continuous_projection shards")
        d = cfg.hidden_size
        self.embed = ScGPTEmbedding(cfg)
        self.encoder = TransformerStack(
            layers=cfg.num_layers, d=d, heads=cfg.num_heads, ffn=cfg.intermediate_size,
            dropout=cfg.dropout, eps=cfg.layer_norm_eps,
            gradient_checkpointing=cfg.gradient_checkpointing,
            norm_placement=cfg.norm_placement, act=cfg.activation,
        )
        self.expr_head = _mlp(d)
        self.zero_head = _mlp(d) if cfg.explicit_zero_prob else None
        self.mvc_head = MVCHead(d, zero_prob=cfg.explicit_zero_prob) if cfg.mvc_decoder else None
        self._init_like_scgpt()

    def _init_like_scgpt(self) -> None:
        """PyTorch's default layer init, and the whole gene table (padding row included)
        ~ U(-0.1, 0.1), as scGPT's ``init_weights`` does."""
        with torch.no_grad():
            self.embed.gene.weight.uniform_(-0.1, 0.1)

    def encode_tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformer output [B, L, D] at every position, and ``attention_mask``."""
        check_batch(batch, self.config)
        x, _ = self.embed(batch)
        return self.encoder(x, batch.attention_mask), batch.attention_mask

    def predict_values(self, batch: Batch) -> dict[str, torch.Tensor]:
        """scGPT's forward outputs: ``mlm_output`` [B, L], ``cell_emb`` [B, D], and
        ``mlm_zero_probs`` / ``mvc_output`` / ``mvc_zero_probs`` when those heads exist."""
        check_batch(batch, self.config)
        x, genes = self.embed(batch)
        hidden = self.encoder(x, batch.attention_mask)
        cell = pool(hidden, batch.attention_mask, self.config.pooling)
        out = {"mlm_output": self.expr_head(hidden).squeeze(-1), "cell_emb": cell,
               "hidden": hidden}
        if self.zero_head is not None:
            out["mlm_zero_probs"] = torch.sigmoid(self.zero_head(hidden).squeeze(-1))
        if self.mvc_head is not None:
            pred, zero = self.mvc_head(cell, genes)
            out["mvc_output"] = pred
            if zero is not None:
                out["mvc_zero_probs"] = zero
        return out

    def forward(self, batch: Batch) -> ModelOutput:
        """Masked-value losses (expression decoder, zero probability, MVC)."""
        cfg = self.config
        out = self.predict_values(batch)
        objectives = Objectives()
        logits = None
        if batch.value_mask is not None and cfg.value_weight > 0:
            sel = batch.value_mask & batch.attention_mask
            target = value_targets(batch, sel)
            logits = out["mlm_output"][sel]
            objectives.add("value", cfg.value_weight, masked_mse(logits, target))
            if "mlm_zero_probs" in out:
                objectives.add("zero", cfg.value_weight,
                               bernoulli_nll(out["mlm_zero_probs"][sel], target))
            if "mvc_output" in out:
                objectives.add("mvc", cfg.value_weight, masked_mse(out["mvc_output"][sel], target))
                if "mvc_zero_probs" in out:
                    objectives.add("mvc_zero", cfg.value_weight,
                                   bernoulli_nll(out["mvc_zero_probs"][sel], target))
        self.add_contrastive(batch, out["cell_emb"], objectives)
        return objectives.output(
            logits=logits, embeddings=out["cell_emb"].detach(),
            hint="the scgpt family trains on masked values: use a valued tokenizer "
            "(binned_expression) and value masking in the data config")
