"""Shards made once per session for the trainer tests (CPU, fp32, no JIT builds)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _train_util import TOKENIZERS, make_shards


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory, pbmc_path):
    """pbmc (10,668 cells) cut to 256 tokens, one shard directory per tokenizer, built lazily."""
    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("train_shards")

    def get(kind: str) -> Path:
        if kind not in made:
            made[kind] = make_shards(pbmc_path, root / kind, TOKENIZERS[kind],
                                     "tokenizer.max_length=256", "shard.cells_per_shard=2000")
        return made[kind]

    return get


@pytest.fixture(scope="session")
def cb_rank_shards(tmp_path_factory, cellbench_path) -> Path:
    """cellbench (1,408 = 88 x 16 cells), rank-value tokens cut to 128: the small shard set."""
    return make_shards(cellbench_path, tmp_path_factory.mktemp("cb_train") / "rank",
                       "geneformer_v2.yaml", "tokenizer.max_length=128",
                       "shard.cells_per_shard=400")
