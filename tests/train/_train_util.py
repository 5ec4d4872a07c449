"""Helpers of the trainer tests: fast configs and clean subprocess environments."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports DeepSpeed
os.environ.setdefault("WANDB_MODE", "offline")

from scforge.config import ShardJobConfig, load_config  # noqa: E402
from scforge.data.shard import ShardJob  # noqa: E402
from scforge.training import TrainConfig, load_train_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "configs" / "shard"
DEBUG = REPO / "configs" / "train" / "debug.yaml"
RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
TOKENIZERS = {"rank": "geneformer_v2.yaml", "binned": "scgpt_binned.yaml",
              "continuous": "continuous.yaml"}


def make_shards(inp: Path, out: Path, recipe: str, *overrides: str) -> Path:
    cfg = load_config(ShardJobConfig, [RECIPES / recipe], list(overrides))
    ShardJob([str(inp)], out, cfg, progress=False).run()
    return out


def small_overrides(shards: Path, out_dir: Path, **extra: object) -> list[str]:
    """Dotlist overrides of the debug recipe for a fast test run (no validation, no bar)."""
    base: dict[str, object] = {
        "data.train": shards, "data.val_fraction": 0.0, "train.val_every": 0,
        "train.out_dir": out_dir, "train.max_steps": 30, "train.micro_batch_size": 8,
        "train.log_every": 1, "train.ckpt_every": 0, "train.progress": False,
        "optim.warmup_steps": 5, "optim.lr": 3e-3, "optim.schedule": "constant",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def small_config(shards: Path, out_dir: Path, **extra: object) -> TrainConfig:
    return load_train_config([DEBUG], small_overrides(shards, out_dir, **extra))


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment minus the rendezvous variables an in-process run left behind."""
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(DS_ACCELERATOR="cpu", WANDB_MODE="offline", OMP_NUM_THREADS="1", **extra)
    return env


PYTHON = sys.executable
