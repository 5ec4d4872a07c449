"""What every run directory records about itself: resolved config, DeepSpeed config, provenance.

``config.yaml`` (the resolved :class:`TrainConfig`, after binding to the data, so vocabulary
size and value mode are explicit), ``ds_config.json`` (generated, never hand-written) and
``env.json`` (package versions, git revision, host, world size, device) are written by rank 0
when a run starts; a resumed run rewrites them (the previous ones are kept with a step suffix
when they differ).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from scforge.config.loader import to_yaml

PACKAGES = ("scforge", "torch", "deepspeed", "numpy", "numba", "safetensors", "omegaconf",
            "wandb", "transformers")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that decide a run's numerics."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_revision(where: Path | None = None) -> str:
    """``git describe``-style revision of the source tree (``-dirty`` when modified), or ''."""
    where = where or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{rev}-dirty" if rev and dirty.strip() else rev


def environment(world_size: int, device: torch.device) -> dict[str, Any]:
    """Provenance of a run: versions, git revision, host, Python, devices."""
    env: dict[str, Any] = {
        "versions": package_versions(),
        "git": git_revision(),
        "host": platform.node(),
        "python": sys.version.split()[0],
        "world_size": world_size,
        "device": str(device),
        "argv": sys.argv,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _write_keeping_old(path: Path, text: str, step: int) -> None:
    if path.is_file() and path.read_text() != text:
        path.rename(path.with_name(f"{path.stem}.before_step{step}{path.suffix}"))
    path.write_text(text)


def write_run_files(out_dir: Path, cfg: Any, ds_config: dict[str, Any], env: dict[str, Any],
                    *, step: int = 0) -> None:
    """Writes ``config.yaml``, ``ds_config.json`` and ``env.json`` (rank 0 only)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_keeping_old(out_dir / "config.yaml", to_yaml(cfg), step)
    _write_keeping_old(out_dir / "ds_config.json", json.dumps(ds_config, indent=1) + "\n", step)
    (out_dir / "env.json").write_text(json.dumps(env, indent=1, default=str) + "\n")
