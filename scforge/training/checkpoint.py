"""Training checkpoints: DeepSpeed engine state plus what makes a resume exact.

Layout under ``<out_dir>/checkpoints/``::

    step_00000020/                  one DeepSpeed tag per checkpoint
        mp_rank_00_model_states.pt  (DeepSpeed: module, client_state = step, config, ...)
        *_optim_states.pt           (DeepSpeed: optimizer partitions, one per rank)
        trainer_state_rank00000.json  this rank's loader position and RNG states (JSON)
        complete.json               written last, after every rank finished: a completion marker

A checkpoint without ``complete.json`` (a process killed while saving) is ignored by
``resume=auto`` and pruned later. Per-rank state is JSON rather than DeepSpeed ``client_state``
because DeepSpeed stores ``client_state`` from rank 0 only, and every rank has its own dropout
RNG; JSON also keeps pickle out of what this module reads. (DeepSpeed's own ``.pt`` files are
read by DeepSpeed itself, which unpickles them: resume only from checkpoints you wrote.)
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scforge.training.distributed import World, agreed

CHECKPOINTS = "checkpoints"
COMPLETE = "complete.json"
STATE_FORMAT = "scforge-trainer-state"
STATE_VERSION = 1
_TAG = re.compile(r"^step_(\d{8})$")


def tag_for(step: int) -> str:
    """DeepSpeed tag (directory name) of the checkpoint taken after optimizer step ``step``."""
    return f"step_{step:08d}"


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) RNG states as JSON-able values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one


def rank_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"trainer_state_rank{rank:05d}.json"


def complete_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(step, tag directory)`` of every complete checkpoint, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _TAG.match(p.name)
        if m and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_resume(resume: str, out_dir: Path) -> Path | None:
    """The tag directory to resume from, or None to start fresh.

    Args:
        resume: ``auto`` (newest complete checkpoint of ``out_dir``), ``none``, or a path to a
            tag directory or to a directory of tags.
        out_dir: the run directory.

    Raises:
        FileNotFoundError: an explicit path holds no complete checkpoint.
    """
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(out_dir / CHECKPOINTS)
        return found[-1][1] if found else None
    path = Path(resume)
    if (path / COMPLETE).is_file():
        return path
    found = complete_checkpoints(path) or complete_checkpoints(path / CHECKPOINTS)
    if not found:
        raise FileNotFoundError(f"train.resume={resume!r} holds no complete checkpoint (a "
                                f"step_NNNNNNNN directory with {COMPLETE}); pass a tag directory "
                                "or a run's checkpoints/ directory, or resume=auto")
    return found[-1][1]


def save(engine: Any, out_dir: Path, step: int, *, world: World, client_state: dict[str, Any],
         rank_state: dict[str, Any], keep_last_k: int,
         marker: dict[str, Any] | None = None) -> Path:
    """Saves a checkpoint on every rank, marks it complete, prunes old ones (collective).

    Args:
        marker: extra JSON for ``complete.json`` (what a resume checks before DeepSpeed loads).

    Returns:
        The tag directory.
    """
    ckpt_dir = out_dir / CHECKPOINTS
    tag = tag_for(step)
    tag_dir = ckpt_dir / tag
    with agreed():  # every rank's files are on disk (or every rank stops) before the marker
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state,
                               save_latest=True)
        tag_dir.mkdir(parents=True, exist_ok=True)
        _write_json(rank_file(tag_dir, world.rank),
                    {"format": STATE_FORMAT, "version": STATE_VERSION, "step": step, **rank_state})
    with agreed():
        if world.is_main:
            _write_json(tag_dir / COMPLETE, {"step": step, "world_size": world.world_size,
                                             "time": time.time(), **(marker or {})})
            prune(ckpt_dir, keep_last_k)
    return tag_dir


def check_compatible(tag_dir: Path, expected: dict[str, Any]) -> None:
    """Refuses a checkpoint whose ``complete.json`` records another vocabulary or model shape.

    DeepSpeed would otherwise fail deep inside ``load_state_dict`` with a size-mismatch
    traceback. Checkpoints written before these fields existed are not checked.

    Raises:
        ValueError: a recorded field differs from ``expected`` (names both values and the fix).
    """
    marker = json.loads((tag_dir / COMPLETE).read_text())
    diff = {k: (marker[k], v) for k, v in expected.items() if k in marker and marker[k] != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {tag_dir} was trained with another vocabulary or model "
                         f"({what}); resume with the shards and model it was trained on, or "
                         "start fresh with train.resume=none (or another train.out_dir)")


def prune(ckpt_dir: Path, keep_last_k: int) -> None:
    """Keeps the newest ``keep_last_k`` complete checkpoints (0 = all); drops older partial ones."""
    complete = complete_checkpoints(ckpt_dir)
    if not complete:
        return
    doomed = [p for _, p in complete[:-keep_last_k]] if keep_last_k else []
    newest = complete[-1][0]
    for p in ckpt_dir.iterdir():
        m = _TAG.match(p.name)
        if m and int(m.group(1)) < newest and not (p / COMPLETE).is_file():
            doomed.append(p)  # an interrupted save, superseded by a newer complete one
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)


def load(engine: Any, tag_dir: Path, *, world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loads engine, optimizer and scheduler state; returns (client_state, this rank's state).

    Raises:
        RuntimeError: DeepSpeed could not load the checkpoint.
    """
    path, client_state = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name,
                                                load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {tag_dir}; is it from a "
                           "run with the same model and ZeRO stage?")
    own = rank_file(tag_dir, world.rank)
    fallback = rank_file(tag_dir, 0)
    src = own if own.is_file() else fallback
    rank_state = json.loads(src.read_text()) if src.is_file() else {}
    if src != own:
        rank_state.pop("rng", None)  # another rank's dropout stream: reseed instead
    return dict(client_state or {}), rank_state
