"""Synthetic raw-count generator: determinism, realism, NB exactness and the streamed .h5ad."""

from __future__ import annotations

import importlib.util
import json
import math
import tracemalloc
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scforge.testing import (
    SyntheticParams,
    default_gene_ids,
    gene_symbols_for,
    synthetic_anndata,
    synthetic_counts,
    write_synthetic_h5ad,
)
from scforge.testing import synthetic as syn

REPO = Path(__file__).resolve().parents[2]

# small settings that keep each test well under a second once the kernels are compiled
SMALL = {"n_genes": 3000, "mean_nnz": 300.0}


def _small(n_cells: int, seed: int = 0, **kw) -> sp.csr_matrix:
    return synthetic_counts(n_cells, SMALL["n_genes"], seed=seed, mean_nnz=SMALL["mean_nnz"], **kw)


def _assert_csr_equal(a: sp.csr_matrix, b: sp.csr_matrix) -> None:
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)


# ------------------------------------------------------------------ in-memory matrix


def test_shape_dtypes_sorted_nonnegative_integers():
    x = _small(400, seed=3)
    assert isinstance(x, sp.csr_matrix)
    assert x.shape == (400, SMALL["n_genes"])
    assert x.data.dtype == np.float32
    assert x.indices.dtype == np.int32
    assert x.indptr.dtype in (np.int32, np.int64)
    assert x.has_sorted_indices
    starts = np.zeros(x.nnz, bool)
    starts[x.indptr[:-1][np.diff(x.indptr) > 0]] = True
    assert np.all(np.diff(x.indices.astype(np.int64))[~starts[1:]] > 0), "indices not strictly sorted"
    assert x.data.min() >= 1.0, "explicit zeros or negative counts"
    np.testing.assert_array_equal(x.data, np.round(x.data))
    assert x.indices.min() >= 0 and x.indices.max() < SMALL["n_genes"]


def test_deterministic_by_seed():
    a, b = _small(300, seed=11), _small(300, seed=11)
    _assert_csr_equal(a, b)
    c = _small(300, seed=12)
    assert c.nnz != a.nnz or not np.array_equal(c.indices, a.indices)


def test_rows_do_not_depend_on_n_cells_chunking_or_threads():
    full = _small(700, seed=5)
    _assert_csr_equal(_small(250, seed=5), full[:250])
    _assert_csr_equal(_small(700, seed=5, n_threads=1), full)
    model = syn._build_model(SMALL["n_genes"], 5, SMALL["mean_nnz"], 8, 2, SyntheticParams())
    for chunk in syn._iter_chunks(model, 700, 97, prefetch=True):
        n = chunk.indptr.shape[0] - 1
        part = sp.csr_matrix((chunk.data, chunk.indices, chunk.indptr), shape=(n, full.shape[1]))
        _assert_csr_equal(part, full[chunk.start:chunk.start + n])


def test_block_overflow_fallback_gives_identical_rows(monkeypatch):
    reference = _small(600, seed=8)
    syn._build_model.cache_clear()
    monkeypatch.setattr(syn, "_BLOCK_SLACK", 0.05)  # every block overflows its buffer
    try:
        model = syn._build_model(SMALL["n_genes"], 8, SMALL["mean_nnz"], 8, 2, SyntheticParams())
        x = syn._generate(model, 600, None)[0]
    finally:
        syn._build_model.cache_clear()
    _assert_csr_equal(x, reference)


