"""Shared fixtures and opt-in markers (slow, gpu, multiproc)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _testpaths import REPO, SHARED, shared  # noqa: F401  (re-exported for fixtures)



def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")
    parser.addoption("--rungpu", action="store_true", help="run tests marked gpu")
    parser.addoption("--runmultiproc", action="store_true", help="run tests marked multiproc")


def pytest_collection_modifyitems(config, items):
    for marker in ("slow", "gpu", "multiproc"):
        if config.getoption(f"--run{marker}"):
            continue
        skip = pytest.mark.skip(reason=f"opt in with --run{marker}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def pbmc_path() -> Path:
    return shared("pbmc_2batch.h5ad")


@pytest.fixture(scope="session")
def cellbench_path() -> Path:
    return shared("cellbench_5batch.h5ad")


@pytest.fixture(scope="session")
def mouse_path() -> Path:
    return shared("mouse_brain_10k.h5ad")


@pytest.fixture(scope="session")
def pbmc_first2000(pbmc_path):
    """CSR arrays and var ids of the first 2,000 pbmc cells (the reference fixtures' cells)."""
    import h5py
    import numpy as np

    with h5py.File(pbmc_path) as f:
        indptr = f["X/indptr"][:2001].astype(np.int64)
        data = f["X/data"][: indptr[-1]]
        indices = f["X/indices"][: indptr[-1]]
        var = [v.decode() for v in f["var/_index"][:]]
    return indptr, indices, data, var
