"""Bundled data: gene dictionaries (gzip JSON) and the default pbmc3k dataset.

End users have no ``../shared``; everything the default jobs need ships here.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent
DEFAULT_DATASET = RESOURCES / "pbmc3k.h5ad"


def resource_path(name: str) -> Path:
    """Path of a bundled resource file; raises FileNotFoundError naming what exists."""
    path = RESOURCES / name
    if not path.is_file():
        have = sorted(p.name for p in RESOURCES.iterdir() if p.suffix in (".gz", ".h5ad"))
        raise FileNotFoundError(f"bundled resource {name!r} not found; available: {have}")
    return path


@lru_cache(maxsize=16)
def load_json(path: str) -> dict:
    """Loads a JSON dictionary (plain or ``.gz``) from a path or a bundled resource name."""
    p = Path(path)
    if not p.is_file():
        p = resource_path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as fh:
        obj = json.load(fh)
    if not isinstance(obj, dict):
        raise ValueError(f"{p} does not hold a JSON object (gene -> value dictionary)")
    return obj
