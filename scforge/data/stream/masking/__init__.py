"""Masking strategies, one per file, behind the ``MASKING`` registry.

Registered by the explicit imports below (no import-time scanning): ``bert`` (masked gene ids,
80/10/10), ``value`` (hidden expression values) and ``none`` (autoregressive).
"""

from __future__ import annotations

from scforge.data.stream.masking import bert, none, value  # noqa: F401  (registers)
from scforge.data.stream.masking.base import (
    KernelParams,
    MaskingStrategy,
    Specials,
    cell_keys,
    token_draws,
)
from scforge.data.stream.masking.registry import MASKING


def list_maskings() -> list[str]:
    """Names of the registered masking strategies."""
    return MASKING.names()


def get_masking(name: str) -> type[MaskingStrategy]:
    """The strategy class registered as ``name`` (KeyError listing the names otherwise)."""
    return MASKING.get(name)


__all__ = [
    "MASKING",
    "KernelParams",
    "MaskingStrategy",
    "Specials",
    "cell_keys",
    "get_masking",
    "list_maskings",
    "token_draws",
]
