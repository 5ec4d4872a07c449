"""Benchmark corpora: presets, reproducible by seed, h5ad and local SOMA hold the same counts,
the make_corpus CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from scforge.testing.corpus import PRESETS, corpus_paths, ensure_corpus, parse_cells

REPO = Path(__file__).resolve().parents[2]
SMALL = {"n_genes": 2000, "mean_nnz": 200.0}


def _x(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with h5py.File(path) as f:
        return f["X/indptr"][:], f["X/indices"][:], f["X/data"][:]


def test_presets_and_sizes():
    assert PRESETS == {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
    assert parse_cells("1M") == 1_000_000 and parse_cells("100K") == 100_000
    assert parse_cells("2500") == 2500 and parse_cells(7) == 7
    for bad in ("lots", "0", "-5", 0):
        with pytest.raises(ValueError, match="corpus size"):
            parse_cells(bad)


def test_same_seed_same_counts_other_seed_other_counts(tmp_path):
    a = ensure_corpus(tmp_path / "a", 300, seed=5, chunk_cells=100, **SMALL)
    b = ensure_corpus(tmp_path / "b", 300, seed=5, chunk_cells=64, **SMALL)
    c = ensure_corpus(tmp_path / "c", 300, seed=6, **SMALL)
    xa, xb, xc = _x(a["h5ad"]), _x(b["h5ad"]), _x(c["h5ad"])
    for u, v in zip(xa, xb, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(xa[0], xc[0])
    assert a["reused"] is False and a["generate"]["n_cells"] == 300
    again = ensure_corpus(tmp_path / "a", 300, seed=5, **SMALL)
    assert again["reused"] is True and "generate" not in again
    assert Path(a["h5ad"]) == corpus_paths(tmp_path / "a", 300, seed=5, **SMALL)[0]


def test_soma_corpus_holds_the_h5ad_counts(tmp_path):
    pytest.importorskip("tiledbsoma", reason="tiledbsoma is in the census extra")
    from scforge.data.sources import open_source

    info = ensure_corpus(tmp_path, 250, seed=1, soma=True, **SMALL)
    assert Path(info["soma"]).is_dir() and info["soma_ingest"]["bytes"] > 0
    h5, so = open_source(info["h5ad"]), open_source(info["soma"])
    assert (so.n_cells, so.n_genes) == (h5.n_cells, h5.n_genes) == (250, SMALL["n_genes"])
    assert list(so.gene_ids()) == list(h5.gene_ids())
    ca, cb = h5.read_rows(0, 250), so.read_rows(0, 250)
    np.testing.assert_array_equal(np.diff(ca.indptr), np.diff(cb.indptr))
    np.testing.assert_array_equal(ca.indices, cb.indices)
    np.testing.assert_array_equal(ca.data, cb.data)
    assert not list(tmp_path.glob("*.tmp"))  # written under a temp name, renamed when complete


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools/make_corpus.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_make_corpus_cli_soma_only_and_errors(tmp_path):
    pytest.importorskip("tiledbsoma", reason="tiledbsoma is in the census extra")
    out = tmp_path / "c.h5ad"
    r = _cli(
        "--cells",
        "120",
        "--genes",
        "2000",
        "--nnz-per-cell",
        "150",
        "--out",
        str(out),
        "--format",
        "soma",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["n_cells"] == 120 and summary["path"] is None
    assert Path(summary["soma"]["uri"]) == tmp_path / "c.soma"
    assert (tmp_path / "c.soma").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.soma"]  # no h5ad left behind
    r = _cli("--cells", "120", "--genes", "2000", "--out", str(out), "--format", "soma")
    assert r.returncode == 2 and "exists" in r.stderr
    r = _cli("--cells", "many", "--out", str(out))
    assert r.returncode == 2 and "corpus size" in r.stderr
