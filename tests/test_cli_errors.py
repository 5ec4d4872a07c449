"""Bad input at every command ends in one line: exit status 2, no traceback, one stderr line that
names the problem (and the fix), and no partial output a rerun would take for finished work.

Each case runs the real command in a fresh interpreter (``python -m scforge.cli ...``), as a user
would. Read-only and full output directories are real file systems (tmpfs mounts) when this
process may mount them, otherwise a non-writable directory (non-root) and a file-size limit.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _testpaths import REPO, shared

PY = sys.executable
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
ENV.pop("SCFORGE_TRACEBACK", None)
TRAIN = ["train", "--config", str(REPO / "configs/train/debug.yaml"), "data.stream.max_len=64",
         "model.max_len=64", "train.micro_batch_size=8", "train.max_steps=3",
         "train.progress=false", "data.num_workers=0"]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """Small real inputs: 107 pbmc cells, their shards (V2 and V1 vocabularies, 64 tokens, six
    shards), a corrupt and a truncated copy, a non-h5ad file and a random-init export."""
    import anndata as ad
    import numpy as np
    import torch

    from scforge.config import ShardJobConfig, load_config
    from scforge.data.shard import ShardJob, load_manifest
    from scforge.models import ModelConfig, get_model
    from scforge.training.export import export_pretrained

    root = tmp_path_factory.mktemp("cli_errors")
    a = ad.read_h5ad(shared("pbmc_2batch.h5ad"))
    cells = root / "cells.h5ad"
    a[np.arange(0, a.n_obs, 100)].copy().write_h5ad(cells)
    out: dict[str, Path] = {"root": root, "cells": cells}
    for name, recipe in (("shards", "geneformer_v2.yaml"), ("v1_shards", "geneformer_v1.yaml")):
        cfg = load_config(ShardJobConfig, [REPO / "configs/shard" / recipe],
                          ["tokenizer.max_length=64", "shard.cells_per_shard=20"])
        ShardJob([str(cells)], root / name, cfg, progress=False).run()
        out[name] = root / name
    corrupt = shutil.copytree(out["shards"], root / "corrupt")
    tar = corrupt / "shard-000001.tar"
    data = bytearray(tar.read_bytes())
    data[3000] ^= 0xFF
    tar.write_bytes(bytes(data))
    truncated = shutil.copytree(out["shards"], root / "truncated")
    with open(truncated / "shard-000001.tar", "r+b") as f:
        f.truncate(3000)
    out["corrupt"], out["truncated"] = corrupt, truncated
    (root / "not_h5ad.h5ad").write_text("cell,gene\nc1,3\n")
    out["not_h5ad"] = root / "not_h5ad.h5ad"
    torch.manual_seed(0)
    mcfg = ModelConfig(family="transformer_encoder", preset="debug", vocab_size=20275,
                       max_len=64, dropout=0.0)
    model = get_model(mcfg)
    out["export"] = export_pretrained(root / "export", model.config, model.state_dict(),
                                      manifest=load_manifest(out["shards"]), extra={"step": 0})
    return out


def _mount_tmpfs(path: Path, options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    return proc.returncode == 0


@contextlib.contextmanager
def _output_dir(tmp_path: Path, kind: str) -> Iterator[tuple[Path, Callable[[], None] | None]]:
    """``(directory, preexec)``: a read-only or a full directory, and what the child process
    must run first (a file-size limit where no small tmpfs can be mounted)."""
    d = tmp_path / kind
    d.mkdir()
    mounted = _mount_tmpfs(d, "ro,size=1m" if kind == "readonly" else "size=8k,nr_inodes=64")
    preexec = None
    if not mounted:
        if kind == "readonly":
            if os.geteuid() == 0:
                pytest.skip("root without mount(2): no way to make a directory read-only here")
            d.chmod(0o555)
        else:
            def preexec() -> None:  # writes past 8 KiB fail with EFBIG, as a full disk would
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
    try:
        yield d, preexec
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)
        else:
            d.chmod(0o755)


def run(args: list[str], *, preexec: Callable[[], None] | None = None,
        timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "scforge.cli", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=REPO, timeout=timeout, preexec_fn=preexec)


def assert_one_line(proc: subprocess.CompletedProcess, prog: str, *needles: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    lines = err.splitlines()
    assert len(lines) == 1, err[-3000:]
    line = lines[0]
    assert line.startswith(f"{prog}: error: "), line
    for n in needles:
        assert n.lower() in line.lower(), (n, line)
    return line


def no_finished_shards(out: Path) -> None:
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("shard-*.tar.json")) if out.is_dir() else True


def no_finished_run(out: Path) -> None:
    assert not (out / "export" / "config.json").exists()
    assert not list(out.glob("checkpoints/*/complete.json"))


# ----------------------------------------------------------------------------- scforge shard
def test_shard_missing_input(work):
    out = work["root"] / "o_missing"
    proc = run(["shard", work["root"] / "nope.h5ad", "--out", out, "--no-progress"])
    assert_one_line(proc, "scforge-shard", "nope.h5ad", "does not exist")
    no_finished_shards(out)


def test_shard_not_h5ad(work):
    out = work["root"] / "o_not_h5ad"
    proc = run(["shard", work["not_h5ad"], "--out", out, "--no-progress"])
    assert_one_line(proc, "scforge-shard", "not a readable HDF5", "write_h5ad")
    no_finished_shards(out)


def test_shard_unknown_key(work):
    out = work["root"] / "o_key"
    proc = run(["shard", work["cells"], "--out", out, "shard.cells_per_shards=20"])
    assert_one_line(proc, "scforge-shard", "shard.cells_per_shards", "did you mean",
                    "shard.cells_per_shard")
    no_finished_shards(out)


@pytest.mark.parametrize("kind", ["readonly", "full"])
def test_shard_unwritable_output(work, tmp_path, kind):
    with _output_dir(tmp_path, kind) as (d, preexec):
        out = d / "shards"
        proc = run(["shard", work["cells"], "--out", out, "--no-progress",
                    "--config", REPO / "configs/shard/geneformer_v2.yaml",
                    "tokenizer.max_length=64", "shard.cells_per_shard=20"], preexec=preexec)
        assert_one_line(proc, "scforge-shard", *_fs_needles(kind, preexec))
        no_finished_shards(out)


def _fs_needles(kind: str, preexec) -> tuple[str, ...]:
    if kind == "readonly":
        return ("read-only",) if os.geteuid() == 0 else ("permission",)
    return ("size limit",) if preexec else ("disk is full",)


# ----------------------------------------------------------------------------- inspect / stats
def test_inspect_missing_dir(work):
    proc = run(["inspect", work["root"] / "nope"])
    assert_one_line(proc, "scforge-shard", "not a finished scforge shard directory", "scforge-shard merge")


def test_inspect_truncated_shard(work):
    proc = run(["inspect", work["truncated"]])
    assert_one_line(proc, "scforge-shard", "shard-000001.tar", "truncated", "re-shard")


def test_stats_not_h5ad(work):
    out = work["root"] / "medians.json"
    proc = run(["stats", work["not_h5ad"], "--out", out, "--no-progress"])
    assert_one_line(proc, "scforge-shard", "not a readable HDF5")
    assert not out.exists()


# ----------------------------------------------------------------------------- train
@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing", ("manifest.json not found",)),
        ("corrupt", ("shard-000001.tar", "sha256", "re-shard or restore")),
        ("truncated", ("shard-000001.tar", "truncated", "re-shard or restore")),
        ("heads", ("model.num_heads=7", "does not divide", "pick a divisor")),
        ("key", ("train.max_step", "did you mean train.max_steps")),
    ],
)
def test_train_bad_input(work, tmp_path, case, needles):
    data = {"missing": work["root"] / "nope", "corrupt": work["corrupt"],
            "truncated": work["truncated"]}.get(case, work["shards"])
    extra = {"corrupt": ["data.stream.verify=always"], "heads": ["model.num_heads=7"],
             "key": ["train.max_step=3"]}.get(case, [])
    out = tmp_path / "run"
    proc = run([*TRAIN, f"data.train={data}", f"train.out_dir={out}", "train.max_steps=20",
                *extra])
    assert_one_line(proc, "scforge train", *needles)
    no_finished_run(out)


@pytest.mark.parametrize("kind", ["readonly", "full"])
def test_train_unwritable_run_dir(work, tmp_path, kind):
    with _output_dir(tmp_path, kind) as (d, preexec):
        out = d / "run"
        proc = run([*TRAIN, f"data.train={work['shards']}", f"train.out_dir={out}"],
                   preexec=preexec)
        assert_one_line(proc, "scforge train", *_fs_needles(kind, preexec))
        no_finished_run(out)


def test_train_resume_from_another_vocabulary(work, tmp_path):
    out = tmp_path / "run"
    first = run([*TRAIN, f"data.train={work['shards']}", f"train.out_dir={out}",
                 "train.max_steps=2"])
    assert first.returncode == 0, first.stderr[-2000:]
    proc = run([*TRAIN, f"data.train={work['v1_shards']}", f"train.out_dir={out}",
                "train.max_steps=4", "train.resume=auto"])
    line = assert_one_line(proc, "scforge train", "another vocabulary", "vocab_size",
                           "train.resume=none")
    assert "20275" in line and "25426" in line
    steps = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert steps == ["step_00000002"], steps  # nothing written by the refused run


# ----------------------------------------------------------------------------- embed / predict
def test_embed_missing_checkpoint(work):
    out = work["root"] / "e_missing.h5ad"
    proc = run(["embed", "--checkpoint", work["root"] / "nope", "--data", work["cells"],
                "--out", out])
    assert_one_line(proc, "scforge embed", "config.json does not exist", "<run>/export")
    assert not out.exists()


def test_embed_not_h5ad(work):
    out = work["root"] / "e_not.h5ad"
    proc = run(["embed", "--checkpoint", work["export"], "--data", work["not_h5ad"],
                "--out", out])
    assert_one_line(proc, "scforge embed", "not a readable HDF5", "write_h5ad")
    assert not out.exists()


def test_embed_shards_of_another_vocabulary(work):
    out = work["root"] / "e_vocab.h5ad"
    proc = run(["embed", "--checkpoint", work["export"], "--data", work["v1_shards"],
                "--out", out])
    assert_one_line(proc, "scforge embed", "differs from the checkpoint", "re-tokenize")
    assert not out.exists()


@pytest.mark.parametrize("kind", ["readonly", "full"])
def test_embed_unwritable_output(work, tmp_path, kind):
    with _output_dir(tmp_path, kind) as (d, preexec):
        out = d / "emb.h5ad"
        proc = run(["embed", "--checkpoint", work["export"], "--data", work["cells"],
                    "--out", out, "--no-progress"], preexec=preexec)
        assert_one_line(proc, "scforge embed", *_fs_needles(kind, preexec))
        assert not out.exists()
        assert not [p for p in d.iterdir() if p.name.startswith(".emb")]


def test_embed_missing_argument():
    proc = run(["embed", "--data", "x.h5ad"])
    assert_one_line(proc, "scforge embed", "--checkpoint", "--help")


def test_predict_missing_model(work):
    out = work["root"] / "p.h5ad"
    proc = run(["predict", "--model", work["root"] / "nope", "--data", work["cells"],
                "--out", out])
    assert_one_line(proc, "scforge predict", "nope")
    assert not out.exists()


# ----------------------------------------------------------------------------- evaluate / finetune
def test_evaluate_missing_checkpoint(work, tmp_path):
    proc = run(["evaluate", "--config", REPO / "configs/eval/pbmc.yaml",
                f"checkpoint={work['root'] / 'nope'}", f"data={work['cells']}",
                f"out_dir={tmp_path / 'ev'}"])
    assert_one_line(proc, "scforge evaluate", "config.json does not exist")
    assert not (tmp_path / "ev" / "report.json").exists()


def test_evaluate_unknown_key(work, tmp_path):
    proc = run(["evaluate", "--config", REPO / "configs/eval/pbmc.yaml",
                f"checkpoint={work['export']}", "max_cell=10"])
    assert_one_line(proc, "scforge evaluate", "max_cell", "did you mean max_cells")


def test_finetune_missing_checkpoint(work, tmp_path):
    out = tmp_path / "ft"
    proc = run(["finetune", "--config", REPO / "configs/finetune/pbmc_celltype.yaml",
                "--checkpoint", work["root"] / "nope", f"data={work['cells']}",
                f"out_dir={out}"])
    assert_one_line(proc, "scforge finetune", "nope")
    no_finished_run(out)


def test_finetune_not_h5ad(work, tmp_path):
    out = tmp_path / "ft"
    proc = run(["finetune", "--config", REPO / "configs/finetune/pbmc_celltype.yaml",
                "--checkpoint", work["export"], f"data={work['not_h5ad']}", f"out_dir={out}"])
    assert_one_line(proc, "scforge finetune", "not a readable HDF5")
    no_finished_run(out)


# ----------------------------------------------------------------------------- demo / bench / top
def test_demo_readonly_output(tmp_path):
    with _output_dir(tmp_path, "readonly") as (d, _):
        proc = run(["demo", "--quick", "--out", d / "demo", "--no-progress"])
        assert_one_line(proc, "scforge demo", *_fs_needles("readonly", None))
        assert not (d / "demo" / "report.md").exists()


def test_demo_unknown_strategy():
    proc = run(["demo", "--strategy", "nope"])
    assert_one_line(proc, "scforge demo", "invalid choice", "rank_value")


def test_bench_unknown_stage():
    proc = run(["bench", "--stages", "nope"])
    assert_one_line(proc, "scforge bench", "unknown stage", "tokenize")


def test_unknown_command():
    proc = run(["tokenise"])
    assert_one_line(proc, "scforge", "unknown command 'tokenise'", "shard")


def test_inspect_verify_finds_a_corrupt_shard(work):
    assert run(["inspect", work["corrupt"]]).returncode == 0  # sizes match: summary only
    proc = run(["inspect", work["corrupt"], "--verify"])
    assert_one_line(proc, "scforge-shard", "shard-000001.tar", "sha256", "re-shard")


@pytest.mark.multiproc
def test_corrupt_shard_one_rank_reads_stops_every_rank(work, tmp_path):
    """Two ZeRO-2 ranks over torchrun; only rank 1 reads the corrupt shard (no shuffle: rank 1
    reads the second half). Both ranks end with the one line (rank 0 names rank 1) instead of
    rank 0 waiting forever in the next gradient collective."""
    data = shutil.copytree(work["shards"], tmp_path / "shards")
    tar = data / "shard-000004.tar"
    blob = bytearray(tar.read_bytes())
    blob[3000] ^= 0xFF
    tar.write_bytes(bytes(blob))
    out = tmp_path / "run"
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "scforge" / "train.py"), *TRAIN[1:], f"data.train={data}",
           f"train.out_dir={out}", "train.max_steps=40", "train.zero_stage=2",
           "data.stream.verify=always", "data.stream.shuffle=false", "data.val_fraction=0",
           "train.val_every=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": "1"},
                          cwd=REPO, timeout=300)
    assert proc.returncode != 0
    ours = [ln.split("scforge train: error: ", 1)[1] for ln in proc.stderr.splitlines()
            if "scforge train: error: " in ln]
    assert len(ours) == 2, proc.stderr[-4000:]
    assert "Traceback" not in "\n".join(ln for ln in proc.stderr.splitlines()
                                        if ln.startswith("[rank"))
    own = [m for m in ours if m.startswith("shard ")]
    peer = [m for m in ours if m.startswith("rank 1 stopped: shard ")]
    assert len(own) == 1 and len(peer) == 1, ours
    assert "shard-000004.tar fails its sha256 check" in own[0] and own[0] in peer[0]
    no_finished_run(out)
