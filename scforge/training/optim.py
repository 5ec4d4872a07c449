"""AdamW parameter groups and the learning-rate schedule (linear warmup, then decay).

The schedule is a pure function of the optimizer step, wrapped in ``LambdaLR``; DeepSpeed steps
the scheduler once per optimizer step and saves its ``last_epoch`` in checkpoints, so a resumed
run continues the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from scforge.training.config import OptimConfig


def lr_multiplier(step: int, *, warmup: int, total: int, schedule: str,
                  min_ratio: float) -> float:
    """Factor on the base learning rate at optimizer step ``step`` (0-based).

    Warmup ramps linearly from ``1 / (warmup + 1)`` to 1 (never exactly 0, so step 0 trains);
    afterwards ``cosine`` and ``linear`` decay to ``min_ratio`` at ``total`` and stay there.

    Raises:
        ValueError: unknown schedule.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    raise ValueError(f"optim.schedule={schedule!r}; choose cosine, linear or constant")


def schedule_fn(cfg: OptimConfig, max_steps: int) -> Callable[[int], float]:
    """``step -> multiplier`` for ``LambdaLR`` (a closure: LambdaLR does not pickle it)."""

    def fn(step: int) -> float:
        return lr_multiplier(step, warmup=cfg.warmup_steps, total=max_steps,
                             schedule=cfg.schedule, min_ratio=cfg.min_lr_ratio)

    return fn


def make_scheduler_factory(cfg: OptimConfig, max_steps: int
                           ) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """A callable DeepSpeed applies to the client optimizer inside ``initialize``.

    ZeRO's optimizer wrappers keep the client optimizer's ``param_groups`` dicts (only their
    ``params`` are swapped for flat partitions), so the learning rate LambdaLR writes there is
    the one every stage uses.
    """
    fn = schedule_fn(cfg, max_steps)
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear and embedding weights); never biases, norms or other vectors."""
    decay, no_decay = [], []
    for p in model.parameters():  # tied weights appear once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` (no JIT build; works under every ZeRO stage)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=(float(cfg.betas[0]), float(cfg.betas[1])), eps=cfg.eps)
