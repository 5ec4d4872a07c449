"""Low-rank adapters (LoRA, Hu et al. 2021) on the ``nn.Linear`` layers of an encoder.

Hand-written rather than ``peft``: our attention and MLP are plain ``nn.Linear`` modules, so a
50-line wrapper covers them without pulling in ``transformers``/``accelerate``. The base weight is
frozen; ``B`` starts at zero so an adapted model equals the pretrained one before training.
:func:`merge_lora` folds the adapters back into plain ``nn.Linear`` layers for export.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B(A(dropout(x)))`` with ``base`` frozen."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"lora.rank={rank}; must be >= 1")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.drop(x) @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (without dropout)."""
        out = nn.Linear(self.base.in_features, self.base.out_features,
                        bias=self.base.bias is not None).to(self.base.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def apply_lora(module: nn.Module, *, targets: list[str], rank: int, alpha: float,
               dropout: float = 0.0) -> list[str]:
    """Replaces every ``nn.Linear`` whose attribute name is in ``targets`` (e.g. ``qkv``,
    ``out``) under ``module`` with a :class:`LoRALinear`; returns the replaced module names.

    Raises:
        ValueError: no layer matched (the message lists the Linear names available).
    """
    replaced: list[str] = []
    linears: set[str] = set()
    for name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and not isinstance(child, LoRALinear):
                linears.add(child_name)
                if child_name in targets:
                    setattr(parent, child_name,
                            LoRALinear(child, rank=rank, alpha=alpha, dropout=dropout))
                    replaced.append(f"{name}.{child_name}".lstrip("."))
    if not replaced:
        raise ValueError(f"lora.targets={targets} matched no nn.Linear; available names: "
                         f"{sorted(linears)}")
    return replaced


def merge_lora(module: nn.Module) -> int:
    """Folds every :class:`LoRALinear` under ``module`` into a plain Linear; returns the count."""
    n = 0
    for _, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, child_name, child.merged())
                n += 1
    return n


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (``lora_a``/``lora_b``) under ``module``."""
    return [p for n, p in module.named_parameters() if n.rsplit(".", 1)[-1] in ("lora_a",
                                                                                  "lora_b")]
