"""Streaming loader: scforge shards -> padded, masked training batches.

Split across nodes, ranks and DataLoader workers with every cell once per epoch, equal batch
counts on every rank, exact resume from a small state dict, dynamic seeded masking and length
bucketing. Quick use::

    from scforge.data.stream import ShardStream, StatefulLoader, StreamConfig

    stream = ShardStream("shards/", StreamConfig(batch_size=64, max_len=2048))
    loader = StatefulLoader(stream, num_workers=2)
    loader.load_state_dict(ckpt["loader"])      # optional: resume
    for batch in loader:                        # one epoch of scforge.contracts.Batch
        ...
        ckpt["loader"] = loader.state_dict()
"""

from __future__ import annotations

from scforge.data.stream.collate import Collator, plan_batches
from scforge.data.stream.config import BucketingConfig, MaskingConfig, StreamConfig
from scforge.data.stream.dataset import ShardStream
from scforge.data.stream.loader import StatefulLoader
from scforge.data.stream.masking import MASKING, MaskingStrategy, get_masking, list_maskings
from scforge.data.stream.source import ShardSet
from scforge.data.stream.state import ResumeError
from scforge.data.stream.table import CellTable
from scforge.data.stream.wire import BatchInfo, StreamBatch, StreamGroup

__all__ = [
    "MASKING",
    "BatchInfo",
    "BucketingConfig",
    "CellTable",
    "Collator",
    "MaskingConfig",
    "MaskingStrategy",
    "ResumeError",
    "ShardSet",
    "ShardStream",
    "StatefulLoader",
    "StreamBatch",
    "StreamConfig",
    "StreamGroup",
    "get_masking",
    "list_maskings",
    "plan_batches",
]
