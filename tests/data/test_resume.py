"""A sharding job killed with SIGKILL and rerun produces byte-identical output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ARGS = [
    "shard.cells_per_shard=1000",
    "source.chunk_cells=256",
    "shard.block_cells=128",
    "--no-progress",
]


def _cmd(inp: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "scforge.data.shard.cli", str(inp), "--out", str(out), *ARGS]


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}


def test_kill9_then_rerun_is_byte_identical(tmp_path, pbmc_path):
    whole = tmp_path / "whole"
    subprocess.run(_cmd(pbmc_path, whole), check=True, capture_output=True)

    out = tmp_path / "crashed"
    env = {**os.environ, "SCFORGE_SHARD_CHUNK_DELAY": "0.25"}
    proc = subprocess.Popen(
        _cmd(pbmc_path, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("shard-*.tar.json"))) < 2:
        time.sleep(0.05)
    time.sleep(0.3)  # land inside the next shard
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.name for p in out.glob("shard-*.tar.json"))
    assert 2 <= len(done_before) < 11, done_before
    assert not (out / "manifest.json").exists()
    # Every listed shard is complete; the one in flight exists only under a temp name.
    assert all((out / n[: -len(".json")]).is_file() for n in done_before)

    rerun = subprocess.run(_cmd(pbmc_path, out), capture_output=True, text=True, check=True)
    assert f"({len(done_before)} already done)" in rerun.stdout
    assert not list(out.glob(".*tmp*"))
    assert _files(out) == _files(whole)
    assert (out / "manifest.json").read_text() == (whole / "manifest.json").read_text().replace(
        str(whole), str(out)
    )
