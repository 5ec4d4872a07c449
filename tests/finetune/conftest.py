from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from _eval_util import random_export, trained_export  # noqa: E402


@pytest.fixture(scope="session")
def debug_export(tmp_path_factory, pbmc_path) -> Path:
    """Untrained debug encoder (fast): for tests of mechanics, not of quality."""
    return random_export(tmp_path_factory.getbasetemp(), pbmc_path)


@pytest.fixture(scope="session")
def trained_debug_export(tmp_path_factory, pbmc_path) -> Path:
    """100 debug steps through the real trainer (~30-80 s on 2 cores): quality tests only."""
    return trained_export(tmp_path_factory.getbasetemp(), pbmc_path)
