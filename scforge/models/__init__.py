"""Model families for single-cell foundation models, behind one small registry.

Every model takes a :class:`~scforge.contracts.Batch` and returns a
:class:`~scforge.contracts.ModelOutput` (``forward``), or cell embeddings [B, D] (``encode``), so
one trainer serves them all. Families register themselves on import; the imports below are the
whole registration mechanism.

Example:
    >>> cfg = ModelConfig(family="transformer_encoder", preset="debug", vocab_size=20_275)
    >>> model = get_model(cfg)
    >>> out = model(batch)  # out.loss, out.metrics["mlm_loss"], ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

# Family modules register on import; keep these explicit (no scanning).
from scforge.models import (  # noqa: F401
    autoregressive,
    masked_autoencoder,
    scgpt,
    transformer_encoder,
)
from scforge.models.base import MODELS, SingleCellModel
from scforge.models.config import (
    PRESETS,
    ModelConfig,
    estimate_flops_per_token,
    non_embedding_params,
    resolve_preset,
)

__all__ = [
    "MODELS",
    "PRESETS",
    "ModelConfig",
    "SingleCellModel",
    "count_parameters",
    "estimate_flops_per_token",
    "get_model",
    "list_models",
    "non_embedding_params",
    "resolve_preset",
]


def list_models() -> list[str]:
    """Registered family names, sorted."""
    return MODELS.names()


def _as_config(config: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, Mapping):
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(known)}")
        return ModelConfig(**config)
    raise TypeError(f"expected a ModelConfig or a mapping, got {type(config).__name__}")


def get_model(
    name_or_cfg: str | ModelConfig | Mapping[str, Any],
    config: ModelConfig | Mapping[str, Any] | None = None,
) -> SingleCellModel:
    """Builds a model from a config (presets resolved, every field validated).

    Args:
        name_or_cfg: a family name (then ``config`` supplies the rest and its ``family`` is
            replaced by the name), or the config itself.
        config: the config when ``name_or_cfg`` is a name; defaults to ``ModelConfig()``.

    Returns:
        The model, on the current default device (build under ``torch.device("meta")`` to size a
        large preset without allocating it).

    Raises:
        ValueError: unknown family or an invalid config; the message names the key.
    """
    if isinstance(name_or_cfg, str):
        cfg = _as_config(config if config is not None else ModelConfig())
        cfg = dataclasses.replace(cfg, family=name_or_cfg)
    else:
        if config is not None:
            raise ValueError("pass the config once: get_model(cfg) or get_model(name, cfg)")
        cfg = _as_config(name_or_cfg)
    if cfg.family not in MODELS:
        raise ValueError(
            f"model.family={cfg.family!r} is not registered; use one of {list_models()}"
        )
    return MODELS.get(cfg.family)(cfg)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Distinct parameters (tied weights counted once); works on meta-device models."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
