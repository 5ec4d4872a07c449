"""``none``: no masking (autoregressive objectives take their targets from the sequence)."""

from __future__ import annotations

import numpy as np

from scforge.data.stream.masking.base import MaskingStrategy
from scforge.data.stream.masking.registry import MASKING


@MASKING.register("none")
class NoMasking(MaskingStrategy):
    """Passes tokens and values through; the batch has no ``labels`` and no ``value_mask``."""

    name = "none"
    stream = 3

    def apply(self, ids: np.ndarray, values: np.ndarray | None, draws: np.ndarray,
              out: dict[str, np.ndarray]) -> int:
        return 0
