"""Paths every test module may import (``from _testpaths import REPO, shared``).

tests/ has no ``__init__.py``: a root-level ``tests`` package would shadow the top-level ``tests``
some distributions install (plottable does), which tests/test_packaging.py forbids. Pytest puts
tests/ on ``sys.path`` when it imports tests/conftest.py, so this module is importable from every
test file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.fail(
            f"shared test data {path} is missing (expected ../shared/data next to the repo)"
        )
    return path
