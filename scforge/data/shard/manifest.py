"""Manifest and per-shard completion markers.

Every finished shard gets a sidecar ``<shard>.json`` (its manifest entry), written only after the
tar itself was fsynced and renamed into place: a shard is listed only once complete, and a rerun
skips exactly the shards whose sidecar and file agree. ``manifest.json`` is assembled from the
sidecars once every shard of the job exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scforge.data.shard.format import FORMAT_NAME, FORMAT_VERSION, ShardFormatError

MANIFEST = "manifest.json"
JOB_FILE = "job.json"


def atomic_write_json(path: Path, obj: Any) -> None:
    """Writes JSON to ``path`` via a temp file, fsync and rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def sidecar_path(out: Path, shard_file: str) -> Path:
    return out / f"{shard_file}.json"


def read_sidecar(out: Path, shard_file: str) -> dict | None:
    """The entry of a complete shard, or None if the shard is missing or incomplete."""
    side = sidecar_path(out, shard_file)
    tar = out / shard_file
    if not side.is_file() or not tar.is_file():
        return None
    try:
        entry = json.loads(side.read_text())
    except ValueError:
        return None
    return entry if entry.get("bytes") == tar.stat().st_size else None


def load_manifest(path: str | Path) -> dict:
    """Reads and checks ``manifest.json`` of a shard directory (or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    if not p.is_file():
        raise ShardFormatError(
            f"{p} not found: not a finished scforge shard directory (an "
            "interrupted job? rerun scforge-shard with the same arguments, or "
            "`scforge-shard merge DIR` after all partitions finished)"
        )
    try:
        man = json.loads(p.read_text())
    except ValueError as e:
        raise ShardFormatError(f"{p} is not valid JSON ({e})") from None
    if man.get("format") != FORMAT_NAME:
        raise ShardFormatError(f"{p} is not an scforge manifest (format={man.get('format')!r})")
    if man.get("version") != FORMAT_VERSION:
        raise ShardFormatError(
            f"{p} has format version {man.get('version')}; this scforge reads "
            f"version {FORMAT_VERSION}: re-shard, or use a matching scforge"
        )
    return man
