"""Tokenizers: thin wrappers that bind a config and a vocabulary to a kernel in ``scforge.kernels``.

``list_tokenizers()`` names the registered strategies; the config picks one with
``tokenizer.strategy``.
"""

from __future__ import annotations

from scforge.data.tokenizers import binned_expression, continuous_projection, rank_value  # noqa: F401  (register)
from scforge.data.tokenizers.base import TOKENIZERS, TokenizedChunk, Tokenizer


def list_tokenizers() -> list[str]:
    """Registered tokenizer names, sorted."""
    return TOKENIZERS.names()


def get_tokenizer(name: str) -> type[Tokenizer]:
    """The tokenizer class registered as ``name`` (KeyError lists the names)."""
    return TOKENIZERS.get(name)


def register_tokenizer(name: str):
    """Decorator registering a tokenizer class under ``name``."""
    return TOKENIZERS.register(name)


__all__ = ["TokenizedChunk", "Tokenizer", "get_tokenizer", "list_tokenizers", "register_tokenizer"]
