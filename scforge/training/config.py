"""``TrainConfig``: the one schema a training run is built from.

Recipes in ``configs/train/*.yaml`` carry these keys; ``load_train_config`` merges them (and
``key=value`` overrides) through ``OmegaConf.structured(TrainConfig)``, so a misspelled key fails
at load time with its full name, then :meth:`TrainConfig.validate` checks every range and
combination that does not need the data. Checks that need the shards' manifest (vocabulary size,
value mode, special ids, sequence length) happen in :mod:`scforge.training.data` when the run
binds the config to its data, and raise the same :class:`~scforge.config.ConfigError`.

Values meaning "derive it from the data": ``model.vocab_size=0`` and ``model.value_mode="auto"``
(the shards' tokenizer decides: rank_value -> none, binned_expression -> binned with its
``n_bins``, continuous_projection -> continuous), ``data.stream.masking.name="auto"``
(autoregressive -> none, valued shards -> value, rank-value shards -> bert).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scforge.config.loader import ConfigError, load_config
from scforge.data.stream.config import MaskingConfig, StreamConfig
from scforge.models.config import ModelConfig

AUTO = "auto"
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("min", "max")
WANDB_MODES = ("offline", "online", "disabled")
DEFAULT_STREAM_BATCH = StreamConfig().batch_size


def _default_stream() -> StreamConfig:
    return StreamConfig(masking=MaskingConfig(name=AUTO))


def _default_model() -> ModelConfig:
    return ModelConfig(value_mode=AUTO)


@dataclass
class DataConfig:
    """Where the cells come from and how the streaming loader serves them.

    Attributes:
        train: shard directory (or ``manifest.json`` / URL) to train on.
        val: separate shard directory for validation; empty for none (or see ``val_fraction``).
        val_fraction: when ``val`` is empty, hold out this fraction of ``train``'s shards (the
            last ones in manifest order, at least one) for validation; 0 = no validation set.
        num_workers: loader worker processes per rank (0 = read in the training process).
        transfer_batches: batches a worker ships per message (part of the resume layout).
        stream: the loader's own settings; ``batch_size`` comes from ``train.micro_batch_size``.
    """

    train: str = ""
    val: str = ""
    val_fraction: float = 0.0
    num_workers: int = 0
    transfer_batches: int = 8
    stream: StreamConfig = field(default_factory=_default_stream)


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (linear warmup, then ``schedule``)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    """Applied to matrices only (biases, norms and other 1-d parameters are not decayed)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"
    """``cosine`` | ``linear`` decay to ``min_lr_ratio * lr`` at ``train.max_steps``, or
    ``constant``."""
    min_lr_ratio: float = 0.1


@dataclass
class EarlyStoppingConfig:
    """Stop when the monitored validation metric has not improved for ``patience`` checks."""

    monitor: str = "val_loss"
    """``val_loss`` or ``val_<model metric>`` (e.g. ``val_mlm_acc``)."""
    patience: int = 0
    """Validation checks without improvement before stopping; 0 disables early stopping."""
    mode: str = "min"
    min_delta: float = 0.0


@dataclass
class LoopConfig:
    """The training loop: steps, batch, precision, ZeRO, validation, checkpoints, output."""

    max_steps: int = 100
    """Optimizer steps to run (each one is ``grad_accum`` micro-batches per rank)."""
    micro_batch_size: int = 8
    """Cells per micro-batch per rank (the loader's batch size)."""
    grad_accum: int = 1
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""
    precision: str = "fp32"
    zero_stage: int = 0
    seed: int = 0
    """Seeds model init and dropout (the data order has its own ``data.stream.seed``)."""
    log_every: int = 1
    val_every: int = 0
    """Validate every N steps (and at the end); 0 disables validation."""
    val_batches: int = 8
    """Micro-batches per rank per validation (the same cells and masks every time)."""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    ckpt_every: int = 0
    """Checkpoint every N steps; 0 = only at the end."""
    keep_last_k: int = 2
    """Complete checkpoints to keep (older ones are deleted); 0 keeps all."""
    resume: str = AUTO
    """``auto`` (newest complete checkpoint in ``out_dir``, else start fresh), ``none`` (start
    fresh, discarding earlier metrics) or a checkpoint path (a tag directory or a
    ``checkpoints/`` directory)."""
    out_dir: str = "runs/debug"
    compile: bool = False
    """``torch.compile`` each transformer block in place (state-dict keys unchanged); see
    :mod:`scforge.training.compile`."""
    gradient_checkpointing: bool = False
    """Recompute block activations in backward (sets ``model.gradient_checkpointing``)."""
    peak_tflops: float = 0.0
    """Peak dense TFLOP/s of one device for MFU; 0 = look GPUs up in a table (CPU: no MFU)."""
    export: bool = True
    """Write ``export/model.safetensors`` + ``config.json`` at the end of the run."""
    progress: bool = True
    """tqdm progress bar on rank 0."""


