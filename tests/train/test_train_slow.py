"""Slower trainer paths (opt in with --runslow): torch.compile, bf16 with ZeRO-2, DeepSpeed
launcher. Each checks the run trains and its export reloads without DeepSpeed."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from _train_util import DEBUG, PYTHON, REPO, small_config, small_overrides, subprocess_env

from scforge.training import load_pretrained, train


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    {"train.compile": True},
    {"train.precision": "bf16", "train.zero_stage": 2},
], ids=["compile", "bf16-zero2"])
def test_variant_trains_and_exports(extra, train_shards, tmp_path):
    cfg = small_config(train_shards("rank"), tmp_path / "run", **{
        "train.max_steps": 6, "data.stream.max_len": 64, **extra})
    result = train(cfg)
    assert result.step == 6 and all(map(torch.isfinite, map(torch.tensor, result.losses)))
    model = load_pretrained(result.export_dir)
    assert not any("_orig_mod" in k for k in model.state_dict())  # compile left keys alone
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights


@pytest.mark.slow
@pytest.mark.multiproc
def test_deepspeed_launcher_two_cpu_ranks(cb_rank_shards, tmp_path):
    out = tmp_path / "run"
    cmd = [PYTHON, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
           str(REPO / "scforge" / "train.py"), "--config", str(DEBUG),
           *small_overrides(cb_rank_shards, out, **{"train.max_steps": 6,
                                                    "train.zero_stage": 2})]
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads((out / "env.json").read_text())["world_size"] == 2
    assert load_pretrained(out / "export").config.vocab_size > 0
