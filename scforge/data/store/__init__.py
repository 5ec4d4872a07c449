"""The Zarr token store: tokenized cells in a Zarr v3 hierarchy, random access by cell index.

``scforge-shard --format zarr`` writes it; :class:`TokenStore` reads it without torch;
``TokenStoreDataset`` (a torch ``Dataset``) is imported lazily so the sharder never imports torch.
"""

from __future__ import annotations

from typing import Any

from scforge.data.store.format import (
    STORE_FORMAT,
    STORE_VERSION,
    StoreFormatError,
    load_store_manifest,
)
from scforge.data.store.reader import TokenStore, read_store


def __getattr__(name: str) -> Any:
    if name == "TokenStoreDataset":
        from scforge.data.store.dataset import TokenStoreDataset

        return TokenStoreDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "STORE_FORMAT",
    "STORE_VERSION",
    "StoreFormatError",
    "TokenStore",
    "TokenStoreDataset",
    "load_store_manifest",
    "read_store",
]
