"""Shards made once per test session for the streaming-loader tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from scforge.config import ShardJobConfig, load_config
from scforge.data.shard import ShardJob

REPO = Path(__file__).resolve().parents[3]
RECIPES = REPO / "configs" / "shard"


def make_shards(inp: Path, out: Path, recipe: str, *overrides: str) -> Path:
    cfg = load_config(ShardJobConfig, [RECIPES / recipe], list(overrides))
    ShardJob([str(inp)], out, cfg, progress=False).run()
    return out


@pytest.fixture(scope="session")
def cb_shards(tmp_path_factory, cellbench_path) -> Path:
    """cellbench (1,408 cells), Geneformer V2 tokens: 5 shards of <= 300 cells, blocks of 64."""
    return make_shards(cellbench_path, tmp_path_factory.mktemp("cb") / "shards",
                       "geneformer_v2.yaml", "shard.cells_per_shard=300", "shard.block_cells=64")


@pytest.fixture(scope="session")
def cb_binned(tmp_path_factory, cellbench_path) -> Path:
    """cellbench, scGPT binned values (uint8 bins)."""
    return make_shards(cellbench_path, tmp_path_factory.mktemp("cbb") / "shards",
                       "scgpt_binned.yaml", "shard.cells_per_shard=500", "shard.block_cells=128")


@pytest.fixture(scope="session")
def cb_continuous(tmp_path_factory, cellbench_path) -> Path:
    """cellbench, continuous float16 values."""
    return make_shards(cellbench_path, tmp_path_factory.mktemp("cbc") / "shards",
                       "continuous.yaml", "shard.cells_per_shard=500", "shard.block_cells=128")


@pytest.fixture(scope="session")
def pbmc_shards(tmp_path_factory, pbmc_path) -> Path:
    """pbmc (10,668 cells), Geneformer V2 tokens: 11 shards of <= 1,000 cells, blocks of 128."""
    return make_shards(pbmc_path, tmp_path_factory.mktemp("pbmc") / "shards",
                       "geneformer_v2.yaml", "shard.cells_per_shard=1000", "shard.block_cells=128")