@dataclass
class WandbConfig:
    """Weights & Biases logging (rank 0); offline unless asked, so it never waits on network."""

    enabled: bool = False
    mode: str = "offline"
    project: str = "scforge"
    name: str = ""
    """Run name; empty = the run directory's name."""


@dataclass
class InTrainingEvalConfig:
    """Evaluation tasks (``scforge.eval``) on a small labelled AnnData during training.

    Every ``every`` steps (and after the last one when ``at_end``) rank 0 embeds the cells with
    the live model and runs ``tasks``; the scores are logged as ``kind: eval`` JSONL records
    (``eval/<task>/<metric>``) and mirrored to wandb.
    """

    every: int = 0
    """Evaluate every N optimizer steps; 0 disables in-training evaluation."""
    data: str = ""
    """Labelled h5ad with raw counts (tokenized once, like the training shards)."""
    tasks: list[str] = field(default_factory=lambda: ["linear_probe"])
    """Registered eval tasks; ``linear_probe`` is cheap, ``embedding_quality`` runs scib."""
    label_key: str = "cell_type"
    batch_key: str = "batch"
    max_cells: int = 2000
    """Seeded random subsample of this many cells (0 = all): keeps each check to seconds."""
    batch_size: int = 64
    seed: int = 0
    at_end: bool = True


