"""AdamW parameter groups and the learning-rate schedule (linear warmup, then decay).

The schedule is a pure function of the optimizer step, wrapped in ``LambdaLR``; DeepSpeed steps
the scheduler once per optimizer step and saves its ``last_epoch`` in checkpoints, so a resumed
run continues the same curve.

A model may define its own groups with a ``param_groups(weight_decay) -> list[dict]`` method
(fine-tuning does: layer-wise decayed learning rates, gradual unfreezing). Each group dict may
carry, besides ``params`` and ``weight_decay``:

- ``lr_scale`` (default 1): the group's learning rate is ``optim.lr * lr_scale * schedule(step)``;
- ``start_step`` (default 0): the group's learning rate is exactly 0 before this optimizer step.
  ``requires_grad`` cannot change once ``deepspeed.initialize`` has partitioned the parameters,
  so a "frozen" group still gets gradients (they count in the global clipping norm) and AdamW
  still updates its moments (``exp_avg``/``exp_avg_sq``) and step count; with ``lr == 0`` both
  the update and the decoupled weight decay (``p *= 1 - lr * wd``) leave its weights bit-for-bit
  unchanged. At ``start_step`` the group trains with moments already warmed on the gradients
  seen while frozen;
- ``name``: a label (kept in the optimizer's groups, e.g. for logging).
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

    def gated(start: int) -> Callable[[int], float]:
        return lambda step: fn(step) if step >= start else 0.0

    def factory(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        starts = [int(g.get("start_step", 0)) for g in optimizer.param_groups]
        if not any(starts):
            return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, [gated(s) for s in starts])

    return factory


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


def model_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The model's own groups (its ``param_groups(weight_decay)`` method) or :func:`param_groups`.

    Raises:
        ValueError: a model's group holds a frozen or repeated parameter, or a bad scale/step.
    """
    own = getattr(model, "param_groups", None)
    if not callable(own):
        return param_groups(model, weight_decay)
    groups = [dict(g) for g in own(weight_decay)]
    seen: set[int] = set()
    for g in groups:
        name = g.get("name", "?")
        g["params"] = list(g["params"])
        if any(not p.requires_grad for p in g["params"]):
            raise ValueError(f"param group {name!r} holds a parameter with requires_grad=False; "
                             "leave frozen parameters out of param_groups()")
        if any(id(p) in seen for p in g["params"]):
            raise ValueError(f"param group {name!r} repeats a parameter of an earlier group")
        seen.update(id(p) for p in g["params"])
        if float(g.get("lr_scale", 1.0)) < 0 or int(g.get("start_step", 0)) < 0:
            raise ValueError(f"param group {name!r}: lr_scale and start_step must be >= 0")
    return [g for g in groups if g["params"]]  # ZeRO refuses empty groups


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` (no JIT build; works under every ZeRO stage).

    Each group starts at ``cfg.lr * lr_scale`` (the schedule's ``LambdaLR`` multiplies that).
    """
    groups = model_param_groups(model, cfg.weight_decay)
    for g in groups:
        g["lr"] = cfg.lr * float(g.get("lr_scale", 1.0))
    return torch.optim.AdamW(groups, lr=cfg.lr,
                             betas=(float(cfg.betas[0]), float(cfg.betas[1])), eps=cfg.eps)
