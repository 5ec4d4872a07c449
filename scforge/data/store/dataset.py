"""``TokenStoreDataset``: a map-style torch Dataset over a Zarr token store.

Kept apart from the reader so that importing ``scforge.data.store`` (the sharder does) never
imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from scforge.data.store.reader import TokenStore


class TokenStoreDataset(Dataset):
    """Random access to tokenized cells by index; DataLoader batches go through ``__getitems__``
    (one asynchronous read per cell, all in flight together).

    Args:
        path: output directory of ``scforge-shard --format zarr``.
        backend: ``tensorstore`` or ``zarr``.
        as_tensors: return ``input_ids``/``values`` as torch tensors (int64 ids) instead of NumPy.
        expected_vocab_hash: refuse a store tokenized with another vocabulary.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        backend: str = "tensorstore",
        as_tensors: bool = False,
        expected_vocab_hash: str | None = None,
    ) -> None:
        self.store = TokenStore(path, backend=backend, expected_vocab_hash=expected_vocab_hash)
        self.as_tensors = as_tensors

    def __len__(self) -> int:
        return len(self.store)

    def _convert(self, cell: dict[str, Any]) -> dict[str, Any]:
        if self.as_tensors:
            cell["input_ids"] = torch.from_numpy(cell["input_ids"].astype(np.int64))
            if "values" in cell:
                v = cell["values"]
                cell["values"] = torch.from_numpy(
                    v.astype(np.float32 if v.dtype.kind == "f" else np.int64)
                )
        return cell

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._convert(self.store[int(index)])

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        return [self._convert(c) for c in self.store.get_batch(indices)]
