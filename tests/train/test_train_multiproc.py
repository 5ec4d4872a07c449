"""Two ZeRO-2 ranks and one process with the same global batch give the same losses.

The batches are made identical, not just equally sized: with shuffling and bucketing off, the
one-process run reads its rank span through 2 loader workers whose spans are exactly the two
ranks' spans, delivered round-robin one batch at a time, and accumulates 2 micro-batches per
step; masks are keyed on cell identity, not position. So both runs average the same two
micro-batch gradients each step and only the reduction order differs (float rounding).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from _train_util import DEBUG, PYTHON, REPO, small_overrides, subprocess_env

COMMON = {"train.max_steps": 12, "train.micro_batch_size": 8, "model.dropout": 0.0,
          "data.stream.shuffle": False, "data.stream.bucketing.enabled": False,
          "data.transfer_batches": 1, "optim.lr": 2e-3}


def _losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.mark.multiproc
def test_two_rank_zero2_matches_one_process_with_same_global_batch(cb_rank_shards, tmp_path):
    two = tmp_path / "two"
    _run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          str(REPO / "scforge" / "train.py"), "--config", str(DEBUG),
          *small_overrides(cb_rank_shards, two, **COMMON, **{
              "train.zero_stage": 2, "train.grad_accum": 1, "data.num_workers": 0})])
    one = tmp_path / "one"
    _run([PYTHON, "-m", "scforge.train", "--config", str(DEBUG),
          *small_overrides(cb_rank_shards, one, **COMMON, **{
              "train.zero_stage": 0, "train.grad_accum": 2, "data.num_workers": 2})])
    env = json.loads((two / "env.json").read_text())
    assert env["world_size"] == 2
    ds = json.loads((two / "ds_config.json").read_text())
    assert ds["train_batch_size"] == 16 and ds["zero_optimization"]["stage"] == 2
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 12
    assert a[-1] < a[0]
    assert b == pytest.approx(a, rel=2e-5, abs=2e-5)