@pytest.mark.parametrize(("n_genes", "mean_nnz"), [(20000, 1500.0), (5000, 500.0)])
def test_nonzeros_per_cell_are_calibrated(n_genes, mean_nnz):
    x = synthetic_counts(3000, n_genes, seed=2, mean_nnz=mean_nnz)
    nnz = np.diff(x.indptr)
    assert abs(nnz.mean() - mean_nnz) < 0.03 * mean_nnz
    within = np.mean((nnz >= mean_nnz * 2 / 3) & (nnz <= mean_nnz * 2))
    assert within >= 0.9, f"only {within:.1%} of cells in the band"
    if n_genes == 20000:  # the documented ~1,000-3,000 genes per cell at the defaults
        assert np.mean((nnz >= 1000) & (nnz <= 3000)) >= 0.9
        umis = np.asarray(x.sum(axis=1)).ravel()
        assert 1.5 < umis.mean() / nnz.mean() < 4.0  # UMIs per detected gene, 10x-like
        assert x.data.max() > 100  # heavy-tailed expression
        assert np.mean(x.data == 1) > 0.5  # most detected genes have a single UMI


def _nb_z_scores(model, x: sp.csr_matrix, head_model) -> tuple[np.ndarray, np.ndarray]:
    """z-scores of per-gene total counts and detections against the exact NB expectations."""
    n = x.shape[0]
    types, batches, size = syn._cell_metadata(model, 0, n)
    group = types * model.n_batches + batches
    # head_model draws every gene one by one, so its head arrays hold w / r and r of all genes
    hp = head_model.head_ptr
    assert np.all(np.diff(hp) == model.n_genes)
    xr = head_model.head_x.reshape(-1, model.n_genes)[group] * (model.lib0 * size)[:, None]
    r = head_model.head_r.reshape(-1, model.n_genes)[group]
    mu = xr * r
    p0 = np.exp(-r * np.log1p(xr))
    var = mu + mu * mu / r
    dense = x.toarray().astype(np.float64)
    z_sum = (dense.sum(0) - mu.sum(0)) / np.sqrt(var.sum(0))
    z_det = ((dense > 0).sum(0) - (1 - p0).sum(0)) / np.sqrt((p0 * (1 - p0)).sum(0) + 1e-12)
    return z_sum, z_det


@pytest.mark.parametrize("head_mean", [0.0, math.inf])
def test_counts_follow_the_negative_binomial(head_mean):
    """Both samplers (gene-by-gene and thinned alias) match NB means and zero probabilities."""
    args = (400, 21, 80.0, 2, 2, SyntheticParams())
    all_head = syn._build_model(*args, 0.0)
    model = syn._build_model(*args, head_mean)
    if head_mean == math.inf:
        assert model.head_ptr[-1] == 0
    x = syn._generate(model, 20000, None)[0]
    z_sum, z_det = _nb_z_scores(model, x, all_head)
    # 800 statistics: the max of that many standard normals is ~3.2 (and < 5 almost surely)
    assert np.abs(z_sum).max() < 5.0, np.sort(np.abs(z_sum))[-5:]
    assert np.abs(z_det).max() < 5.0, np.sort(np.abs(z_det))[-5:]
    assert abs(z_sum.mean()) < 0.3 and abs(z_det.mean()) < 0.3


def test_cell_types_are_learnable_and_batches_milder():
    a = synthetic_anndata(3000, 2000, seed=0, mean_nnz=400, n_cell_types=4, n_batches=2)
    x = a.X.toarray()
    x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    y = a.obs["cell_type"].cat.codes.to_numpy()
    train = np.arange(3000) < 1500
    cents = np.stack([x[train & (y == k)].mean(0) for k in range(4)])
    pred = np.argmin(((x[~train, None, :] - cents[None]) ** 2).sum(-1), axis=1)
    assert (pred == y[~train]).mean() > 0.95

    def centroid_distance(key: str) -> float:
        codes = a.obs[key].cat.codes.to_numpy()
        k = codes.max() + 1
        c = np.stack([x[codes == i].mean(0) for i in range(k)])
        d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
        return float(d[np.triu_indices(k, 1)].mean())

    assert centroid_distance("cell_type") > 2 * centroid_distance("batch") > 0


# ------------------------------------------------------------------ .h5ad writer


