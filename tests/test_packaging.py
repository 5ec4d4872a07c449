"""Packaging rules a fresh clone depends on.

- Nothing at the repository root may shadow an installed distribution's top-level module: the
  root is on ``sys.path`` for pytest and for every ``python -m ...`` started from a checkout, and a
  root-level ``kernels/`` once broke ``transformers`` (it probes for the PyPI package ``kernels``).
- The package metadata declares ranges, never exact pins, so ``pip install scforge`` keeps a
  user's own (CUDA) torch; exact versions live only in the lock.
"""

from __future__ import annotations

import importlib.metadata as md

import pytest
from _testpaths import REPO
from packaging.requirements import Requirement
from packaging.version import Version


def root_importable_names() -> dict[str, str]:
    """Top-level names the checkout root provides as a regular package or a module.

    A directory without ``__init__.py`` is only a namespace-package candidate: Python's path
    finder keeps looking and any regular package or module of that name elsewhere on ``sys.path``
    wins, so it shadows nothing.
    """
    names: dict[str, str] = {}
    for entry in REPO.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / "__init__.py").is_file():
            names[entry.name] = f"{entry.name}/"
        elif entry.is_file() and entry.suffix in (".py", ".so", ".pyd") and entry.stem.isidentifier():
            names[entry.stem] = entry.name
    return names


def test_no_root_name_shadows_an_installed_distribution():
    provided = md.packages_distributions()
    names = root_importable_names()
    assert "scforge" in names
    clashes = {
        path: sorted(set(provided[name]) - {"scforge"})
        for name, path in names.items()
        if set(provided.get(name, ())) - {"scforge"}
    }
    assert not clashes, (
        f"repository-root names shadow installed distributions: {clashes}; move them under "
        "scforge/ (or remove the __init__.py of a directory that need not be a package)"
    )


def test_kernels_live_inside_the_package():
    assert not (REPO / "kernels").exists(), "kernels belong in scforge/kernels"
    import scforge.kernels

    assert scforge.kernels.__file__.startswith(str(REPO / "scforge" / "kernels"))


def test_pypi_kernels_package_resolves_to_site_packages():
    """What transformers does (``from kernels import ...``) must not find this checkout."""
    import importlib.util

    spec = importlib.util.find_spec("kernels")
    if spec is None:
        pytest.skip("the PyPI package 'kernels' is not installed in this environment")
    assert spec.origin and "site-packages" in spec.origin.split("/"), spec.origin


def _metadata_requirements() -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI runs 3.11)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def test_metadata_declares_ranges_not_pins():
    pinned = [str(r) for r in _metadata_requirements()
              if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"exact pins belong in requirements/lock.txt, not pyproject.toml: {pinned}"


def test_torch_range_admits_the_cpu_lock_and_the_gpu_machines_torch():
    (torch,) = [r for r in _metadata_requirements() if r.name == "torch"]
    for version in ("2.13.0+cpu", "2.11.0+cu130", "2.14.1"):
        assert torch.specifier.contains(Version(version), prereleases=False), (torch, version)


def test_lock_pins_every_installed_requirement():
    """Every line of the lock is an exact pin (with hashes), and torch is the CPU build."""
    lock = (REPO / "requirements" / "lock.txt").read_text().splitlines()
    pins = {}
    for line in lock:
        line = line.strip()
        if not line or line.startswith(("#", "--hash")) or line.startswith("-"):
            continue
        req = Requirement(line.rstrip("\\ ").strip())
        (spec,) = req.specifier
        assert spec.operator == "==", line
        pins[req.name.lower()] = spec.version
    assert pins["torch"] == "2.13.0+cpu"
    for r in _metadata_requirements():
        if r.marker is None and r.name.lower() not in ("scforge",):
            assert r.name.lower().replace("_", "-") in pins, f"{r.name} missing from the lock"
            assert r.specifier.contains(Version(pins[r.name.lower().replace("_", "-")]),
                                        prereleases=True), (r, pins[r.name.lower()])
