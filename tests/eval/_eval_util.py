"""A briefly trained debug checkpoint shared by the eval and fine-tune tests (one per session).

pbmc cells cut to 64 rank-value tokens (the most expressed genes first), 100 debug steps through
the real trainer. The export is cached under the session's base temp dir so tests/eval and
tests/finetune train it once together.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports DeepSpeed
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[2]
MAX_LEN = 64


def make_shards(inp: Path, out: Path, *overrides: str) -> Path:
    from scforge.config import ShardJobConfig, load_config
    from scforge.data.shard import ShardJob

    cfg = load_config(ShardJobConfig, [REPO / "configs/shard/geneformer_v2.yaml"],
                      [f"tokenizer.max_length={MAX_LEN}", *overrides])
    ShardJob([str(inp)], out, cfg, progress=False).run()
    return out


def random_export(base: Path, pbmc: Path) -> Path:
    """``<base>/eval_random/export``: a freshly initialised debug encoder exported with the
    manifest of pbmc shards (64 tokens). Enough for every mechanical test, built in a second."""
    import anndata as ad
    import numpy as np
    import torch

    from scforge.data.shard import load_manifest
    from scforge.models import ModelConfig, get_model
    from scforge.training.export import export_pretrained

    root = base / "eval_random"
    export = root / "export"
    if (export / "model.safetensors").is_file():
        return export
    a = ad.read_h5ad(pbmc)
    small = root / "cells.h5ad"
    root.mkdir(parents=True, exist_ok=True)
    a[np.arange(0, a.n_obs, 100)].copy().write_h5ad(small)
    shards = make_shards(small, root / "shards", "shard.cells_per_shard=200")
    torch.manual_seed(0)
    cfg = ModelConfig(family="transformer_encoder", preset="debug", vocab_size=20275,
                      max_len=MAX_LEN, dropout=0.0)
    model = get_model(cfg)
    return export_pretrained(export, model.config, model.state_dict(),
                             manifest=load_manifest(shards), extra={"step": 0})


def trained_export(base: Path, pbmc: Path) -> Path:
    """``<base>/eval_ckpt/run/export``, trained on first use."""
    root = base / "eval_ckpt"
    export = root / "run" / "export"
    if (export / "model.safetensors").is_file():
        return export
    from scforge.training import load_train_config
    from scforge.training.trainer import train

    shards = make_shards(pbmc, root / "shards", "shard.cells_per_shard=2000")
    over = {"data.train": shards, "data.val_fraction": 0.0, "train.val_every": 0,
            "train.out_dir": root / "run", "train.max_steps": 100,
            "train.micro_batch_size": 16, "train.ckpt_every": 0, "train.progress": False,
            "data.stream.max_len": MAX_LEN, "model.max_len": MAX_LEN}
    cfg = load_train_config([REPO / "configs/train/debug.yaml"],
                            [f"{k}={v}" for k, v in over.items()])
    result = train(cfg)
    assert result.export_dir is not None
    return Path(result.export_dir)
