"""Output heads and their losses, shared by the model families.

Heads take hidden states already gathered at the positions being predicted ([N, D], N = number
of supervised tokens), never the full [B, L, D] tensor: with a ~20k-gene vocabulary and 15%
masking, projecting every position would spend ~85% of the head's FLOPs and most of its
activation memory on logits that are thrown away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeneHead(nn.Module):
    """BERT MLM head: ``Linear -> GELU -> LayerNorm -> Linear(vocab)`` (BERT's transform, its
    activation ``act`` as in the encoder's feed-forward: ReLU for Geneformer).

    The final projection can share its weight with the gene-embedding table (``tie_to``), as
    Geneformer/BERT do; that saves ``vocab * d`` parameters, most of a small model.
    """

    def __init__(
        self, d: int, vocab_size: int, eps: float, *, tie_to: torch.Tensor | None = None,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        if act not in ("gelu", "gelu_new", "relu"):
            raise ValueError(f"model.activation={act!r} is not one of ['gelu', 'gelu_new', 'relu']")
        self.act = act
        self.dense = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=eps)
        self.decoder = nn.Linear(d, vocab_size)
        if tie_to is not None:
            self.tie(tie_to)

    def tie(self, weight: torch.Tensor) -> None:
        """Shares ``weight`` [vocab, d] as the output projection (call after weight init)."""
        if not isinstance(weight, nn.Parameter):
            raise TypeError(f"can only tie to an nn.Parameter, got {type(weight).__name__}")
        if weight.shape != self.decoder.weight.shape:
            raise ValueError(
                f"cannot tie a {tuple(weight.shape)} embedding to a "
                f"{tuple(self.decoder.weight.shape)} head; set model.tie_embeddings=false"
            )
        self.decoder.weight = weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [N, vocab] from gathered states [N, D]."""
        h = self.dense(h)
        if self.act == "relu":
            h = F.relu(h)
        else:
            h = F.gelu(h, approximate="tanh" if self.act == "gelu_new" else "none")
        return self.decoder(self.norm(h))


class ValueHead(nn.Module):
    """Predicts a token's value: bin logits (binned) or a scalar (continuous)."""

    def __init__(self, d: int, value_mode: str, n_bins: int) -> None:
        super().__init__()
        if value_mode not in ("binned", "continuous"):
            raise ValueError(f"model.value_mode={value_mode!r} has no value head")
        self.binned = value_mode == "binned"
        out = n_bins + 1 if self.binned else 1
        self.net = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Bin logits [N, n_bins + 1] or values [N] from gathered states [N, D]."""
        out = self.net(h)
        return out if self.binned else out.squeeze(-1)

    def loss(
        self, h: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Cross-entropy over bins or MSE, at gathered positions.

        Args:
            h: float [N, D] states at the supervised positions.
            target: float [N] true values (bin indices stored as floats when binned).

        Returns:
            (loss, extra metrics, predictions).
        """
        pred = self(h)
        if self.binned:
            loss, acc = classification_loss(pred, target.round().long())
            return loss, {"acc": acc}, pred
        return regression_loss(pred, target), {}, pred


def classification_loss(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (in fp32) and accuracy; zero, still on the graph, when N = 0.

    A batch where masking happened to select nothing must not give NaN (the mean of an empty
    set), and must still touch every head parameter so DDP/ZeRO see a gradient for it.
    """
    if target.numel() == 0:
        zero = logits.float().sum() * 0.0
        return zero, zero.detach()
    target = target.long()  # batches may carry int32 ids (the loader's wire dtype)
    loss = F.cross_entropy(logits.float(), target)
    acc = (logits.detach().argmax(dim=-1) == target).float().mean()
    return loss, acc


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in fp32; zero, still on the graph, when nothing is supervised."""
    if target.numel() == 0:
        return pred.float().sum() * 0.0
    return F.mse_loss(pred.float(), target.float())
