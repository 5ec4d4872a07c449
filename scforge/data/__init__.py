"""Data layer: sources, vocabulary, tokenizers, shards (and, later, the streaming loader)."""

from __future__ import annotations

from scforge.data.shard import load_manifest, read_shards
from scforge.data.vocab import GeneVocab

__all__ = ["GeneVocab", "load_manifest", "read_shards"]
