"""BERT-style masked-token encoder (the Geneformer architecture), with optional value objectives.

Objectives, each on when the batch carries its labels and its weight is > 0:

- masked genes: predict ``labels`` where they are not ``IGNORE_INDEX`` (Geneformer's MLM);
- masked values: at ``value_mask`` positions, classify the bin (``binned``, scGPT-style) or
  regress the value (``continuous``);
- contrastive: NT-Xent between this pass and a token-dropped view (``contrastive_weight``).

``ModelOutput.logits`` holds gene logits at the masked positions only, [N_masked, vocab] (value
predictions when there is no gene objective); ``embeddings`` the pooled cells, [B, D], detached.
"""

from __future__ import annotations

import torch

from scforge.contracts import IGNORE_INDEX, Batch, ModelOutput
from scforge.models.base import MODELS, Objectives, SingleCellModel, check_batch, value_targets
from scforge.models.config import ModelConfig
from scforge.models.heads import GeneHead, ValueHead, classification_loss
from scforge.models.layers import GeneExpressionEmbedding, TransformerStack, init_weights, pool


@MODELS.register("transformer_encoder")
class TransformerEncoderModel(SingleCellModel):
    """Bidirectional encoder trained by masked-token (and masked-value) prediction."""

    family = "transformer_encoder"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cfg = self.config
        self.embed = GeneExpressionEmbedding(cfg)
        self.encoder = TransformerStack(
            layers=cfg.num_layers,
            d=cfg.hidden_size,
            heads=cfg.num_heads,
            ffn=cfg.intermediate_size,
            dropout=cfg.dropout,
            eps=cfg.layer_norm_eps,
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
        """Token states [B, L, D] over every position, and ``attention_mask``."""
        check_batch(batch, self.config)
        x = self.embed(batch.input_ids, batch.attention_mask, batch.values, batch.value_mask)
        return self.encoder(x, batch.attention_mask), batch.attention_mask

    def forward(self, batch: Batch) -> ModelOutput:
        """Loss over the objectives the batch supports; see the module docstring."""
        cfg = self.config
        hidden, keys = self.encode_tokens(batch)
        objectives = Objectives()
        logits: torch.Tensor | None = None
        if batch.labels is not None and cfg.mlm_weight > 0:
            masked = (batch.labels != IGNORE_INDEX) & keys
            logits = self.gene_head(hidden[masked])  # gather first: [N_masked, vocab]
            loss, acc = classification_loss(logits, batch.labels[masked])
            objectives.add("mlm", cfg.mlm_weight, loss, acc=acc)
        if self.value_head is not None and batch.value_mask is not None and cfg.value_weight > 0:
            hidden_values = batch.value_mask & keys
            loss, extra, pred = self.value_head.loss(
                hidden[hidden_values], value_targets(batch, hidden_values)
            )
            objectives.add("value", cfg.value_weight, loss, **extra)
            logits = pred if logits is None else logits
        pooled = pool(hidden, keys, cfg.pooling)
        self.add_contrastive(batch, pooled, objectives)
        return objectives.output(
            logits=logits,
            embeddings=pooled.detach(),
            hint="transformer_encoder trains on masked tokens; the batch has no labels (and no "
            "value_mask): enable masking in the data config",
        )
