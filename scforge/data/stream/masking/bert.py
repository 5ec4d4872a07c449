"""``bert``: BERT/Geneformer masked-gene modelling (80% ``<mask>``, 10% random gene, 10% kept)."""

from __future__ import annotations

import numpy as np

from scforge.contracts import IGNORE_INDEX
from scforge.data.stream.config import MaskingConfig
from scforge.data.stream.fused import MODE_BERT
from scforge.data.stream.masking.base import (
    KernelParams,
    MaskingStrategy,
    Specials,
    rehash,
    select,
    threshold,
)
from scforge.data.stream.masking.registry import MASKING


@MASKING.register("bert")
class BertMasking(MaskingStrategy):
    """Selects ``probability`` of real gene tokens; ``labels`` hold their original ids.

    Selection is a Bernoulli draw per token (as HF's ``DataCollatorForLanguageModeling``, which
    Geneformer uses), so a short cell may have no masked token in some epoch. The 80/10/10
    decision reuses the selection draw: given ``u < p``, ``u / p`` is again uniform, so
    ``u < p * mask_fraction`` picks ``<mask>`` with exactly the configured share.
    """

    name = "bert"
    stream = 1
    outputs = (("labels", "ids"),)

    def __init__(self, cfg: MaskingConfig, specials: Specials, *, has_values: bool) -> None:
        super().__init__(cfg, specials, has_values=has_values)
        if specials.mask < 0 and cfg.mask_fraction > 0:
            raise ValueError("masking=bert with mask_fraction > 0 needs a <mask> token, but the "
                             "shards' vocabulary has none; set masking.mask_fraction=0 or "
                             "re-shard with a vocabulary that has <mask>")
        self._genes = np.flatnonzero(~self._is_special).astype(np.int64)
        if len(self._genes) == 0:
            raise ValueError("the vocabulary has no gene tokens to draw random replacements from")
        p = cfg.probability
        self._t_mask = threshold(p * cfg.mask_fraction)
        self._t_random = threshold(p * (cfg.mask_fraction + cfg.random_fraction))

    def kernel_params(self) -> KernelParams | None:
        if type(self).apply is not BertMasking.apply:
            return None
        return KernelParams(MODE_BERT, threshold(self.cfg.probability), self._t_mask,
                            self._t_random, self.specials.mask, self._genes)

    def apply(self, ids: np.ndarray, values: np.ndarray | None, draws: np.ndarray,
              out: dict[str, np.ndarray]) -> int:
        pos, u = select(self, ids, draws)
        flat = ids.reshape(-1)
        labels = out["labels"]
        labels.fill(IGNORE_INDEX)
        labels.reshape(-1)[pos] = flat[pos]
        to_mask = u < self._t_mask
        flat[pos[to_mask]] = self.specials.mask
        to_random = ~to_mask & (u < self._t_random)
        rnd = pos[to_random]
        if len(rnd):
            pick = rehash(u[to_random], 0x68E31DA4).astype(np.uint64)
            index = (pick * np.uint64(len(self._genes))) >> np.uint64(32)
            flat[rnd] = self._genes[index.astype(np.int64)]
        return len(pos)
