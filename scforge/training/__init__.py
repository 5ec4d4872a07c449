"""Training core: registry models trained from scforge shards with DeepSpeed ZeRO.

Launch (see ``docker/README.md`` for multi-node)::

    python -m scforge.train --config configs/train/debug.yaml           # one process (CPU/GPU)
    deepspeed scforge/train.py --config configs/train/base.yaml          # all local GPUs
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 scforge/train.py --config ...  # 2 CPU ranks

Library use::

    from scforge.training import load_train_config, train, load_pretrained

    cfg = load_train_config(["configs/train/debug.yaml"], ["data.train=shards/pbmc"])
    result = train(cfg)                        # TrainResult: losses, checkpoint, export_dir
    model = load_pretrained(result.export_dir) # plain PyTorch, no DeepSpeed

Modules: ``config`` (schema), ``data`` (binding to shards, loaders), ``deepspeed_config``
(generated DeepSpeed JSON), ``distributed`` (process group), ``optim`` (AdamW + schedule),
``trainer`` (the loop), ``validation``, ``checkpoint``, ``export``, ``metrics``, ``rundir``,
``cli`` (``main(argv)``). Importing this package does not import DeepSpeed.
"""

from __future__ import annotations

from scforge.training.config import (
    DataConfig,
    EarlyStoppingConfig,
    LoopConfig,
    OptimConfig,
    TrainConfig,
    WandbConfig,
    load_train_config,
)
from scforge.training.export import export_pretrained, load_pretrained, read_pretrained_info

__all__ = [
    "DataConfig",
    "EarlyStoppingConfig",
    "LoopConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "WandbConfig",
    "deepspeed_config",
    "export_pretrained",
    "load_pretrained",
    "load_train_config",
    "main",
    "read_pretrained_info",
    "train",
]


def __getattr__(name: str):  # lazy: the trainer pulls in DeepSpeed, which must see DS_ACCELERATOR
    if name in ("Trainer", "TrainResult", "train"):
        from scforge.training import trainer

        return getattr(trainer, name)
    if name == "deepspeed_config":
        from scforge.training.deepspeed_config import deepspeed_config

        return deepspeed_config
    if name == "main":
        from scforge.training.cli import main

        return main
    raise AttributeError(f"module 'scforge.training' has no attribute {name!r}")
