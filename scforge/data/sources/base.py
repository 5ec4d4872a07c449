"""The source interface shared by every input format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd


class SourceError(ValueError):
    """An input cannot be read as raw counts; the message names the problem and the fix."""


@dataclass
class CSRChunk:
    """Rows ``[start, start + n_rows)`` of an input as CSR arrays (``indptr[0] == 0``)."""

    start: int
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1


class Source(Protocol):
    """What the sharder needs from an input."""

    path: str
    n_cells: int
    n_genes: int

    def gene_ids(self) -> list[str]: ...

    def gene_symbols(self) -> list[str] | None: ...

    def obs_names(self) -> np.ndarray: ...

    def obs_columns(self, names: list[str]) -> pd.DataFrame: ...

    def read_rows(self, start: int, stop: int) -> CSRChunk: ...

    def describe(self) -> dict: ...
