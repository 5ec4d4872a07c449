"""``scforge finetune`` / ``scforge predict``: supervised heads on a pretrained encoder.

Fine-tuning runs through the pretraining :class:`~scforge.training.trainer.Trainer`: the same
DeepSpeed engine (ZeRO stage, precision, gradient accumulation and clipping from this config),
the same streaming loader with exact resume, checkpoints (``<out_dir>/checkpoints``,
``keep_last_k``, ``resume=auto``), ``metrics.jsonl`` / wandb, progress bar, validation and early
stopping. What fine-tuning adds:

- data: the labelled cells are split (seeded) and sharded with the checkpoint's own tokenizer
  into ``<out_dir>/data`` (:mod:`scforge.finetune.data`), the label passed through as obs;
- the model: :class:`~scforge.finetune.model.FinetuneTask` (encoder + classification or
  regression head; loss and ``acc``/``rmse`` from ``batch.obs[label_key]``); LoRA adapters are
  injected before the engine is built, and then only adapters and head require grad;
- discriminative learning rates: the head at ``lr``, the top encoder group (final norm + last
  block) at ``encoder_lr``, each lower group (blocks, then the embedding) times ``layer_decay``;
- gradual unfreezing (``unfreeze_every`` epochs per group, top first): a group's learning rate is
  exactly 0 until its unfreeze step, so its weights do not move; its gradients are still
  computed (and count in the clipping norm) and AdamW's moments still accumulate, see
  :mod:`scforge.training.optim`;
- the export (``<out_dir>/export``): the fine-tuned encoder as a pretraining export (LoRA
  merged) plus ``head.safetensors`` and ``finetune.json``, read by ``scforge predict`` and
  :func:`~scforge.finetune.model.load_finetuned`.

Launch like the trainer: one process (``scforge finetune ...``) or ``deepspeed``/``torchrun``
with ``python -m scforge.finetune.train ...`` (rank 0 writes the shards, the others wait).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scforge.eval.embed import resolve_device
from scforge.eval.tokenize import (
    TokenizedCells,
    checkpoint_tokenizer,
    pad_batch,
    seq_len_of,
    tokenize_adata,
)
from scforge.finetune.data import LabelledData, filter_cells, prepare_shards, read_labelled
from scforge.finetune.lora import (
    BACKENDS,
    apply_lora,
    lora_parameters,
    merge_lora,
    resolve_backend,
)
from scforge.finetune.model import (
    POOLINGS,
    FinetuneModel,
    FinetuneTask,
    encoder_units,
    load_finetuned,
    save_finetuned,
    unit_params,
)
from scforge.training.callbacks import forked_rng
from scforge.training.config import EarlyStoppingConfig, WandbConfig
from scforge.training.export import load_full_state
from scforge.training.trainer import Trainer

__all__ = ["FinetuneConfig", "FinetuneTrainer", "LoRAConfig", "build_trainer", "filter_cells",
           "finetune", "finetune_main", "param_groups", "predict", "predict_main",
           "set_trainable"]


@dataclass
class LoRAConfig:
    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["qkv", "out"])
    """Attribute names of the nn.Linear layers to adapt (attention: ``qkv``, ``out``)."""
    backend: str = "auto"
    """``peft`` (Hugging Face PEFT), ``builtin`` (scforge's LoRALinear) or ``auto`` (peft when
    installed). Saved models have the adapters merged either way."""


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class FinetuneConfig:
    """Schema of ``configs/finetune/*.yaml``."""

    checkpoint: str = ""
    """Pretrained export directory (``<run>/export``); ``--checkpoint`` on the command line."""
    data: str = ""
    out_dir: str = "runs/finetune"
    """Run directory: ``data/`` (shards), ``checkpoints/``, ``metrics.jsonl``, ``export/``."""
    task: str = "classification"
    """``classification`` or ``regression``."""
    label_key: str = "cell_type"
    train_filter: dict[str, list[str]] = field(default_factory=dict)
    """Keep only cells whose obs column takes one of these values (e.g. one batch)."""
    max_cells: int = 0
    val_fraction: float = 0.1
    """Seeded share of the cells held out and scored after every epoch (``val_acc`` /
    ``val_rmse`` in metrics.jsonl: the trainer's validation, a mean over validation batches);
    0 = no validation."""
    epochs: int = 4
    batch_size: int = 32
    """Cells per micro-batch per rank."""
    max_len: int = 0
    """Truncation length; 0 = what the checkpoint was trained with."""
    head_hidden: int = 0
    head_dropout: float = 0.1
    pooling: str = "model"
    """Cell embedding the head reads: ``model`` (the encoder's pooling), ``cls``, ``mean`` or
    ``cls_mean`` (both concatenated)."""
    lr: float = 3e-3
    """Head learning rate."""
    encoder_lr: float = 1e-3
    """Learning rate of the top encoder group; lower groups get ``encoder_lr * layer_decay^k``."""
    layer_decay: float = 0.9
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    """Linear warmup over this share of the steps, then cosine decay to 0."""
    unfreeze_every: int = 0
    """Gradual unfreezing: the head trains from the start, one more encoder group from the top
    every this many epochs (0 = all at once). A group's learning rate is 0 until then (its weights
    do not move; its AdamW moments do accumulate). With few epochs it starves the gene
    embedding, which matters most for small encoders."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    seed: int = 0
    """Seeds the train/validation split, the data order, head init and dropout."""
    device: str = "auto"
    """``auto`` (the trainer's: the local GPU when there is one, else CPU) or the device type
    that must be used (``cpu``/``cuda``; a mismatch is refused rather than silently ignored)."""
    layer: str = "X"
    """Matrix holding raw counts: ``X``, ``raw/X`` or ``layers/<name>``."""
    progress: bool = True
    # --- the trainer (same meaning as train.* in configs/train/*.yaml)
    precision: str = "fp32"
    zero_stage: int = 0
    grad_accum: int = 1
    clip_grad: float = 1.0
    log_every: int = 1
    ckpt_every: int = 0
    """Checkpoint every N optimizer steps (0 = only at the end)."""
    keep_last_k: int = 2
    resume: str = "auto"
    """``auto`` (newest complete checkpoint in ``out_dir``), ``none`` or a checkpoint path."""
    num_workers: int = 0
    compile: bool = False
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    """E.g. ``monitor: val_acc, mode: max, patience: 2`` (checked after every epoch)."""
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self) -> None:
        from scforge.config.loader import ConfigError

        if self.task not in ("classification", "regression"):
            raise ConfigError(f"task={self.task!r}; choose classification or regression")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay={self.layer_decay} must be in (0, 1]")
        if self.lora.backend not in BACKENDS:
            raise ConfigError(f"lora.backend={self.lora.backend!r}; choose one of "
                              f"{list(BACKENDS)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling={self.pooling!r}; choose one of {list(POOLINGS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("epochs, batch_size and grad_accum must be >= 1")
        if self.lr <= 0 or self.encoder_lr < 0:
            raise ConfigError(f"lr={self.lr} must be > 0 and encoder_lr={self.encoder_lr} >= 0")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.warmup_fraction < 1:
            raise ConfigError("val_fraction and warmup_fraction must lie in [0, 1)")
        if self.unfreeze_every < 0:
            raise ConfigError(f"unfreeze_every={self.unfreeze_every} must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device={self.device!r}; choose auto, cpu or cuda")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}; choose one of {list(PRECISIONS)}")


def param_groups(model: FinetuneModel, cfg: FinetuneConfig, *, steps_per_epoch: float = 0.0,
                 weight_decay: float | None = None) -> list[dict[str, Any]]:
    """Optimizer groups: the head at ``lr``, encoder groups at decayed ``encoder_lr``.

    Every group carries ``lr`` (its peak learning rate), ``lr_scale`` (``lr`` / ``cfg.lr``, what
    :mod:`scforge.training.optim` multiplies the schedule by), ``start_step`` (the optimizer step
    from which it trains: ``(depth + 1) * unfreeze_every * steps_per_epoch`` for encoder group
    ``depth``, 0 for the head and without unfreezing) and ``name`` (``head``, ``encoder<depth>``,
    depth 0 = top). Only parameters with ``requires_grad`` are listed (LoRA: adapters only);
    weight decay applies to matrices, not to biases and norms.
    """
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    groups: list[dict[str, Any]] = []

    def add(params: list[torch.nn.Parameter], lr: float, name: str, start: int) -> None:
        params = [p for p in params if p.requires_grad]
        for decay, part in ((wd, [p for p in params if p.dim() >= 2]),
                            (0.0, [p for p in params if p.dim() < 2])):
            if part:
                groups.append({"params": part, "lr": lr, "lr_scale": lr / cfg.lr,
                               "start_step": start, "weight_decay": decay, "name": name})

    add(list(model.head.parameters()), cfg.lr, "head", 0)
    for depth, unit in enumerate(encoder_units(model.encoder)):
        start = (int(round((depth + 1) * cfg.unfreeze_every * steps_per_epoch))
                 if cfg.unfreeze_every > 0 else 0)
        add(unit_params(unit), cfg.encoder_lr * cfg.layer_decay ** depth, f"encoder{depth}",
            start)
    return groups


def set_trainable(model: FinetuneModel, n_units: int, *, lora: bool) -> int:
    """Head plus the top ``n_units`` encoder groups require grad (only adapters there under
    LoRA), nothing else; returns the trainable parameter count."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
    for unit in encoder_units(model.encoder)[:n_units]:
        params = [p for m in unit for p in lora_parameters(m)] if lora else unit_params(unit)
        for p in params:
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _batches(cells: TokenizedCells, order: np.ndarray, size: int, **pad: Any):
    for a in range(0, len(order), size):
        idx = order[a:a + size]
        vals = None if cells.values is None else [cells.values[i] for i in idx]
        yield idx, pad_batch([cells.tokens[i] for i in idx], vals, **pad)


@torch.no_grad()
def predict_cells(model: FinetuneModel, cells: TokenizedCells, *, batch_size: int,
                  device: torch.device, **pad: Any) -> np.ndarray:
    """Raw outputs [N, C] (logits) or [N] (regression) in cell order."""
    model.eval()
    outs = [model(b.to(device)).float().cpu().numpy()
            for _, b in _batches(cells, np.arange(len(cells)), batch_size, **pad)]
    return np.concatenate(outs)


# ---------------------------------------------------------------------------- the trainer
class FinetuneTrainer(Trainer):
    """The pretraining trainer on a :class:`FinetuneTask`, exporting a fine-tuned model.

    Args:
        cfg: the training config :func:`build_trainer` derives from a FinetuneConfig.
        build: returns a fresh task (same modules, adapters and requires_grad); called once for
            the engine and once on rank 0 for the export.
        meta: ``finetune.json`` content (everything but the history).
        steps_per_epoch: optimizer steps per epoch (for the per-epoch history).
        world: process layout; callbacks: extra step callbacks.
    """

    def __init__(self, cfg: Any, *, build: Callable[[], FinetuneTask], meta: dict[str, Any],
                 steps_per_epoch: float, world: Any = None,
                 callbacks: list[Any] | None = None) -> None:
        self._build = build
        self.meta = meta
        self.steps_per_epoch = steps_per_epoch
        super().__init__(cfg, world=world, callbacks=callbacks)

    def build_model(self) -> torch.nn.Module:
        return self._build()

    def write_export(self, out: Path, state: dict[str, torch.Tensor]) -> None:
        """Loads the consolidated weights into a fresh CPU task, merges LoRA, saves."""
        with forked_rng():
            task = self._build()
        # Frozen weights (not in the optimizer) never change; DeepSpeed's zero_to_fp32 leaves
        # some of them out of its consolidation (e.g. ZeRO-1 bf16), so they come from the
        # pretrained export. A trainable weight missing still fails in load_full_state.
        trainable = {n for n, p in task.named_parameters() if p.requires_grad}
        state = {**{k: v for k, v in task.state_dict().items()
                    if k not in state and k not in trainable}, **state}
        load_full_state(task, state)
        merge_lora(task.net)
        meta = {**self.meta, "history": self.history()}
        save_finetuned(task.net, out, meta, manifest=self.manifest,
                       extra={"step": self.step, "train_config": dataclasses.asdict(self.cfg)})

    def history(self) -> list[dict[str, Any]]:
        """Per-epoch records from metrics.jsonl (rank 0): mean train loss, validation metric,
        unfrozen encoder groups and trainable parameters in that epoch."""
        return epoch_history(self.out_dir / "metrics.jsonl", self.engine.module,
                             self.steps_per_epoch, self.meta["config"]["epochs"],
                             self.meta["task"])


def _numel(p: torch.nn.Parameter) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 partitions leave numel() at 0


def epoch_history(metrics: Path, task: FinetuneTask, steps_per_epoch: float, epochs: int,
                  kind: str) -> list[dict[str, Any]]:
    """One record per epoch run so far: ``epoch``, ``loss``, ``val`` (accuracy or RMSE, when
    validated), ``unfrozen_groups`` and ``trainable`` (parameters with a nonzero learning rate)."""
    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    groups = task.param_groups(0.0)
    n_head = sum(_numel(p) for g in groups if g["name"] == "head" for p in g["params"])
    metric = "val_acc" if kind == "classification" else "val_rmse"
    out = []
    for epoch in range(epochs):
        lo, hi = epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch
        losses = [r["loss"] for r in recs if r.get("kind") == "train" and lo < r["step"] <= hi]
        if not losses:
            break
        first = int(round(lo))
        live = [g for g in groups if g["name"] != "head" and g["start_step"] <= first
                and g["lr_scale"] > 0]
        rec: dict[str, Any] = {
            "epoch": epoch, "loss": float(np.mean(losses)),
            "unfrozen_groups": len({g["name"] for g in live}),
            "trainable": n_head + sum(_numel(p) for g in live for p in g["params"])}
        vals = [r for r in recs if r.get("kind") == "val" and lo < r["step"] <= hi]
        if vals and metric in vals[-1]:
            rec["val"] = float(vals[-1][metric])
        out.append(rec)
    return out


def _train_config(cfg: FinetuneConfig, info: dict[str, Any], data: LabelledData, *,
                  max_len: int, max_steps: int, steps_per_epoch: float) -> Any:
    """The :class:`~scforge.training.TrainConfig` of a fine-tuning run."""
    from scforge.data.stream.config import MaskingConfig, StreamConfig
    from scforge.models import ModelConfig
    from scforge.training.config import DataConfig, LoopConfig, OptimConfig, TrainConfig

    per_epoch = max(1, int(round(steps_per_epoch)))
    val_batches = max(1, math.ceil(data.n_val / cfg.batch_size)) if data.n_val else 1
    return TrainConfig(
        data=DataConfig(train=str(data.train), val=str(data.val or ""),
                        num_workers=cfg.num_workers,
                        stream=StreamConfig(seed=cfg.seed, max_len=max_len,
                                            batch_size=cfg.batch_size,
                                            masking=MaskingConfig(name="none", probability=0.0))),
        model=ModelConfig(**info["model"]),
        optim=OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=[0.9, 0.98],
                          warmup_steps=int(cfg.warmup_fraction * max_steps), schedule="cosine",
                          min_lr_ratio=0.0),
        train=LoopConfig(max_steps=max_steps, micro_batch_size=cfg.batch_size,
                         grad_accum=cfg.grad_accum, clip_grad=cfg.clip_grad,
                         precision=cfg.precision, zero_stage=cfg.zero_stage, seed=cfg.seed,
                         log_every=cfg.log_every, val_every=per_epoch if data.n_val else 0,
                         val_batches=val_batches, early_stopping=cfg.early_stopping,
                         ckpt_every=cfg.ckpt_every, keep_last_k=cfg.keep_last_k,
                         resume=cfg.resume, out_dir=cfg.out_dir, compile=cfg.compile,
                         progress=cfg.progress),
        wandb=cfg.wandb)


def _labelled_cells(cfg: FinetuneConfig, adata: Any | None) -> Any:
    from scforge.data.sources.h5ad import read_anndata

    if adata is None:
        if not cfg.data:
            raise ValueError("data is empty; set data=<labelled h5ad with raw counts>")
        if not Path(cfg.data).is_file():
            raise FileNotFoundError(f"data={cfg.data!r} does not exist")
        adata = read_anndata(cfg.data)
    adata = filter_cells(adata, cfg.train_filter) if cfg.train_filter else adata
    if cfg.max_cells and adata.n_obs > cfg.max_cells:
        rng = np.random.default_rng(cfg.seed)
        adata = adata[np.sort(rng.choice(adata.n_obs, cfg.max_cells, replace=False))].copy()
    return adata


def build_trainer(cfg: FinetuneConfig, adata: Any | None = None, *,
                  callbacks: list[Any] | None = None) -> FinetuneTrainer:
    """Prepares the data (rank 0) and builds the :class:`FinetuneTrainer` of ``cfg``.

    Args:
        cfg: the config (validated here).
        adata: labelled AnnData (default: read ``cfg.data``); every rank passes the same.
        callbacks: extra trainer callbacks (see :mod:`scforge.training.callbacks`).

    Raises:
        ValueError, FileNotFoundError, ConfigError: bad config, data or checkpoint (one line).
    """
    from scforge.config.loader import ConfigError, to_yaml
    from scforge.data.stream.ordering import batches_per_rank
    from scforge.training import checkpoint as ckpt
    from scforge.training.distributed import barrier, broadcast_json, init_process_group
    from scforge.training.export import load_pretrained, read_pretrained_info

    cfg.validate()
    if not cfg.checkpoint:
        raise ConfigError("checkpoint is empty; pass --checkpoint <pretrained export dir>")
    info = read_pretrained_info(cfg.checkpoint)
    world = init_process_group()
    if cfg.device != "auto" and cfg.device != world.device.type:
        raise ConfigError(f"device={cfg.device!r} but this process trains on "
                          f"{world.device.type}; set device=auto")
    root = Path(cfg.out_dir) / "data"

    def refuse_stale_checkpoints() -> None:
        if cfg.resume != "none" and ckpt.complete_checkpoints(Path(cfg.out_dir) / ckpt.CHECKPOINTS):
            raise ConfigError(f"out_dir={cfg.out_dir!r} holds checkpoints of a fine-tuning run "
                              "on other cells or data settings; use another out_dir, or "
                              "resume=none to start over (old checkpoints are set aside)")

    error = None
    if world.is_main:  # the other ranks wait, then read what rank 0 wrote (or its error)
        try:
            data = prepare_shards(_labelled_cells(cfg, adata), info, root, task=cfg.task,
                                  label_key=cfg.label_key, layer=cfg.layer,
                                  val_fraction=cfg.val_fraction, seed=cfg.seed,
                                  before_rebuild=refuse_stale_checkpoints)
            (Path(cfg.out_dir) / "finetune.yaml").write_text(to_yaml(cfg))
        except (ValueError, FileNotFoundError) as e:
            error = [type(e).__name__, str(e)]
    error = broadcast_json(error, world.device)
    if error:
        kind, msg = error
        raise (FileNotFoundError if kind == "FileNotFoundError" else
               ConfigError if kind == "ConfigError" else ValueError)(msg)
    barrier()
    data = read_labelled(root)
    batches = batches_per_rank(data.n_train, world.world_size, cfg.batch_size, "pad")
    steps_per_epoch = batches / cfg.grad_accum
    max_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    enc_cfg = info["model"]
    max_len = cfg.max_len or seq_len_of(info, int(enc_cfg["max_len"]))
    backend = resolve_backend(cfg.lora.backend) if cfg.lora.enabled else ""
    adapted: list[str] = []

    def build() -> FinetuneTask:
        encoder = load_pretrained(cfg.checkpoint, device="cpu").train()
        net = FinetuneModel(encoder, len(data.classes) if data.classes else 1,
                            hidden=cfg.head_hidden, dropout=cfg.head_dropout, pooling=cfg.pooling)
        if cfg.lora.enabled:
            adapted[:] = apply_lora(encoder, targets=list(cfg.lora.targets), rank=cfg.lora.rank,
                                    alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                                    backend=backend)
        set_trainable(net, len(encoder_units(encoder)), lora=cfg.lora.enabled)
        return FinetuneTask(net, task=cfg.task, label_key=cfg.label_key, classes=data.classes,
                            target_scale=data.target_scale,
                            groups=lambda wd: param_groups(net, cfg,
                                                           steps_per_epoch=steps_per_epoch,
                                                           weight_decay=wd))

    meta = {"pretrained": info, "checkpoint": str(cfg.checkpoint), "task": cfg.task,
            "label_key": cfg.label_key, "classes": data.classes,
            "target_scale": list(data.target_scale),
            "n_outputs": len(data.classes) if data.classes else 1,
            "head_hidden": cfg.head_hidden, "pooling": cfg.pooling, "max_len": max_len,
            "lora": adapted, "lora_backend": backend, "n_train": data.n_train,
            "n_val": data.n_val, "config": dataclasses.asdict(cfg)}
    tcfg = _train_config(cfg, info, data, max_len=max_len, max_steps=max_steps,
                         steps_per_epoch=steps_per_epoch)
    return FinetuneTrainer(tcfg, build=build, meta=meta, steps_per_epoch=steps_per_epoch,
                           world=world, callbacks=callbacks)


def finetune(cfg: FinetuneConfig, adata: Any | None = None, *,
             callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Fine-tunes ``cfg.checkpoint`` on labelled cells through the trainer (or resumes).

    Args:
        cfg: the config.
        adata: labelled AnnData (default: read ``cfg.data``).
        callbacks: extra trainer callbacks.

    Returns:
        A summary: ``out`` (the fine-tuned model, ``<out_dir>/export``), ``run_dir``,
        per-epoch ``history``, ``lora`` (adapted layers), ``step``, ``resumed_from``,
        ``checkpoint`` and ``seconds``.
    """
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, adata, callbacks=callbacks)
    result = trainer.fit()
    history = trainer.history() if trainer.world.is_main else []
    return {"out": str(result.export_dir) if result.export_dir else None,
            "run_dir": str(result.out_dir), "history": history, "lora": trainer.meta["lora"],
            "step": result.step, "val": result.val, "stopped_early": result.stopped_early,
            "resumed_from": str(result.resumed_from) if result.resumed_from else None,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "seconds": round(time.perf_counter() - t0, 1)}


def predict(finetuned_dir: str | Path, data: str | Path | Any, out: str | Path | None = None, *,
            key: str = "scforge_pred", batch_size: int = 64, device: str | None = "auto",
            layer: str = "X") -> Any:
    """Applies a fine-tuned model to new cells, writing ``obs[key]`` (class or value) and, for
    classifiers, ``obs[key + '_prob']`` (the winning class's probability)."""
    from scforge.data.sources.h5ad import read_anndata, write_anndata

    dev = resolve_device(device)
    model, meta = load_finetuned(finetuned_dir, device=dev)
    adata = read_anndata(data) if isinstance(data, str | Path) else data.copy()
    tokenizer = checkpoint_tokenizer(meta["pretrained"])
    cells = tokenize_adata(adata, tokenizer, layer=layer)
    raw = predict_cells(model, cells, batch_size=batch_size, device=dev,
                        max_len=int(meta["max_len"]), pad_id=int(model.config.pad_token_id),
                        eos_id=tokenizer.eos_id)
    if meta["task"] == "classification":
        prob = torch.softmax(torch.from_numpy(raw), dim=1).numpy()
        adata.obs[key] = np.asarray(meta["classes"], dtype=object)[prob.argmax(1)]
        adata.obs[f"{key}_prob"] = prob.max(1)
    else:
        mean, std = meta["target_scale"]
        adata.obs[key] = raw * std + mean
    if out is not None:
        write_anndata(adata, out)
    return adata


def finetune_main(argv: list[str] | None = None) -> int:
    """``scforge finetune --config configs/finetune/<x>.yaml --checkpoint DIR [key=value ...]``.

    Under a launcher (``deepspeed``/``torchrun``) run ``python -m scforge.finetune.train ...``;
    every rank runs this, rank 0 prints the summary.
    """
    import os

    from scforge.config.loader import load_config
    from scforge.errors import ArgumentParser, run_command

    ap = ArgumentParser(prog="scforge finetune",
                                 description="Fine-tune a pretrained encoder with a task head "
                                             "through the DeepSpeed trainer.")
    ap.add_argument("--config", action="append", default=[], metavar="FILE")
    ap.add_argument("--checkpoint", default=None,
                    help="pretrained export directory (overrides checkpoint= of the config)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None,
                    help=argparse.SUPPRESS)  # appended by the deepspeed launcher
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    overrides = list(args.overrides)
    if args.checkpoint is not None:
        overrides.append(f"checkpoint={args.checkpoint}")

    def run() -> int:
        res = finetune(load_config(FinetuneConfig, args.config, overrides))
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps(res, indent=1))
        return 0

    return run_command("scforge finetune", run)


def predict_main(argv: list[str] | None = None) -> int:
    """``scforge predict --model DIR --data X.h5ad --out Y.h5ad [--key scforge_pred]``."""
    from scforge.errors import ArgumentParser, run_command

    ap = ArgumentParser(prog="scforge predict",
                                 description="Apply a fine-tuned model; predictions -> obs.")
    ap.add_argument("--model", required=True, help="fine-tuned model directory")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--key", default="scforge_pred")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    def run() -> int:
        predict(args.model, args.data, args.out, key=args.key, batch_size=args.batch_size,
                device=args.device)
        print(f"wrote {args.out}: obs[{args.key!r}]")
        return 0

    return run_command("scforge predict", run)


if __name__ == "__main__":
    sys.exit(finetune_main())
