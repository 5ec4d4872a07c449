"""``CellTable``: the decoded cells of one shuffle window, concatenated (columnar, numpy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class CellTable:
    """Decoded cells of one shuffle window, concatenated.

    Attributes:
        tokens: uint16/uint32 [sum of lengths]; cell ``i`` is ``tokens[offsets[i]:offsets[i+1]]``.
        values: per-token values (uint8 bins or float16/32) or None.
        offsets: int64 [n + 1].
        gids: int64 [n]; manifest-wide cell index (the identity that seeds masks).
        cell_ids: source obs names.
        obs: obs field -> per-cell strings.
        filled: bool [n]; True where a cell stands in for an unreadable one (on_error="skip").
    """

    tokens: np.ndarray
    values: np.ndarray | None
    offsets: np.ndarray
    gids: np.ndarray
    cell_ids: list[str]
    obs: dict[str, list[Any]]
    filled: np.ndarray

    @property
    def n_cells(self) -> int:
        return len(self.gids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_block(cls, block: dict[str, Any], lo: int, hi: int, gid0: int,
                   obs_fields: list[str]) -> CellTable:
        """Cells ``[lo, hi)`` of a decoded block whose first cell has global index ``gid0``."""
        lengths = block["lengths"].astype(np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        a, b = int(offsets[lo]), int(offsets[hi])
        values = block.get("values")
        n = hi - lo
        return cls(tokens=block["tokens"][a:b], values=None if values is None else values[a:b],
                   offsets=offsets[lo : hi + 1] - a,
                   gids=np.arange(gid0 + lo, gid0 + hi, dtype=np.int64),
                   cell_ids=list(block["cell_id"][lo:hi]),
                   obs={f: list(block[f][lo:hi]) if f in block else [None] * n
                        for f in obs_fields},
                   filled=np.zeros(n, dtype=bool))

    @classmethod
    def concat(cls, parts: list[CellTable]) -> CellTable:
        """One table of ``parts`` in order."""
        lengths = np.concatenate([np.diff(p.offsets) for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        has_values = parts[0].values is not None
        return cls(tokens=np.concatenate([p.tokens for p in parts]),
                   values=np.concatenate([p.values for p in parts]) if has_values else None,
                   offsets=offsets, gids=np.concatenate([p.gids for p in parts]),
                   cell_ids=[c for p in parts for c in p.cell_ids],
                   obs={f: [v for p in parts for v in p.obs[f]] for f in parts[0].obs},
                   filled=np.concatenate([p.filled for p in parts]))

    def take(self, idx: np.ndarray, *, filled: bool = False) -> CellTable:
        """The cells at ``idx`` (as a new table), optionally marked as stand-ins."""
        parts = [CellTable(self.tokens[self.offsets[i]:self.offsets[i + 1]],
                           None if self.values is None
                           else self.values[self.offsets[i]:self.offsets[i + 1]],
                           np.array([0, self.offsets[i + 1] - self.offsets[i]], dtype=np.int64),
                           self.gids[i:i + 1], [self.cell_ids[i]],
                           {f: [v[i]] for f, v in self.obs.items()},
                           np.array([filled or bool(self.filled[i])]))
                 for i in idx.tolist()]
        return CellTable.concat(parts)
