"""Small dataclasses that cross module boundaries (data -> models -> train/eval).

Kept in a leaf module so that models never import ``scforge.data`` and the loader never imports
``scforge.models``: both speak these types.

Shape legend: B = batch size, L = padded sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

IGNORE_INDEX = -100
"""Label value meaning "no loss at this position" (PyTorch's cross-entropy default)."""


@dataclass
class Batch:
    """A padded, optionally masked batch of tokenized cells.

    Attributes:
        input_ids: int32 or int64 [B, L]; gene tokens, with ``<mask>`` where gene-id masking hid
            a token, ``<pad>`` past each cell's end. The streaming loader delivers int32 (half
            the bytes to write, hand over and copy to a GPU); models accept both.
        attention_mask: bool [B, L]; True on real tokens (including ``<cls>``/``<eos>``).
        values: float [B, L] or None; per-token expression values (bin index for binned
            tokenizers, float for continuous). Positions in ``value_mask`` hold 0 and must not be
            read by a model.
        labels: int32 or int64 [B, L] or None; original gene ids at positions the objective
            predicts, ``IGNORE_INDEX`` elsewhere (MLM over gene ids).
        value_labels: float [B, L] or None; original values at positions the objective predicts
            (meaningful only where ``value_mask`` is True).
        value_mask: bool [B, L] or None; positions whose value was hidden and must be predicted.
        obs: per-cell metadata passed through for evaluation (e.g. ``cell_type``, ``batch``).
        cell_ids: source cell ids (the input's obs names), one per row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    values: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    value_labels: torch.Tensor | None = None
    value_mask: torch.Tensor | None = None
    obs: dict[str, list[Any]] = field(default_factory=dict)
    cell_ids: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Batch:
        """Moves every tensor to ``device`` (metadata stays on the host)."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
        return Batch(**moved)

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class ModelOutput:
    """What every model's ``forward`` returns; one trainer serves every family.

    Attributes:
        loss: scalar tensor to minimise.
        metrics: detached scalars to log (e.g. ``mlm_loss``, ``mlm_acc``, ``contrastive_loss``).
        logits: optional prediction tensor for inspection.
        embeddings: optional [B, D] cell embeddings.
    """

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
