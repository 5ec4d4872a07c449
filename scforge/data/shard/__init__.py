"""``scforge-shard``: AnnData -> tokenized, compressed, versioned WebDataset shards.

This package must not import torch: sharding runs on CPU-only preprocessing nodes.
"""

from __future__ import annotations

from scforge.data.shard.format import FORMAT_NAME, FORMAT_VERSION, ShardFormatError
from scforge.data.shard.manifest import load_manifest
from scforge.data.shard.reader import (
    ShardIntegrityError,
    block_cells,
    iter_shard_blocks,
    read_block,
    read_shards,
    verify_shard,
)
from scforge.data.shard.writer import ShardError, ShardJob, shard

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ShardError",
    "ShardFormatError",
    "ShardIntegrityError",
    "ShardJob",
    "block_cells",
    "iter_shard_blocks",
    "read_block",
    "load_manifest",
    "read_shards",
    "shard",
    "verify_shard",
]
