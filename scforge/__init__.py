"""scforge: data engine and training core for single-cell foundation models."""

from __future__ import annotations

__version__ = "0.1.0"