@dataclass
class TrainConfig:
    """Everything a training run needs; ``configs/train/*.yaml`` are instances of it."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=_default_model)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    eval: InTrainingEvalConfig = field(default_factory=InTrainingEvalConfig)

    def validate(self) -> None:
        """Checks ranges and combinations, raising ``ConfigError`` naming the key and a fix."""
        _validate_model(self.model)
        _validate_data(self.data, self.train)
        _validate_optim(self.optim)
        _validate_loop(self.train, has_val=bool(self.data.val or self.data.val_fraction))
        if self.wandb.mode not in WANDB_MODES:
            raise ConfigError(f"wandb.mode={self.wandb.mode!r}; choose one of {list(WANDB_MODES)}")
        _validate_eval(self.eval)


def _validate_eval(e: InTrainingEvalConfig) -> None:
    if e.every < 0:
        raise ConfigError(f"eval.every={e.every} must be >= 0 (0 = no in-training evaluation)")
    if not e.every:
        return
    if not e.data:
        raise ConfigError(f"eval.every={e.every} but eval.data is empty; set it to a labelled "
                          "h5ad with raw counts, or eval.every=0")
    if not e.tasks:
        raise ConfigError("eval.tasks is empty; list at least one task, e.g. [linear_probe]")
    if e.max_cells < 0:
        raise ConfigError(f"eval.max_cells={e.max_cells} must be >= 0 (0 = all cells)")
    if e.batch_size < 1:
        raise ConfigError(f"eval.batch_size={e.batch_size} must be >= 1")


def _validate_model(m: ModelConfig) -> None:
    # "auto" and vocab 0 are filled from the shards later; check everything else now.
    probe = dataclasses.replace(m, value_mode="none" if m.value_mode == AUTO else m.value_mode)
    try:
        probe.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _validate_data(d: DataConfig, t: LoopConfig) -> None:
    if not d.train:
        raise ConfigError("data.train is empty; set it to a shard directory written by "
                          "scforge-shard (e.g. data.train=shards/pbmc)")
    if d.val and d.val_fraction:
        raise ConfigError(f"data.val={d.val!r} and data.val_fraction={d.val_fraction} are both "
                          "set; use a separate validation directory or a held-out fraction")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={d.val_fraction} must lie in [0, 1)")
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers={d.num_workers} must be >= 0 (0 = in-process)")
    if d.transfer_batches < 1:
        raise ConfigError(f"data.transfer_batches={d.transfer_batches} must be >= 1")
    s = d.stream
    if s.batch_size not in (DEFAULT_STREAM_BATCH, t.micro_batch_size):
        raise ConfigError(f"data.stream.batch_size={s.batch_size} conflicts with "
                          f"train.micro_batch_size={t.micro_batch_size}; set only "
                          "train.micro_batch_size (the loader's batch size is taken from it)")
    try:
        dataclasses.replace(s, batch_size=max(1, t.micro_batch_size)).validate()
    except ConfigError as e:
        raise ConfigError(f"data.stream.{e}") from None


def _validate_optim(o: OptimConfig) -> None:
    if o.lr <= 0:
        raise ConfigError(f"optim.lr={o.lr} must be > 0 (1e-4 to 1e-3 is typical)")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay={o.weight_decay} must be >= 0")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"optim.betas={list(o.betas)} must be two numbers in [0, 1), "
                          "e.g. [0.9, 0.999]")
    if o.eps <= 0:
        raise ConfigError(f"optim.eps={o.eps} must be > 0")
    if o.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be >= 0")
    if o.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={o.schedule!r}; choose one of {list(SCHEDULES)}")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio={o.min_lr_ratio} must lie in [0, 1]")


def _positive(t: LoopConfig, *keys: str, minimum: int = 1) -> None:
    for key in keys:
        if getattr(t, key) < minimum:
            raise ConfigError(f"train.{key}={getattr(t, key)} must be >= {minimum}")


def _validate_loop(t: LoopConfig, *, has_val: bool) -> None:
    _positive(t, "max_steps", "micro_batch_size", "grad_accum", "log_every", "val_batches")
    _positive(t, "val_every", "ckpt_every", "keep_last_k", "seed", minimum=0)
    if t.clip_grad < 0:
        raise ConfigError(f"train.clip_grad={t.clip_grad} must be >= 0 (0 disables clipping)")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision={t.precision!r}; choose one of {list(PRECISIONS)}")
    if t.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.zero_stage={t.zero_stage}; DeepSpeed ZeRO stages are 0-3")
    if not t.out_dir:
        raise ConfigError("train.out_dir is empty; set the run directory (e.g. runs/debug)")
    if t.peak_tflops < 0:
        raise ConfigError(f"train.peak_tflops={t.peak_tflops} must be >= 0 (0 = auto)")
    if t.resume not in (AUTO, "none") and not Path(t.resume).exists():
        raise ConfigError(f"train.resume={t.resume!r} is neither 'auto', 'none' nor an existing "
                          "checkpoint path")
    es = t.early_stopping
    if es.patience < 0:
        raise ConfigError(f"train.early_stopping.patience={es.patience} must be >= 0 (0 = off)")
    if es.mode not in MODES:
        raise ConfigError(f"train.early_stopping.mode={es.mode!r}; choose one of {list(MODES)}")
    if es.min_delta < 0:
        raise ConfigError(f"train.early_stopping.min_delta={es.min_delta} must be >= 0")
    if not es.monitor.startswith("val_"):
        raise ConfigError(f"train.early_stopping.monitor={es.monitor!r} must be a validation "
                          "metric: val_loss or val_<model metric> such as val_mlm_acc")
    if es.patience and not (t.val_every and has_val):
        raise ConfigError(f"train.early_stopping.patience={es.patience} needs validation: set "
                          "train.val_every > 0 and data.val or data.val_fraction")
    if t.val_every and not has_val:
        raise ConfigError(f"train.val_every={t.val_every} but there is no validation set; set "
                          "data.val=<shard dir> or data.val_fraction=0.1, or train.val_every=0")


def load_train_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()
                      ) -> TrainConfig:
    """Merges recipes and ``key=value`` overrides into a validated :class:`TrainConfig`.

    Raises:
        ConfigError: unknown key, wrong type, or an invalid value (the message names the key).
    """
    return load_config(TrainConfig, paths, overrides)
