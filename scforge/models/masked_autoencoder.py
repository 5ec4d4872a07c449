"""Asymmetric masked autoencoder (scFoundation / MAE style).

The encoder runs over *visible* tokens only: positions the collator hid (``labels`` not
``IGNORE_INDEX``, or ``value_mask``) and pads are dropped, and each row is repacked to the left
into a tensor as long as the longest visible row. At a 30-50% mask ratio on padded cells that
shrinks the expensive part of the model by the same factor (attention: its square). A light
decoder (``decoder_layers`` at ``decoder_hidden_size``) then runs over every position: encoder
outputs are scattered back to where they came from and hidden positions carry their input
embedding (the gene where it is known, ``<mask>`` where it is not, plus the learned masked-value
vector), so the decoder knows *which* gene's value to reconstruct.

Objectives: masked values (bin CE or MSE, as in the encoder family) and masked gene ids (for
rank-value tokens, which carry no values). ``ModelOutput.logits`` holds gene logits at masked
positions only ([N_masked, vocab]), or value predictions when there is no gene objective.

Shape legend: B = batch, L = padded length, Lv = longest visible row, D / Dd = encoder / decoder
width.
"""

from __future__ import annotations

import torch
from torch import nn

from scforge.contracts import IGNORE_INDEX, Batch, ModelOutput
from scforge.models.base import MODELS, Objectives, SingleCellModel, check_batch, value_targets
from scforge.models.config import ModelConfig
from scforge.models.heads import GeneHead, ValueHead, classification_loss
from scforge.models.layers import GeneExpressionEmbedding, TransformerStack, init_weights, pool


def hidden_positions(batch: Batch, *, use_values: bool) -> torch.Tensor:
    """bool [B, L]: real tokens the collator hid, which the encoder skips.

    Args:
        batch: the masked batch.
        use_values: count ``value_mask`` too. False for ``value_mode="none"``, where a hidden
            value is nothing the model reconstructs, so its token stays visible.
    """
    hidden = torch.zeros_like(batch.attention_mask)
    if batch.labels is not None:
        hidden |= batch.labels != IGNORE_INDEX
    if use_values and batch.value_mask is not None:
        hidden |= batch.value_mask
    return hidden & batch.attention_mask


def pack_visible(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-packs each row's visible positions, keeping their order.

    Args:
        visible: bool [B, L].

    Returns:
        (index long [B, Lv]: source position of each packed slot; mask bool [B, Lv]: slot holds
        a visible token). Slots past a row's count point at its non-visible positions.
    """
    counts = visible.sum(dim=1)
    width = max(int(counts.max()), 1) if visible.numel() else 1  # one sync: the packed length
    # A stable sort on "is hidden" moves visible positions first without reordering them.
    order = torch.sort((~visible).to(torch.int8), dim=1, stable=True).indices
    index = order[:, :width]
    slots = torch.arange(width, device=visible.device)
    return index, slots[None, :] < counts[:, None]


@MODELS.register("masked_autoencoder")
class MaskedAutoencoderModel(SingleCellModel):
    """Encoder over visible tokens, light decoder over all tokens, reconstruction losses."""

    family = "masked_autoencoder"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cfg = self.config
        d, dd = cfg.hidden_size, cfg.decoder_width
        self.embed = GeneExpressionEmbedding(cfg)
        self.encoder = TransformerStack(
            layers=cfg.num_layers,
            d=d,
            heads=cfg.num_heads,
            ffn=cfg.intermediate_size,
            dropout=cfg.dropout,
            eps=cfg.layer_norm_eps,
            gradient_checkpointing=cfg.gradient_checkpointing,
            norm_placement=cfg.norm_placement,
            act=cfg.activation,
        )
        self.enc_to_dec = nn.Linear(d, dd)
        self.decoder = TransformerStack(
            layers=cfg.decoder_layers,
            d=dd,
            heads=cfg.decoder_heads,
            ffn=cfg.decoder_intermediate_size,
            dropout=cfg.dropout,
            eps=cfg.layer_norm_eps,
            gradient_checkpointing=cfg.gradient_checkpointing,
            norm_placement=cfg.norm_placement,
            act=cfg.activation,
        )
        self.gene_head = GeneHead(dd, cfg.vocab_size, cfg.layer_norm_eps, act=cfg.activation)
        self.value_head = (
            ValueHead(dd, cfg.value_mode, cfg.n_bins) if cfg.value_mode != "none" else None
        )
        init_weights(self, std=cfg.init_std, num_layers=cfg.num_layers + cfg.decoder_layers)
        if cfg.tie_embeddings and dd == d:
            self.gene_head.tie(self.embed.gene.weight)

    def _encode(
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (encoded [B, Lv, D], packed mask, index [B, Lv], visible [B, L], embedded)."""
        check_batch(batch, self.config)
        emb = self.embed(batch.input_ids, batch.attention_mask, batch.values, batch.value_mask)
        use_values = self.config.value_mode != "none"
        visible = batch.attention_mask & ~hidden_positions(batch, use_values=use_values)
        index, packed_mask = pack_visible(visible)
        packed = emb.gather(1, index.unsqueeze(-1).expand(-1, -1, emb.shape[-1]))
        return self.encoder(packed, packed_mask), packed_mask, index, visible, emb

    def encode_tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states of the visible tokens, packed: [B, Lv, D] and their mask [B, Lv].

        Packed slot 0 is the first visible token: ``<cls>`` for ``pooling="cls"`` as long as the
        collator never masks it.
        """
        encoded, packed_mask, _, _, _ = self._encode(batch)
        return encoded, packed_mask

    def forward(self, batch: Batch) -> ModelOutput:
        """Reconstruction loss at hidden positions; see the module docstring."""
        cfg = self.config
        encoded, packed_mask, index, visible, emb = self._encode(batch)
        # Scatter encoder outputs back; slots past a row's count land on non-visible positions
        # and are overwritten by the input embedding there, so no garbage reaches the decoder.
        back = torch.zeros_like(emb).scatter(
            1, index.unsqueeze(-1).expand(-1, -1, emb.shape[-1]), encoded.to(emb.dtype)
        )
        full = torch.where(visible.unsqueeze(-1), back, emb)
        decoded = self.decoder(self.enc_to_dec(full), batch.attention_mask)
        objectives = Objectives()
        logits: torch.Tensor | None = None
        if batch.labels is not None and cfg.mlm_weight > 0:
            masked = (batch.labels != IGNORE_INDEX) & batch.attention_mask
            logits = self.gene_head(decoded[masked])  # gather first: [N_masked, vocab]
            loss, acc = classification_loss(logits, batch.labels[masked])
            objectives.add("mlm", cfg.mlm_weight, loss, acc=acc)
        if self.value_head is not None and batch.value_mask is not None and cfg.value_weight > 0:
            hidden_values = batch.value_mask & batch.attention_mask
            loss, extra, pred = self.value_head.loss(
                decoded[hidden_values], value_targets(batch, hidden_values)
            )
            objectives.add("value", cfg.value_weight, loss, **extra)
            logits = pred if logits is None else logits
        pooled = pool(encoded, packed_mask, cfg.pooling)
        self.add_contrastive(batch, pooled, objectives)
        return objectives.output(
            logits=logits,
            embeddings=pooled.detach(),
            hint="masked_autoencoder reconstructs hidden tokens; the batch has no labels and no "
            "value_mask: enable masking in the data config",
        )
