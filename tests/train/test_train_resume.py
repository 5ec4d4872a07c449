"""Kill -9 after a checkpoint, rerun with resume=auto: the loss sequence equals the unbroken run.

CPU fp32 with dropout on, a loader worker process and periodic validation: the checkpoint must
carry the loader position and every RNG state, and neither the DataLoader nor validation may
disturb the dropout stream. Both runs are subprocesses with the same thread count, so any
difference is the resume's, not the environment's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from _train_util import DEBUG, PYTHON, REPO, small_overrides, subprocess_env


def _cmd(shards: Path, out_dir: Path) -> list[str]:
    extra = {"model.dropout": 0.1, "data.num_workers": 1, "data.val_fraction": 0.25,
             "train.val_every": 10, "train.val_batches": 2, "train.ckpt_every": 10,
             "train.keep_last_k": 2, "optim.schedule": "cosine"}
    return [PYTHON, "-m", "scforge.train", "--config", str(DEBUG),
            *small_overrides(shards, out_dir, **extra)]


def _records(out_dir: Path) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_kill9_then_resume_reproduces_the_unbroken_losses(cb_rank_shards, tmp_path):
    env = subprocess_env()
    whole = tmp_path / "whole"
    subprocess.run(_cmd(cb_rank_shards, whole), check=True, cwd=REPO, env=env,
                   capture_output=True, timeout=300)

    broken = tmp_path / "broken"
    # Own session: SIGKILL then reaches the trainer's loader workers and forkserver too, as a
    # crashed node would (killing only the trainer leaves them orphaned).
    proc = subprocess.Popen(_cmd(cb_rank_shards, broken), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = broken / "checkpoints" / "step_00000020" / "complete.json"
    deadline = time.time() + 240
    while time.time() < deadline and not marker.is_file() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.is_file(), "the run never reached its step-20 checkpoint"
    killed_at = max(r["step"] for r in _records(broken))
    assert killed_at < 30, "the run finished before it could be killed; slow it down"

    done = subprocess.run(_cmd(cb_rank_shards, broken), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _records(whole), _records(broken)
    train_a = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in a if r["kind"] == "train"]
    train_b = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in b if r["kind"] == "train"]
    assert [s for s, *_ in train_b] == list(range(1, 31))
    assert train_b == train_a  # bit-identical: loss, gradient norm and learning rate
    val_a = [(r["step"], r["val_loss"]) for r in a if r["kind"] == "val"]
    val_b = [(r["step"], r["val_loss"]) for r in b if r["kind"] == "val"]
    assert val_b == val_a and len(val_a) == 3
    steps = sorted(p.name for p in (broken / "checkpoints").glob("step_*"))
    assert steps == ["step_00000020", "step_00000030"]  # keep_last_k=2
