"""``value``: hide expression values (scGPT-style binned or continuous value prediction)."""

from __future__ import annotations

import numpy as np

from scforge.data.stream.config import MaskingConfig
from scforge.data.stream.fused import MODE_VALUE
from scforge.data.stream.masking.base import (
    KernelParams,
    MaskingStrategy,
    Specials,
    select,
    threshold,
)
from scforge.data.stream.masking.registry import MASKING


@MASKING.register("value")
class ValueMasking(MaskingStrategy):
    """Selects ``probability`` of real gene tokens and hides their values.

    At selected positions ``value_mask`` is True and ``values`` hold ``fill_value``;
    ``value_labels`` hold the original values (0 on padding; read them only where ``value_mask``
    is True). Gene ids stay visible, as in scGPT's value-masking objective.
    """

    name = "value"
    stream = 2
    outputs = (("value_labels", "float32"), ("value_mask", "bool"))

    def __init__(self, cfg: MaskingConfig, specials: Specials, *, has_values: bool) -> None:
        super().__init__(cfg, specials, has_values=has_values)
        if not has_values:
            raise ValueError("masking=value needs shards with values (binned_expression or "
                             "continuous_projection); these are rank_value shards: use "
                             "masking.name=bert")

    def kernel_params(self) -> KernelParams | None:
        if type(self).apply is not ValueMasking.apply:
            return None
        return KernelParams(MODE_VALUE, threshold(self.cfg.probability),
                            fill_value=float(self.cfg.fill_value))

    def apply(self, ids: np.ndarray, values: np.ndarray | None, draws: np.ndarray,
              out: dict[str, np.ndarray]) -> int:
        if values is None:
            raise ValueError("masking=value got a batch without values")
        pos, _ = select(self, ids, draws)
        out["value_labels"][...] = values
        hidden = out["value_mask"]
        hidden.fill(False)
        hidden.reshape(-1)[pos] = True
        values.reshape(-1)[pos] = np.float32(self.cfg.fill_value)
        return len(pos)