def test_h5ad_matches_in_memory_and_is_readable_backed(tmp_path):
    out = tmp_path / "syn.h5ad"
    summary = write_synthetic_h5ad(out, 1500, SMALL["n_genes"], seed=4, mean_nnz=SMALL["mean_nnz"],
                                   chunk_cells=400, n_cell_types=3, n_batches=2)
    ref = synthetic_counts(1500, SMALL["n_genes"], seed=4, mean_nnz=SMALL["mean_nnz"],
                           n_cell_types=3, n_batches=2)
    assert summary["nnz"] == ref.nnz and summary["n_cells"] == 1500
    assert not (tmp_path / "syn.h5ad.tmp").exists()

    with h5py.File(out, "r") as f:
        g = f["X"]
        assert g.attrs["encoding-type"] == "csr_matrix"
        assert g.attrs["encoding-version"] == "0.1.0"
        assert tuple(g.attrs["shape"]) == (1500, SMALL["n_genes"])
        assert g["data"].dtype == np.float32 and g["indices"].dtype == np.int32
        assert g["indptr"].dtype == np.int64
        assert g["data"].maxshape == (None,) and g["data"].chunks is not None
        assert g["data"].compression == "lzf"

    backed = ad.read_h5ad(out, backed="r")
    try:
        assert backed.shape == (1500, SMALL["n_genes"])
        _assert_csr_equal(sp.csr_matrix(backed.X[:10]), ref[:10])
        _assert_csr_equal(sp.csr_matrix(backed.X[700:710]), ref[700:710])
    finally:
        backed.file.close()

    full = ad.read_h5ad(out)
    _assert_csr_equal(sp.csr_matrix(full.X), ref)
    obs = full.obs
    assert obs.index[0] == "syn_0000000" and obs.index[-1] == "syn_0001499"
    assert list(obs["cell_type"].cat.categories) == ["type_0", "type_1", "type_2"]
    assert list(obs["batch"].cat.categories) == ["batch_0", "batch_1"]
    np.testing.assert_array_equal(obs["n_genes"].to_numpy(), np.diff(ref.indptr))
    np.testing.assert_array_equal(obs["n_counts"].to_numpy(),
                                  np.asarray(ref.sum(axis=1)).ravel().astype(np.float32))
    assert summary["cell_type_counts"] == obs["cell_type"].value_counts(sort=False).tolist()
    assert list(full.var_names) == default_gene_ids(SMALL["n_genes"])
    assert full.var["gene_symbols"].iloc[0] == gene_symbols_for([full.var_names[0]])[0]
    assert full.uns["synthetic"]["seed"] == 4

    mem = synthetic_anndata(1500, SMALL["n_genes"], seed=4, mean_nnz=SMALL["mean_nnz"],
                            n_cell_types=3, n_batches=2)
    pd.testing.assert_frame_equal(mem.obs, obs)
    pd.testing.assert_frame_equal(mem.var, full.var)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_h5ad_is_deterministic_across_chunking_and_compression(tmp_path, compression):
    a = write_synthetic_h5ad(tmp_path / "a.h5ad", 900, 2000, seed=9, mean_nnz=200.0,
                             chunk_cells=900, compression="lzf")
    b = write_synthetic_h5ad(tmp_path / "b.h5ad", 900, 2000, seed=9, mean_nnz=200.0,
                             chunk_cells=128, compression=compression)
    assert a["nnz"] == b["nnz"]
    with h5py.File(a["path"], "r") as fa, h5py.File(b["path"], "r") as fb:
        for key in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(fa["X"][key][:], fb["X"][key][:])
        assert fb["X"]["data"].compression == compression


