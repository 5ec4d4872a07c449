"""The masking registry (its own module so strategy files can import it without cycles)."""

from __future__ import annotations

from scforge.data.stream.masking.base import MaskingStrategy
from scforge.registry import Registry

MASKING: Registry[type[MaskingStrategy]] = Registry("masking")
"""Masking strategies by name; filled by the explicit imports in ``masking/__init__.py``."""
