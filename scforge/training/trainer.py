"""One trainer for every model family: DeepSpeed engine, streaming shards, exact resume.

The loop is deliberately plain: each optimizer step pulls ``grad_accum`` micro-batches from the
rank's :class:`~scforge.data.stream.StatefulLoader`, runs ``engine(batch) -> ModelOutput``,
``engine.backward(out.loss)`` and ``engine.step()`` (DeepSpeed applies the optimizer, clipping and
the LR schedule at the accumulation boundary). Every ``log_every`` steps one small all-reduce
gives global loss and throughput; validation, early stopping and checkpoints follow.

Exact resume (CPU fp32: bit-identical losses) rests on three things: the loader position and
every RNG state are in the checkpoint; the loader's DataLoader draws its worker seed from torch's
global RNG, so every fetch runs under a saved/restored CPU RNG state (the model's dropout stream
never sees the loader); validation runs under a forked RNG too.

Subclasses may train another module through the same loop: :meth:`Trainer.build_model` returns
it (``forward(batch) -> ModelOutput``, optionally ``param_groups(weight_decay)`` for per-group
learning-rate factors and start steps) and :meth:`Trainer.write_export` writes its export.
Fine-tuning (:class:`scforge.finetune.train.FinetuneTrainer`) does both.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scforge.config.loader import ConfigError
from scforge.contracts import Batch
from scforge.models import get_model
from scforge.training import checkpoint as ckpt
from scforge.training.callbacks import Callback, due, forked_rng, make_callbacks
from scforge.training.compile import compile_blocks
from scforge.training.config import TrainConfig
from scforge.training.data import bind_config, make_train_loader, make_val_stream
from scforge.training.deepspeed_config import deepspeed_config
from scforge.training.distributed import (
    World,
    agree,
    agreed,
    all_reduce_sum,
    broadcast_json,
    init_process_group,
)
from scforge.training.export import consolidated_state, export_pretrained
from scforge.training.metrics import (
    MetricsLogger,
    batch_flops,
    init_wandb,
    memory_stats,
    peak_tflops,
)
from scforge.training.optim import make_optimizer, make_scheduler_factory
from scforge.training.rundir import environment, write_run_files
from scforge.training.validation import EarlyStopping, evaluate


@dataclass
class TrainResult:
    """What a finished :meth:`Trainer.fit` reports (identical on every rank)."""

    out_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    """Global mean loss of every logged step run by this call (not those before a resume)."""
    val: dict[str, float] = field(default_factory=dict)
    callbacks: dict[str, dict[str, float]] = field(default_factory=dict)
    """The last scores of each callback, by its name (e.g. ``{"eval": {...}}``)."""
    stopped_early: bool = False
    checkpoint: Path | None = None
    export_dir: Path | None = None
    resumed_from: Path | None = None


class Trainer:
    """Builds the engine, loaders and run directory from a :class:`TrainConfig`.

    Args:
        cfg: the training config (validated; bound to the shards here).
        world: process layout; default: initialise torch.distributed through DeepSpeed (a bare
            process becomes a one-rank world).
        callbacks: extra step callbacks (see :mod:`scforge.training.callbacks`), run after
            those the config asks for (``eval.every``).
    """

    def __init__(self, cfg: TrainConfig, *, world: World | None = None,
                 callbacks: list[Callback] | None = None) -> None:
        cfg.validate()
        self.world = world or init_process_group()
        self.cfg, self.manifest = bind_config(cfg)
        self.out_dir = Path(self.cfg.train.out_dir)
        t = self.cfg.train
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)  # identical init on every rank (DeepSpeed broadcasts anyway)
        model = self.build_model()
        if t.compile:
            compile_blocks(model)  # in place: state-dict keys stay those of the plain model
        self.ds_config = deepspeed_config(self.cfg, world_size=self.world.world_size,
                                          on_gpu=self.world.device.type == "cuda")
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=make_optimizer(model, self.cfg.optim),
            lr_scheduler=make_scheduler_factory(self.cfg.optim, t.max_steps),
            config=self.ds_config)
        torch.manual_seed(t.seed * 1_000_003 + 1 + self.world.rank)  # per-rank dropout stream
        self.loader = make_train_loader(self.cfg, rank=self.world.rank,
                                        world_size=self.world.world_size)
        self.val_stream = make_val_stream(self.cfg, rank=self.world.rank,
                                          world_size=self.world.world_size)
        self.callbacks: list[Callback] = [
            *make_callbacks(self.cfg, self.manifest, is_main=self.world.is_main),
            *(callbacks or [])]
        self.early = EarlyStopping(t.early_stopping)
        self.peak = peak_tflops(self.world.device, t.precision, t.peak_tflops)
        self.step = 0

    # ------------------------------------------------------------------ hooks
    def build_model(self) -> torch.nn.Module:
        """The module the engine trains: the registry model of ``cfg.model`` (already bound to
        the shards). Subclasses (fine-tuning) return another module whose ``forward(batch)``
        returns a :class:`~scforge.contracts.ModelOutput`; a ``param_groups(weight_decay)``
        method on it sets the optimizer groups (see :mod:`scforge.training.optim`)."""
        return get_model(self.cfg.model)

    def write_export(self, out: Path, state: dict[str, torch.Tensor]) -> None:
        """Writes the export of the consolidated fp32 ``state`` of :meth:`build_model`'s module
        (rank 0 only). Subclasses that train another module write their own format here."""
        export_pretrained(out, self.cfg.model, state, manifest=self.manifest,
                          extra={"step": self.step, "train_config": dataclasses.asdict(self.cfg)})

    # ------------------------------------------------------------------ data
    def _batches(self) -> Iterator[Batch]:
        """Micro-batches forever (epoch after epoch); each fetch leaves torch's RNG untouched.

        Every fetch ends in :func:`agree`: a rank whose shard turns out corrupt stops every rank
        with its message (every rank fetches the same number of batches, so the calls line up).
        """
        while True:
            it = iter(self.loader)
            while True:
                state = torch.get_rng_state()
                error: Exception | None = None
                try:
                    batch = next(it)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001  (re-raised by agree)
                    error = exc
                finally:
                    torch.set_rng_state(state)
                agree(error)
                yield batch

    def _to_device(self, batch: Batch) -> Batch:
        if self.world.device.type == "cpu":
            return batch
        return batch.to(self.world.device, non_blocking=True)

    # ------------------------------------------------------------------ resume / checkpoint
    def _resume(self) -> Path | None:
        found = None
        with agreed():
            if self.world.is_main:
                tag = ckpt.find_resume(self.cfg.train.resume, self.out_dir)
                found = str(tag) if tag is not None else None
        found = broadcast_json(found, self.world.device)
        if found is None:
            return None
        tag_dir = Path(str(found))
        ckpt.check_compatible(tag_dir, self._signature())
        client, rank_state = ckpt.load(self.engine, tag_dir, world=self.world)
        self.step = int(client["step"])
        self.early.load_state_dict(client.get("early_stopping", {}))
        if "loader" in rank_state:
            self.loader.load_state_dict(rank_state["loader"])
        if "rng" in rank_state:
            ckpt.set_rng_state(rank_state["rng"])
        return tag_dir

    def _signature(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to resume it (``complete.json``)."""
        m = self.cfg.model
        return {"vocab_hash": self.manifest.get("vocab_hash"), "family": m.family,
                "vocab_size": m.vocab_size, "hidden_size": m.hidden_size,
                "num_layers": m.num_layers}

    def save_checkpoint(self) -> Path:
        """Checkpoint after the current step (collective: every rank calls it)."""
        client = {"format": ckpt.STATE_FORMAT, "version": ckpt.STATE_VERSION, "step": self.step,
                  "world_size": self.world.world_size, "early_stopping": self.early.state_dict(),
                  "config": dataclasses.asdict(self.cfg)}
        rank_state = {"loader": self.loader.state_dict(), "rng": ckpt.rng_state()}
        return ckpt.save(self.engine, self.out_dir, self.step, world=self.world,
                         client_state=client, rank_state=rank_state,
                         keep_last_k=self.cfg.train.keep_last_k, marker=self._signature())

    def export(self, tag_dir: Path) -> Path:
        """Writes ``<out_dir>/export`` (rank 0) from the engine or, for ZeRO-3, the checkpoint."""
        with agreed():
            if self.world.is_main:
                state = consolidated_state(self.engine, zero_stage=self.cfg.train.zero_stage,
                                           precision=self.cfg.train.precision,
                                           ckpt_dir=tag_dir.parent, tag=tag_dir.name)
                self.write_export(self.out_dir / "export", state)
        return self.out_dir / "export"

    # ------------------------------------------------------------------ the loop
    def _grad_norm(self) -> float:
        """Pre-clip global gradient norm (reduced grads are whole on every rank at stage 0)."""
        grads = [p.grad.detach().float().norm() for p in self.engine.module.parameters()
                 if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0

    def _train_step(self, batches: Iterator[Batch]) -> dict[str, Any]:
        """One optimizer step; returns this rank's loss, metrics and token counts."""
        t = self.cfg.train
        mask_prob = self.cfg.data.stream.masking.probability
        loss_sum, cells, real, padded, flops = 0.0, 0, 0, 0, 0.0
        metric_sums: dict[str, float] = {}
        manual_norm = None
        lr = float(self.engine.get_lr()[0])
        for _ in range(t.grad_accum):
            batch = next(batches)
            b, length = batch.input_ids.shape
            cells += b
            real += int(batch.attention_mask.sum())
            padded += b * length
            flops += batch_flops(self.cfg.model, length, b * length, mask_prob)
            out = self.engine(self._to_device(batch))
            self.engine.backward(out.loss)
            if t.zero_stage == 0 and self.engine.is_gradient_accumulation_boundary():
                manual_norm = self._grad_norm()
            self.engine.step()
            loss = float(out.loss.detach())
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss} at step {self.step + 1} (rank {self.world.rank}); lower "
                    f"optim.lr={self.cfg.optim.lr}, raise optim.warmup_steps, or use "
                    "train.precision=bf16 instead of fp16")
            loss_sum += loss
            for k, v in out.metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else manual_norm
        n = t.grad_accum
        return {"loss": loss_sum / n, "lr": lr, "grad_norm": norm, "cells": cells, "real": real,
                "padded": padded, "flops": flops,
                "metrics": {k: v / n for k, v in sorted(metric_sums.items())}}

    def _log_record(self, window: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
        """Global record of the steps in ``window`` (one all-reduce)."""
        last = window[-1]
        keys = list(last["metrics"])
        n = len(window)
        local = [sum(w["loss"] for w in window) / n,
                 sum(w["cells"] for w in window), sum(w["real"] for w in window),
                 sum(w["padded"] for w in window), sum(w["flops"] for w in window),
                 *[sum(w["metrics"].get(k, 0.0) for w in window) / n for k in keys]]
        tot = all_reduce_sum(local, self.world.device)
        ws = self.world.world_size
        seconds = max(seconds, 1e-9)
        mfu = None
        if self.peak:
            mfu = tot[4] / seconds / (self.peak * 1e12 * ws)
        rec = {"kind": "train", "step": self.step, "epoch": self.loader.stream.epoch,
               "loss": tot[0] / ws, "lr": last["lr"], "grad_norm": last["grad_norm"],
               "cells_per_s": tot[1] / seconds, "tokens_per_s": tot[2] / seconds,
               "padded_tokens_per_s": tot[3] / seconds,
               "pad_fraction": 1.0 - tot[2] / tot[3] if tot[3] else 0.0,
               "mfu": mfu, "step_time_s": seconds / len(window),
               **memory_stats(self.world.device),
               **{k: v / ws for k, v in zip(keys, tot[5:], strict=True)}}
        return rec

    def _validate(self) -> dict[str, float]:
        if self.val_stream is None:
            return {}
        return evaluate(self.engine, self.val_stream, batches=self.cfg.train.val_batches,
                        device=self.world.device, to_device=self._to_device)

    def fit(self) -> TrainResult:
        """Runs (or resumes) the training loop to ``train.max_steps`` or early stop."""
        t = self.cfg.train
        resumed = self._resume()
        start = self.step
        logger = None
        with agreed():  # the run directory is set up before any rank writes into it
            if self.world.is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                if not resumed:
                    set_aside_previous_run(self.out_dir)
                write_run_files(self.out_dir, self.cfg, self.ds_config,
                                environment(self.world.world_size, self.world.device), step=start)
                run = None
                if self.cfg.wandb.enabled:
                    run = init_wandb(self.cfg, self.out_dir, dataclasses.asdict(self.cfg))
                logger = MetricsLogger(self.out_dir / "metrics.jsonl",
                                       keep_until=start if resumed else None, wandb_run=run)
        result = TrainResult(out_dir=self.out_dir, step=start, resumed_from=resumed,
                             stopped_early=self.early.should_stop)
        bar = _progress(t.max_steps, start, enabled=t.progress and self.world.is_main)
        batches = self._batches()
        window: list[dict[str, Any]] = []
        tick = time.perf_counter()
        last_val = last_ckpt = -1
        tag_dir: Path | None = resumed
        try:
            while self.step < t.max_steps and not result.stopped_early:
                window.append(self._train_step(batches))
                self.step += 1
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    rec = self._log_record(window, time.perf_counter() - tick)
                    result.losses.append(rec["loss"])
                    if logger is not None:
                        logger.log(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                    window, tick = [], time.perf_counter()
                if t.val_every and self.step % t.val_every == 0:
                    result.val = self._run_validation(logger)
                    last_val = self.step
                    result.stopped_early = self.early.should_stop
                for cb in self.callbacks:
                    if due(cb, self.step):
                        result.callbacks[cb.name] = self._run_callback(cb, logger)
                if t.ckpt_every and self.step % t.ckpt_every == 0:
                    tag_dir, last_ckpt = self.save_checkpoint(), self.step
                if not window:  # just logged: validation/callbacks/checkpoint not in throughput
                    tick = time.perf_counter()
            if t.val_every and last_val != self.step:
                result.val = self._run_validation(logger)
            for cb in self.callbacks:
                if cb.at_end and cb.every and not due(cb, self.step) and self.step > start:
                    result.callbacks[cb.name] = self._run_callback(cb, logger)
            if last_ckpt != self.step and not (resumed and self.step == start):
                tag_dir = self.save_checkpoint()
            result.checkpoint = tag_dir
            if t.export and tag_dir is not None:
                result.export_dir = self.export(tag_dir)
        finally:
            bar.close()
            if logger is not None:
                logger.close()
        result.step = self.step
        return result

    def _run_callback(self, cb: Callback, logger: MetricsLogger | None) -> dict[str, float]:
        """Runs ``cb`` on every rank under a forked RNG; rank 0 logs its scores."""
        t0 = time.perf_counter()
        with forked_rng():
            scores = cb(self)
        if logger is not None and scores:
            logger.log({"kind": cb.name, "step": self.step, **scores,
                        f"{cb.name}_time_s": time.perf_counter() - t0})
        return scores

    def _run_validation(self, logger: MetricsLogger | None) -> dict[str, float]:
        val = self._validate()
        if not val:
            return val
        if self.early.enabled and self.early.monitor not in val:
            raise ConfigError(f"train.early_stopping.monitor={self.early.monitor!r} is not a "
                              f"validation metric of this model; choose one of {sorted(val)}")
        self.early.update(val, self.step)
        if logger is not None:
            logger.log({"kind": "val", "step": self.step, **val,
                        "best": self.early.best, "bad_checks": self.early.bad})
        return val


def set_aside_previous_run(out_dir: Path) -> None:
    """A fresh start in a used run directory renames the old checkpoints and metrics.

    Left in place, an older run's later checkpoints would win a future ``resume=auto`` and its
    metrics would interleave with the new run's; nothing is deleted.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (ckpt.CHECKPOINTS, "metrics.jsonl", "export"):
        path = out_dir / name
        if path.exists():
            path.rename(out_dir / f"{name}.before-{stamp}")


def _progress(total: int, initial: int, *, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step",
                dynamic_ncols=True)


def train(cfg: TrainConfig) -> TrainResult:
    """Builds a :class:`Trainer` and runs it (the library entry point)."""
    return Trainer(cfg).fit()