def test_writer_memory_is_bounded_by_the_chunk(tmp_path):
    # X is ~40k x 200 x 8 B = 64 MB; with 2,000-cell chunks the writer should hold far less
    write_synthetic_h5ad(tmp_path / "warm.h5ad", 100, 2000, seed=1, mean_nnz=200.0)
    tracemalloc.start()
    try:
        s = write_synthetic_h5ad(tmp_path / "big.h5ad", 40000, 2000, seed=1, mean_nnz=200.0,
                                 chunk_cells=2000, compression=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    x_bytes = s["nnz"] * 8
    assert x_bytes > 50e6
    assert peak < 0.4 * x_bytes, f"peak {peak / 1e6:.0f} MB for a {x_bytes / 1e6:.0f} MB matrix"


def test_gene_ids_default_padding_and_override(tmp_path):
    ids = default_gene_ids(5)
    assert ids[0] == "ENSG00000000003" and all(i.startswith("ENSG0") for i in ids)
    many = default_gene_ids(20300)
    assert len(set(many)) == 20300
    assert not any(i.startswith("<") for i in many)
    pad = [i for i in many if i.startswith("ENSG9")]
    assert len(pad) == 20300 - 20271 and all(len(i) == 15 for i in pad)
    assert gene_symbols_for(["ENSG00000000003", pad[0]]) == ["TSPAN6", "SYM_" + pad[0]]

    custom = [f"G{i}" for i in range(50)]
    a = synthetic_anndata(20, 50, seed=0, mean_nnz=10, gene_ids=custom)
    assert list(a.var_names) == custom
    with pytest.raises(ValueError, match="gene_ids has 49 entries"):
        write_synthetic_h5ad(tmp_path / "x.h5ad", 20, 50, mean_nnz=10, gene_ids=custom[:49])
    with pytest.raises(ValueError, match="unique"):
        synthetic_anndata(20, 50, seed=0, mean_nnz=10, gene_ids=["G"] * 50)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_cells": 0}, "n_cells must be >= 1, got 0"),
        ({"n_cells": True}, "n_cells must be an integer, got True"),
        ({"n_genes": 2.5}, "n_genes must be an integer, got 2.5"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"mean_nnz": 0}, "mean_nnz must be > 0, got 0"),
        ({"mean_nnz": 1600}, "mean_nnz=1600 is too large for n_genes=3000"),
        ({"n_cell_types": 0}, "n_cell_types must be >= 1, got 0"),
        ({"n_threads": 0}, "n_threads must be >= 1, got 0"),
        ({"params": {"lib_log_sd": 1}}, "params must be a SyntheticParams"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, match):
    args = {"n_cells": 10, "n_genes": 3000, "seed": 0, "mean_nnz": 300.0} | kwargs
    n_cells, n_genes = args.pop("n_cells"), args.pop("n_genes")
    with pytest.raises(ValueError, match=match):
        synthetic_counts(n_cells, n_genes, **args)


def test_invalid_writer_arguments(tmp_path):
    with pytest.raises(ValueError, match="compression must be None, 'lzf' or 'gzip', got 'zstd'"):
        write_synthetic_h5ad(tmp_path / "x.h5ad", 10, 3000, mean_nnz=300, compression="zstd")
    with pytest.raises(ValueError, match="chunk_cells must be >= 1, got 0"):
        write_synthetic_h5ad(tmp_path / "x.h5ad", 10, 3000, mean_nnz=300, chunk_cells=0)
    with pytest.raises(ValueError, match="parent directory of path does not exist"):
        write_synthetic_h5ad(tmp_path / "no" / "x.h5ad", 10, 3000, mean_nnz=300)
    with pytest.raises(ValueError, match="SyntheticParams.lib_log_sd must be a finite number"):
        SyntheticParams(lib_log_sd=-1.0)
    assert not list(tmp_path.iterdir())


def test_make_corpus_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_corpus", REPO / "tools" / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "c.h5ad"
    rc = cli.main(["--cells", "500", "--genes", "2000", "--out", str(out), "--seed", "7",
                   "--nnz-per-cell", "200", "--chunk-cells", "128", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_cells"] == 500 and summary["path"] == str(out)
    ref = synthetic_counts(500, 2000, seed=7, mean_nnz=200)
    assert summary["nnz"] == ref.nnz
    assert cli.main(["--cells", "10", "--genes", "100", "--out", str(out),
                     "--nnz-per-cell", "90", "--no-progress"]) == 2
    assert "too large" in capsys.readouterr().err
