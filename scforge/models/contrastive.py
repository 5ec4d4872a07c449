"""NT-Xent contrastive objective between two views of each cell, combinable with any family.

The second view is made inside the model by random token dropout: dropped tokens are removed
from ``attention_mask`` (and so from attention and mean pooling) rather than cut out of the
tensors, which costs nothing and keeps rank positions intact. The first view is the pass the
family already runs for its own objective, so contrastive learning adds one encoder pass, not
two. Negatives are the other cells of the local batch (no cross-rank gather: models are written
for one device).

Randomness comes from a ``torch.Generator`` when one is given (set ``model.generator`` for a
reproducible run), else from torch's global RNG.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from scforge.contracts import Batch


def token_dropout(
    batch: Batch,
    drop_prob: float,
    *,
    generator: torch.Generator | None = None,
    keep_first: bool = True,
) -> Batch:
    """Returns a view of ``batch`` with a random ``drop_prob`` of its real tokens hidden.

    Args:
        batch: the batch to perturb; it is not modified.
        drop_prob: probability of dropping each real token, in [0, 1).
        generator: RNG for the draw (its device may differ from the batch's); None uses the
            global RNG.
        keep_first: never drop position 0, so ``cls`` pooling and an empty view cannot happen.

    Returns:
        A ``Batch`` sharing every tensor with ``batch`` except ``attention_mask``.
    """
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"drop_prob={drop_prob} must lie in [0, 1)")
    mask = batch.attention_mask
    if generator is None:
        u = torch.rand(mask.shape, device=mask.device)
    else:
        u = torch.rand(mask.shape, generator=generator, device=generator.device).to(mask.device)
    keep = mask & (u >= drop_prob)
    if keep_first:
        keep[:, 0] = mask[:, 0]
    return dataclasses.replace(batch, attention_mask=keep)


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized-temperature cross-entropy (SimCLR) over 2B embeddings.

    Each of the 2B embeddings must pick its partner view among the other 2B - 1. Computed in
    fp32: cosine similarities divided by a small temperature overflow bf16's precision.

    Args:
        z1: [B, P] embeddings of the first view.
        z2: [B, P] embeddings of the second view, row-aligned with ``z1``.
        temperature: softmax temperature (> 0).

    Returns:
        (loss, accuracy of picking the partner).
    """
    if z1.shape != z2.shape:
        raise ValueError(f"view embeddings differ in shape: {tuple(z1.shape)} vs {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    sim = (z @ z.T) / temperature
    self_pair = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_pair, float("-inf"))
    idx = torch.arange(n, device=z.device)
    target = torch.cat([idx + n, idx])
    loss = F.cross_entropy(sim, target)
    acc = (sim.detach().argmax(dim=-1) == target).float().mean()
    return loss, acc


class ContrastiveHead(nn.Module):
    """SimCLR projection MLP plus NT-Xent; the loss lives on the projection, not the embedding.

    Keeping the invariance objective on a projection leaves the pooled cell embedding free to
    retain what the contrastive augmentation would otherwise discard (SimCLR, section 4.2).
    """

    def __init__(self, d: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.proj = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def forward(
        self, pooled_a: torch.Tensor, pooled_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, accuracy) for two [B, D] pooled views."""
        return nt_xent(self.proj(pooled_a), self.proj(pooled_b), self.temperature)
