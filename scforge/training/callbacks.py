"""Step callbacks of the trainer, and the in-training evaluation callback built from ``eval.*``.

A callback is any object with ``name`` (the JSONL ``kind`` of its records), ``every`` (run
after every N-th optimizer step; 0 = never), ``at_end`` (also after the last step) and
``__call__(trainer) -> dict[str, float]``. Every rank calls it (so a callback may use
collectives); the trainer logs what rank 0's call returned. Callbacks run under a forked RNG
(torch, NumPy, ``random``): a run with callbacks has the same losses as one without, and its
resume stays exact.

:class:`EvalCallback` embeds a small labelled AnnData with the live model and runs
:mod:`scforge.eval` tasks (``linear_probe`` by default) on rank 0; ``scforge.eval`` is imported
when the callback is built, never by importing the training package.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from scforge.config.loader import ConfigError
from scforge.training.config import InTrainingEvalConfig, TrainConfig
from scforge.training.distributed import broadcast_json

if TYPE_CHECKING:
    from scforge.training.trainer import Trainer


class Callback(Protocol):
    """What the trainer calls between steps."""

    name: str
    every: int
    at_end: bool

    def __call__(self, trainer: Trainer) -> dict[str, float]: ...


@contextlib.contextmanager
def forked_rng() -> Iterator[None]:
    """Restores torch (CPU and CUDA), NumPy and ``random`` global RNG states on exit."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)


def due(cb: Callback, step: int) -> bool:
    """Whether ``cb`` runs after optimizer step ``step``."""
    return bool(cb.every) and step % cb.every == 0


class EvalCallback:
    """Scores the live model with ``scforge.eval`` tasks every ``eval.every`` steps.

    Args:
        cfg: the ``eval`` block.
        manifest: the training shards' manifest (the cells are tokenized like the shards).
        max_len: truncation length (the loader's ``data.stream.max_len``).
        zero_stage: ZeRO-3 parameters are gathered for the evaluation (on every rank).

    Raises:
        ConfigError: unreadable data, a missing label/batch column or an unknown task.
    """

    name = "eval"

    def __init__(self, cfg: InTrainingEvalConfig, manifest: dict[str, Any], *, max_len: int,
                 zero_stage: int = 0, is_main: bool = True) -> None:
        self.every, self.at_end = cfg.every, cfg.at_end
        self.zero_stage = zero_stage
        self.evaluator = None
        if not is_main:  # only rank 0 tokenizes and scores; the others just take part
            return
        from scforge.data.sources.h5ad import read_anndata
        from scforge.eval.harness import TrainingEvaluator
        from scforge.eval.tasks import EVAL_TASKS

        unknown = [t for t in cfg.tasks if t not in EVAL_TASKS]
        if unknown:
            raise ConfigError(f"eval.tasks={list(cfg.tasks)}: {unknown} not registered; "
                              f"choose from {EVAL_TASKS.names()}")
        try:
            adata = read_anndata(cfg.data)
        except (OSError, ValueError) as e:
            raise ConfigError(f"eval.data={cfg.data!r} is not a readable h5ad file ({e})") from None
        for key in ("label_key", "batch_key"):
            col = getattr(cfg, key)
            if col and col not in adata.obs:
                raise ConfigError(f"eval.{key}={col!r} is not an obs column of {cfg.data!r}; "
                                  f"columns: {sorted(map(str, adata.obs.columns))[:20]}")
        if cfg.max_cells and adata.n_obs > cfg.max_cells:
            rows = np.sort(np.random.default_rng(cfg.seed).choice(adata.n_obs, cfg.max_cells,
                                                                  replace=False))
            adata = adata[rows].copy()
        self.n_cells = int(adata.n_obs)
        with forked_rng():
            self.evaluator = TrainingEvaluator(
                adata, manifest, tasks=tuple(cfg.tasks), label_key=cfg.label_key,
                batch_key=cfg.batch_key, max_len=max_len, batch_size=cfg.batch_size,
                seed=cfg.seed)

    def __call__(self, trainer: Trainer) -> dict[str, float]:
        model = trainer.engine.module
        gather = contextlib.nullcontext()
        if self.zero_stage == 3:  # collective: every rank enters
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(list(model.parameters()))
        scores: dict[str, float] | None = None
        with gather, torch.no_grad():
            if self.evaluator is not None:
                scores = {k: float(v) for k, v in self.evaluator(model, prefix="eval/").items()}
        return broadcast_json(scores, trainer.world.device) or {}


def make_callbacks(cfg: TrainConfig, manifest: dict[str, Any], *, is_main: bool
                   ) -> list[Callback]:
    """The callbacks the config asks for (``eval.every > 0``: an :class:`EvalCallback`)."""
    out: list[Callback] = []
    if cfg.eval.every:
        if not Path(cfg.eval.data).is_file():
            raise ConfigError(f"eval.data={cfg.eval.data!r} does not exist; set it to a "
                              "labelled h5ad with raw counts, or eval.every=0")
        out.append(EvalCallback(cfg.eval, manifest, max_len=cfg.data.stream.max_len,
                                zero_stage=cfg.train.zero_stage, is_main=is_main))
    return out
