"""Helpers shared by the streaming-loader tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scforge.contracts import Batch
from scforge.data.shard import read_shards
from scforge.data.stream import StreamConfig


def cfg(**kw: Any) -> StreamConfig:
    """Small, fast settings: many windows and batches on cellbench."""
    base: dict[str, Any] = {"batch_size": 32, "shuffle_buffer": 128, "max_len": 256}
    masking = kw.pop("masking", None)
    bucketing = kw.pop("bucketing", None)
    c = StreamConfig(**{**base, **kw})
    for k, v in (masking or {}).items():
        setattr(c.masking, k, v)
    for k, v in (bucketing or {}).items():
        setattr(c.bucketing, k, v)
    c.validate()
    return c


def cell_ids(batches: list[Batch]) -> list[str]:
    return [c for b in batches for c in b.cell_ids]


def all_cell_ids(shards: Path) -> list[str]:
    return [c["cell_id"] for c in read_shards(shards)]


def assert_same(a: list[Batch], b: list[Batch]) -> None:
    """Batch-for-batch equality (cells, tokens, masks, labels, values)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.cell_ids == y.cell_ids
        for name in ("input_ids", "attention_mask", "values", "labels", "value_labels",
                     "value_mask"):
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None) == (v is None), name
            if u is not None:
                assert u.dtype == v.dtype and torch.equal(u, v), name
        assert x.obs == y.obs
