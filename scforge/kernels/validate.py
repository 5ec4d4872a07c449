"""Input checks on raw counts, run per chunk inside the sharder (cheap compared to tokenizing)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _first_bad(data):
    for k in range(len(data)):
        x = data[k]
        if math.isnan(x) or math.isinf(x):
            return k, 1
        if x < 0:
            return k, 2
        if x != math.floor(x):
            return k, 3
    return -1, 0


def check_raw_counts(data: np.ndarray) -> tuple[int, str] | None:
    """Returns ``(position, problem)`` of the first non-raw-count value in ``data``, else None.

    Problems: ``"NaN or infinite"``, ``"negative"``, ``"non-integer"``.
    """
    if data.dtype.kind in "iu":
        pos = int(np.argmax(data < 0)) if data.size and data.min() < 0 else -1
        return (pos, "negative") if pos >= 0 else None
    k, code = _first_bad(data)
    if k < 0:
        return None
    return int(k), {1: "NaN or infinite", 2: "negative", 3: "non-integer"}[code]
