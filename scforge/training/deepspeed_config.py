"""The DeepSpeed JSON config, generated from :class:`TrainConfig` (never kept by hand).

One source of truth: batch sizes, accumulation, clipping, precision and ZeRO stage live in the
training config; this module only translates them. The run directory stores the result as
``ds_config.json`` next to the resolved YAML, so a run can be inspected or reproduced with plain
DeepSpeed tooling.

The optimizer is *not* described here: the trainer passes a ``torch.optim.AdamW`` instance, which
avoids DeepSpeed's FusedAdam JIT build (~47 s on CPU) and works on every accelerator. For a
config-defined optimizer, :func:`deepspeed_config` can add one with ``torch_adam: true``.
"""

from __future__ import annotations

from typing import Any

from scforge.training.config import TrainConfig

STEPS_PER_PRINT = 10**9
"""DeepSpeed's own periodic logging is off; the trainer's JSONL and progress bar replace it."""


def zero_section(stage: int, *, on_gpu: bool) -> dict[str, Any]:
    """ZeRO settings for ``stage`` (0 = plain data parallel)."""
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 2:
        # Overlapping reduce-scatter with backward helps on GPUs; gloo on CPU gains nothing and
        # the extra buffers only cost memory.
        zero.update(contiguous_gradients=True, overlap_comm=on_gpu)
    if stage == 3:
        zero.update(
            # Consolidated fp32 weights come from the checkpoint via zero_to_fp32, so the
            # 16-bit gather at save time (an extra full copy on rank 0) is not needed.
            stage3_gather_16bit_weights_on_model_save=False,
            stage3_param_persistence_threshold=10_000,
        )
    return zero


def precision_section(precision: str) -> dict[str, Any]:
    """``bf16`` / ``fp16`` blocks (fp32 needs none)."""
    if precision == "bf16":
        return {"bf16": {"enabled": True}}
    if precision == "fp16":
        # Dynamic loss scaling from 2**16, halving on overflow (skipped steps are counted).
        return {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                         "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}}
    return {}


def deepspeed_config(cfg: TrainConfig, *, world_size: int, on_gpu: bool = False,
                     with_optimizer: bool = False) -> dict[str, Any]:
    """The DeepSpeed config dict of a run.

    Args:
        cfg: the (resolved) training config.
        world_size: data-parallel ranks, so ``train_batch_size`` is explicit in the file.
        on_gpu: tune ZeRO communication overlap for GPUs.
        with_optimizer: also describe AdamW (``torch_adam``) for callers that let DeepSpeed
            build the optimizer; the trainer passes its own instance and leaves this off.

    Returns:
        A JSON-able dict for ``deepspeed.initialize(config=...)``.
    """
    t = cfg.train
    ds: dict[str, Any] = {
        "train_batch_size": t.micro_batch_size * t.grad_accum * world_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": float(t.clip_grad),
        "zero_optimization": zero_section(t.zero_stage, on_gpu=on_gpu),
        # torch.optim.AdamW is exact under ZeRO; DeepSpeed only lists its own optimizers.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
        **precision_section(t.precision),
    }
    if with_optimizer:
        o = cfg.optim
        ds["optimizer"] = {"type": "AdamW", "params": {
            "lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay,
            "torch_adam": True}}
    return ds
