"""Two ZeRO-2 ranks fine-tune through torchrun: rank 0 writes the shards, both train, one export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


@pytest.mark.multiproc
def test_two_rank_zero2_finetune(debug_export, pbmc_path, tmp_path):
    a = ad.read_h5ad(pbmc_path)
    a[np.sort(np.random.default_rng(0).choice(a.n_obs, 128, replace=False))].copy().write_h5ad(
        tmp_path / "cells.h5ad")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    env.update(DS_ACCELERATOR="cpu", WANDB_MODE="offline", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "scforge.finetune.train", "--checkpoint", str(debug_export),
           f"data={tmp_path / 'cells.h5ad'}", f"out_dir={out}", "epochs=2",
           "batch_size=16", "val_fraction=0.25", "zero_stage=2", "log_every=1",
           "progress=false"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert json.loads((out / "env.json").read_text())["world_size"] == 2
    ds = json.loads((out / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_batch_size"] == 32
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in train if r["kind"] == "train"]
    assert steps == list(range(1, 7))  # 96 training cells / (2 ranks x 16) = 3 steps per epoch
    from scforge.finetune import load_finetuned, predict

    _, meta = load_finetuned(out)
    assert len(meta["history"]) == 2 and meta["n_train"] == 96
    pred = predict(out, a[:20].copy(), None, device="cpu")
    assert set(pred.obs["scforge_pred"]) <= set(meta["classes"])
