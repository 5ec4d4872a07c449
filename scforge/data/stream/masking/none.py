"""``none``: no masking (autoregressive objectives take their targets from the sequence)."""

from __future__ import annotations

import numpy as np

from scforge.data.stream.fused import MODE_NONE
from scforge.data.stream.masking.base import KernelParams, MaskingStrategy
from scforge.data.stream.masking.registry import MASKING


@MASKING.register("none")
class NoMasking(MaskingStrategy):
    """Passes tokens and values through; the batch has no ``labels`` and no ``value_mask``."""

    name = "none"
    stream = 3

    def kernel_params(self) -> KernelParams | None:
        return KernelParams(MODE_NONE) if type(self).apply is NoMasking.apply else None

    def apply(self, ids: np.ndarray, values: np.ndarray | None, draws: np.ndarray,
              out: dict[str, np.ndarray]) -> int:
        return 0
