"""Low-rank adapters (LoRA, Hu et al. 2021) on the ``nn.Linear`` layers of an encoder.

Backends: ``peft`` (Hugging Face PEFT's ``inject_adapter_in_model``: our attention projections
are plain ``nn.Linear`` modules, which PEFT adapts on any ``nn.Module``) and ``builtin`` (the
small :class:`LoRALinear` below, for installs without ``peft``); ``auto`` picks ``peft`` when it
is installed. Either way the base weights are frozen and ``B`` starts at zero, so an adapted
model equals the pretrained one before training; :func:`merge_lora` folds the adapters back into
plain ``nn.Linear`` layers, so saved fine-tuned models never need ``peft`` to load.
"""

from __future__ import annotations

import math
import re

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


BACKENDS = ("auto", "peft", "builtin")


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``peft`` when importable, else ``builtin``; a named backend is checked."""
    import importlib.util

    if backend not in BACKENDS:
        raise ValueError(f"lora.backend={backend!r}; choose one of {list(BACKENDS)}")
    has_peft = importlib.util.find_spec("peft") is not None
    if backend == "peft" and not has_peft:
        raise ValueError("lora.backend=peft but peft is not installed; pip install peft (or "
                         "lora.backend=builtin)")
    if backend == "auto":
        return "peft" if has_peft else "builtin"
    return backend


def _linear_names(module: nn.Module) -> set[str]:
    return {child_name for _, parent in module.named_modules()
            for child_name, child in parent.named_children() if isinstance(child, nn.Linear)}


def apply_lora(module: nn.Module, *, targets: list[str], rank: int, alpha: float,
               dropout: float = 0.0, backend: str = "auto") -> list[str]:
    """Adapts every ``nn.Linear`` whose attribute name is in ``targets`` (e.g. ``qkv``, ``out``)
    under ``module``, in place; returns the adapted module names.

    Args:
        module: the encoder.
        targets: attribute names of the Linear layers to adapt.
        rank: adapter rank r.
        alpha: scaling numerator (updates are scaled by ``alpha / r``).
        dropout: dropout on the adapter's input.
        backend: ``auto``, ``peft`` or ``builtin`` (see the module docstring).

    Raises:
        ValueError: no layer matched (the message lists the Linear names available), a bad
            rank, or an unavailable backend.
    """
    if rank < 1:
        raise ValueError(f"lora.rank={rank}; must be >= 1")
    linears = _linear_names(module)
    if not set(targets) & linears:
        raise ValueError(f"lora.targets={targets} matched no nn.Linear; available names: "
                         f"{sorted(linears)}")
    if resolve_backend(backend) == "peft":
        return _apply_peft(module, targets=targets, rank=rank, alpha=alpha, dropout=dropout)
    replaced: list[str] = []
    for name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if (isinstance(child, nn.Linear) and not isinstance(child, LoRALinear)
                    and child_name in targets):
                setattr(parent, child_name,
                        LoRALinear(child, rank=rank, alpha=alpha, dropout=dropout))
                replaced.append(f"{name}.{child_name}".lstrip("."))
    return replaced


def _apply_peft(module: nn.Module, *, targets: list[str], rank: int, alpha: float,
                dropout: float) -> list[str]:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    # A regex anchored on the attribute name: exactly the builtin backend's matching rule.
    pattern = r"(.*\.)?(" + "|".join(re.escape(t) for t in sorted(targets)) + r")$"
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern,
                     bias="none")
    inject_adapter_in_model(cfg, module)
    return [name for name, m in module.named_modules() if isinstance(m, LoraLayer)]


def merge_lora(module: nn.Module) -> int:
    """Folds every adapter (either backend) under ``module`` into a plain Linear; returns the
    count."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        LoraLayer = ()  # noqa: N806 - isinstance(x, ()) is always False
    n = 0
    for _, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, child_name, child.merged())
                n += 1
            elif isinstance(child, LoraLayer):
                child.merge()
                base = child.get_base_layer()
                for p in base.parameters():
                    p.requires_grad_(True)  # as a plain layer again (peft froze it)
                setattr(parent, child_name, base)
                n += 1
    return n


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters under ``module`` (``lora_a``/``lora_b`` of the builtin backend,
    ``lora_A``/``lora_B`` of peft)."""
    return [p for n, p in module.named_parameters()
            if n.rsplit(".", 1)[-1] in ("lora_a", "lora_b")
            or ".lora_A." in n or ".lora_B." in n]
