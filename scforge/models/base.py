"""The model registry and what every family shares: config handling, batch checks, pooling,
the optional contrastive term, and turning objective terms into a ``ModelOutput``.

A family subclasses :class:`SingleCellModel`, implements ``encode_tokens`` and ``forward``, and
registers itself with ``@MODELS.register(name)``; ``scforge/models/__init__.py`` imports each
family module so the registry is filled by explicit imports only.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from scforge.contracts import Batch, ModelOutput
from scforge.models.config import ModelConfig, resolve_preset
from scforge.models.contrastive import ContrastiveHead, token_dropout
from scforge.models.layers import pool
from scforge.registry import Registry

MODELS: Registry[type[SingleCellModel]] = Registry("model")


def check_batch(batch: Batch, cfg: ModelConfig) -> None:
    """Cheap shape/dtype checks (no device sync) with errors naming the field and the fix."""
    ids = batch.input_ids
    if ids.dim() != 2:
        raise ValueError(f"batch.input_ids has shape {tuple(ids.shape)}; expected [B, L]")
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"batch.input_ids has dtype {ids.dtype}; expected torch.int32 or "
                         "torch.long")
    if batch.attention_mask.dtype != torch.bool:
        raise ValueError(
            f"batch.attention_mask has dtype {batch.attention_mask.dtype}; expected torch.bool "
            "(True on real tokens)"
        )
    for name in ("attention_mask", "values", "labels", "value_labels", "value_mask"):
        t = getattr(batch, name)
        if t is not None and t.shape != ids.shape:
            raise ValueError(
                f"batch.{name} has shape {tuple(t.shape)} but batch.input_ids has "
                f"{tuple(ids.shape)}; every per-token field must be [B, L]"
            )
    if batch.value_mask is not None and batch.value_mask.dtype != torch.bool:
        raise ValueError(f"batch.value_mask has dtype {batch.value_mask.dtype}; expected bool")
    if cfg.value_mode != "none" and batch.values is None:
        raise ValueError(
            f"model.value_mode={cfg.value_mode!r} needs batch.values; use a valued tokenizer "
            "or set model.value_mode='none'"
        )


class Objectives:
    """Collects weighted loss terms and detached metrics, then builds the ``ModelOutput``."""

    def __init__(self) -> None:
        self.terms: list[torch.Tensor] = []
        self.metrics: dict[str, torch.Tensor] = {}

    def add(self, name: str, weight: float, loss: torch.Tensor, **extra: torch.Tensor) -> None:
        """Adds ``weight * loss`` to the total and logs ``{name}_loss`` and ``{name}_{key}``."""
        self.terms.append(loss * weight)
        self.metrics[f"{name}_loss"] = loss.detach()
        for key, value in extra.items():
            self.metrics[f"{name}_{key}"] = value.detach()

    def output(
        self, *, logits: torch.Tensor | None, embeddings: torch.Tensor | None, hint: str
    ) -> ModelOutput:
        """Sums the terms; metrics become floats with a single device sync."""
        if not self.terms:
            raise ValueError(f"no objective applies to this batch: {hint}")
        loss = torch.stack(self.terms).sum()
        names = list(self.metrics)
        vals = torch.stack([self.metrics[k].float().reshape(()) for k in names]).tolist()
        return ModelOutput(
            loss=loss,
            metrics=dict(zip(names, vals, strict=True)),
            logits=logits,
            embeddings=embeddings,
        )


class SingleCellModel(nn.Module):
    """Base of every family: ``forward(batch) -> ModelOutput`` and ``encode(batch) -> [B, D]``.

    Attributes:
        config: the resolved, validated config the model was built from.
        generator: optional RNG for the contrastive view; None uses torch's global RNG.
    """

    family: ClassVar[str] = ""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        cfg = resolve_preset(config)
        if cfg.family != self.family:  # building a class directly names its family
            cfg = dataclasses.replace(cfg, family=self.family)
        cfg.validate(require_vocab=True)
        self.config = cfg
        self.generator: torch.Generator | None = None
        self.contrastive: ContrastiveHead | None = None
        if cfg.contrastive_weight > 0:
            self.contrastive = ContrastiveHead(cfg.hidden_size, cfg.contrastive_temperature)

    def encode_tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token states [B, L', D] and their key mask [B, L'] (L' <= L for packed encoders)."""
        raise NotImplementedError

    def encode(self, batch: Batch) -> torch.Tensor:
        """Cell embeddings [B, D], pooled per ``config.pooling``."""
        hidden, keys = self.encode_tokens(batch)
        return pool(hidden, keys, self.config.pooling)

    def forward(self, batch: Batch) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def add_contrastive(self, batch: Batch, pooled: torch.Tensor, objectives: Objectives) -> None:
        """Adds NT-Xent between ``pooled`` (this pass) and a token-dropped view, if enabled."""
        if self.contrastive is None:
            return
        view = token_dropout(batch, self.config.contrastive_drop_prob, generator=self.generator)
        loss, acc = self.contrastive(pooled, self.encode(view))
        objectives.add("contrastive", self.config.contrastive_weight, loss, acc=acc)


def value_targets(batch: Batch, select: torch.Tensor) -> torch.Tensor:
    """``batch.value_labels`` at ``select``, with a clear error when the collator left it out."""
    if batch.value_labels is None:
        raise ValueError(
            "batch.value_mask is set but batch.value_labels is None; the masking collator must "
            "emit the original values it hid"
        )
    return batch.value_labels[select]
