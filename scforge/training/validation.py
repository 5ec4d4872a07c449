"""Validation on held-out shards and early stopping.

Validation reads the first ``val_batches`` micro-batches of an unshuffled validation stream, so
every check scores the same cells under the same masks (masks are a pure function of seed, epoch
and cell) and successive values are comparable. It runs under a forked RNG: a contrastive view or
anything else drawing random numbers in eval mode must not shift the training run's dropout
stream, or a run that validates would not match one resumed around a validation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from scforge.contracts import Batch
from scforge.data.stream import ShardStream
from scforge.training.config import EarlyStoppingConfig
from scforge.training.distributed import all_reduce_sum


class EarlyStopping:
    """Counts validation checks without improvement of ``monitor`` beyond ``min_delta``."""

    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        self.monitor = cfg.monitor
        self.patience = cfg.patience
        self.mode = cfg.mode
        self.min_delta = cfg.min_delta
        self.best: float | None = None
        self.best_step = -1
        self.bad = 0

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.bad >= self.patience

    def update(self, metrics: dict[str, float], step: int) -> None:
        """Records one validation result."""
        value = metrics.get(self.monitor)
        if value is None:
            return
        better = (self.best is None
                  or (self.mode == "min" and value < self.best - self.min_delta)
                  or (self.mode == "max" and value > self.best + self.min_delta))
        if better:
            self.best, self.best_step, self.bad = float(value), step, 0
        else:
            self.bad += 1

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_step = int(state.get("best_step", -1))
        self.bad = int(state.get("bad", 0))


@torch.no_grad()
def evaluate(engine: Any, stream: ShardStream, *, batches: int, device: torch.device,
             to_device: Callable[[Batch], Batch]) -> dict[str, float]:
    """Mean loss and model metrics over this rank's first ``batches`` validation batches,
    averaged over ranks (every rank has the same batch count, so the collective is lockstep).

    Returns:
        ``{"val_loss": ..., "val_<metric>": ...}``.
    """
    n = min(batches, stream.batches_per_epoch)
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = engine.module.training
    engine.eval()
    sums: dict[str, float] = {}
    try:
        stream.set_epoch(0)
        it = stream.iter_workers(1)
        for _ in range(n):
            out = engine(to_device(next(it)))
            sums["loss"] = sums.get("loss", 0.0) + float(out.loss)
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        it.close()
    finally:
        engine.train(was_training)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    keys = sorted(sums)
    tot = all_reduce_sum([sums[k] / max(n, 1) for k in keys], device)
    ws = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return {f"val_{k}": v / ws for k, v in zip(keys, tot, strict=True)}
