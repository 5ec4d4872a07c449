"""Causal transformer over the ranked gene sequence (scGPT-generative / GPT style).

Position t predicts the gene at t + 1 from genes (and values) at <= t; with a valued tokenizer
it also predicts the value at t + 1, conditioned on that next gene's embedding (teacher forcing:
the value of a gene depends on which gene it is, and in rank order the next gene is what the
gene objective already predicts). Targets come from the sequence itself, so masking from an MLM
collator is undone first: ``labels`` and ``value_labels`` are written back where they were hidden.

``ModelOutput.logits`` holds next-gene logits at valid target positions only, [N, vocab], where N
counts pairs (t, t + 1) with both tokens real.
"""

from __future__ import annotations

import torch

from scforge.contracts import IGNORE_INDEX, Batch, ModelOutput
from scforge.models.base import MODELS, Objectives, SingleCellModel, check_batch
from scforge.models.config import ModelConfig
from scforge.models.heads import GeneHead, ValueHead, classification_loss
from scforge.models.layers import GeneExpressionEmbedding, TransformerStack, init_weights, pool


def unmasked_inputs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The true gene ids and values, with anything a masking collator hid written back."""
    ids = batch.input_ids
    if batch.labels is not None:
        ids = torch.where(batch.labels != IGNORE_INDEX, batch.labels, ids)
    values = batch.values
    if values is not None and batch.value_mask is not None and batch.value_labels is not None:
        values = torch.where(batch.value_mask, batch.value_labels.to(values.dtype), values)
    return ids, values


@MODELS.register("autoregressive")
class AutoregressiveModel(SingleCellModel):
    """Decoder-only transformer trained by next-gene (and next-value) prediction."""

    family = "autoregressive"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cfg = self.config
        self.embed = GeneExpressionEmbedding(cfg)
        self.decoder = TransformerStack(
            layers=cfg.num_layers,
            d=cfg.hidden_size,
            heads=cfg.num_heads,
            ffn=cfg.intermediate_size,
            dropout=cfg.dropout,
            eps=cfg.layer_norm_eps,
            causal=True,
            gradient_checkpointing=cfg.gradient_checkpointing,
            norm_placement=cfg.norm_placement,
            act=cfg.activation,
        )
        self.gene_head = GeneHead(cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_eps,
                                  act=cfg.activation)
        self.value_head = (
            ValueHead(cfg.hidden_size, cfg.value_mode, cfg.n_bins)
            if cfg.value_mode != "none"
            else None
        )
        init_weights(self, std=cfg.init_std, num_layers=cfg.num_layers)
        if cfg.tie_embeddings:
            self.gene_head.tie(self.embed.gene.weight)

    def encode_tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal token states [B, L, D] of the unmasked sequence, and ``attention_mask``."""
        check_batch(batch, self.config)
        ids, values = unmasked_inputs(batch)
        x = self.embed(ids, batch.attention_mask, values)
        return self.decoder(x, batch.attention_mask), batch.attention_mask

    def forward(self, batch: Batch) -> ModelOutput:
        """Next-gene (+ next-value) loss; see the module docstring."""
        cfg = self.config
        hidden, keys = self.encode_tokens(batch)
        ids, values = unmasked_inputs(batch)
        pairs = keys[:, :-1] & keys[:, 1:]  # [B, L-1]: source t and target t+1 both real
        source = hidden[:, :-1][pairs]  # gather first: [N, D]
        next_ids = ids[:, 1:][pairs]
        objectives = Objectives()
        logits: torch.Tensor | None = None
        if cfg.mlm_weight > 0:
            logits = self.gene_head(source)
            loss, acc = classification_loss(logits, next_ids)
            objectives.add("next_gene", cfg.mlm_weight, loss, acc=acc)
        if self.value_head is not None and values is not None and cfg.value_weight > 0:
            conditioned = source + self.embed.gene(next_ids).to(source.dtype)
            loss, extra, pred = self.value_head.loss(conditioned, values[:, 1:][pairs])
            objectives.add("next_value", cfg.value_weight, loss, **extra)
            logits = pred if logits is None else logits
        pooled = pool(hidden, keys, cfg.pooling)
        self.add_contrastive(batch, pooled, objectives)
        return objectives.output(
            logits=logits,
            embeddings=pooled.detach(),
            hint="autoregressive needs model.mlm_weight > 0 or a value objective",
        )
