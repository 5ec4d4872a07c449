"""Every file format -> the same shards as the same cells from .h5ad; bad inputs fail cleanly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from scforge.config import ShardJobConfig, load_config
from scforge.data import read_shards
from scforge.data.shard import ShardJob, load_manifest
from scforge.data.shard.cli import main
from scforge.data.sources import open_source

REPO = Path(__file__).resolve().parents[3]


def _cfg(*overrides: str, recipe: str = "geneformer_v2.yaml") -> ShardJobConfig:
    base = ["shard.cells_per_shard=100", "shard.block_cells=32", "source.chunk_cells=64"]
    return load_config(ShardJobConfig, [REPO / "configs/shard" / recipe], [*base, *overrides])


def _cells(inp, out: Path, cfg: ShardJobConfig) -> list[dict]:
    ShardJob([str(inp)], out, cfg, progress=False).run()
    return list(read_shards(out, verify=True))


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory, formats) -> Path:
    """Shards of the .h5ad copy: what every other format must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "ref"
    ShardJob([str(formats["h5ad"])], out, _cfg(), progress=False).run()
    return out


@pytest.mark.parametrize("fmt", ["zarr2", "zarr3"])
@pytest.mark.parametrize("backend", ["tensorstore", "zarr"])
def test_anndata_zarr_shards_are_byte_identical(tmp_path, formats, ref_dir, fmt, backend):
    cfg = _cfg(f"source.zarr_backend={backend}")
    ShardJob([str(formats[fmt])], tmp_path / "z", cfg, progress=False).run()
    ref, got = load_manifest(ref_dir), load_manifest(tmp_path / "z")
    # Same cells, ids, obs and tokens: the shard files themselves are identical.
    assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in ref["shards"]]
    assert got["sources"][0]["format"] == f"anndata-zarr-v{fmt[-1]}"


def test_anndata_zarr_dense_x_and_raw_layer(tmp_path, formats, ref_dir, small_adata):
    """A dense X (zarr v3) and counts under raw/X (zarr v2) read as the same cells."""
    import warnings

    import anndata as ad

    a = small_adata.copy()
    a.X = a.X.toarray()
    b = small_adata.copy()
    b.raw = b
    b.X = b.X * 0.5  # not counts: only raw/X is
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ad.settings.zarr_write_format = 3
        a.write_zarr(tmp_path / "dense.zarr")
        ad.settings.zarr_write_format = 2
        b.write_zarr(tmp_path / "raw.zarr")
    ref = [s["sha256"] for s in load_manifest(ref_dir)["shards"]]
    ShardJob([str(tmp_path / "dense.zarr")], tmp_path / "d", _cfg(), progress=False).run()
    assert [s["sha256"] for s in load_manifest(tmp_path / "d")["shards"]] == ref
    cfg = _cfg("source.layer=raw/X")
    got = _cells(tmp_path / "raw.zarr", tmp_path / "r", cfg)
    want = list(read_shards(ref_dir))
    assert all(
        np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(got, want, strict=True)
    )


@pytest.mark.parametrize("fmt", ["tenx", "tenx_h5", "loom", "csv", "tsv_gz"])
def test_other_formats_give_the_same_tokens(tmp_path, formats, ref_dir, small_adata, fmt):
    ref = list(read_shards(ref_dir))
    got = _cells(formats[fmt], tmp_path / "got", _cfg())
    assert [c["cell_id"] for c in got] == list(small_adata.obs_names)
    for a, b in zip(ref, got, strict=True):
        assert np.array_equal(a["input_ids"], b["input_ids"])
    if fmt == "loom":
        assert [c["batch"] for c in got] == [c["batch"] for c in ref]


def test_tenx_drops_antibody_features(formats, small_adata):
    src = open_source(str(formats["tenx"]))
    assert src.n_genes == small_adata.n_vars and "ADT_CD3" not in src.gene_ids()
    assert src.describe()["n_features_dropped"] == 1
    chunk = src.read_rows(0, 5)
    assert np.array_equal(chunk.data, small_adata.X[:5].tocsr().data)


def test_tenx_mtx_any_entry_order_in_bounded_chunks(tmp_path, formats, small_adata, monkeypatch):
    """Entries in any order (not sorted by cell), parsed in chunks smaller than one cell."""
    import gzip

    import scipy.io
    import scipy.sparse as sp

    from scforge.data.sources import tenx

    d = tmp_path / "shuffled"
    shutil.copytree(formats["tenx"], d)
    coo = scipy.io.mmread(str(d / "matrix.mtx.gz")).tocoo()
    perm = np.random.default_rng(0).permutation(coo.nnz)
    shuffled = sp.coo_matrix((coo.data[perm], (coo.row[perm], coo.col[perm])), shape=coo.shape)
    with gzip.open(d / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, shuffled)
    monkeypatch.setattr(tenx, "MTX_CHUNK_ENTRIES", 5000)  # < one cell (~5,900)
    src = open_source(str(d))
    want = sp.csr_matrix(small_adata.X)
    for a, b in ((0, 1), (0, 64), (50, 160)):
        chunk = src.read_rows(a, b)
        got = sp.csr_matrix((chunk.data, chunk.indices, chunk.indptr), shape=(b - a, src.n_genes))
        assert (got != want[a:b]).nnz == 0
        assert np.array_equal(chunk.indices, want[a:b].indices)  # canonical: sorted per row
    tmp = src._tmp
    assert Path(tmp).is_dir()
    src.close()
    assert not Path(tmp).exists()  # the temporary CSR files are removed


def test_several_formats_one_corpus_with_dataset_field(tmp_path, formats):
    cfg = _cfg("source.obs_fields=[cell_type,dataset]")
    out = tmp_path / "o"
    inputs = [str(formats["h5ad"]), str(formats["tenx"]), str(formats["zarr3"])]
    ShardJob(inputs, out, cfg, progress=False).run()
    man = load_manifest(out)
    assert [s["dataset"] for s in man["sources"]] == [
        "small",
        "filtered_feature_bc_matrix",
        "small_v3",
    ]
    assert [s["cells_kept"] for s in man["sources"]] == [160, 160, 160]
    assert man["obs_fields"] == ["cell_type", "dataset"]
    cells = list(read_shards(out))
    assert [c["dataset"] for c in cells[::160]] == [
        "small",
        "filtered_feature_bc_matrix",
        "small_v3",
    ]
    assert "cell_type" not in cells[200]  # 10x has no obs: the field is absent, not invented


# ---------------------------------------------------------------------------- bad input
def _fails(capsys, tmp_path, *args: str) -> str:
    out = tmp_path / "o"
    code = main([*map(str, args), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scforge-shard: error:"), err
    assert not out.exists() or not any(out.iterdir())
    return lines[0]


def test_zarr_store_that_is_not_anndata(tmp_path, capsys):
    import zarr

    g = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    g.create_array("counts", shape=(4, 4), dtype="f4")
    err = _fails(capsys, tmp_path, tmp_path / "plain.zarr")
    assert "not an AnnData" in err and "write_zarr" in err


def test_transposed_csv(tmp_path, capsys, formats):
    import pandas as pd

    df = pd.read_csv(formats["csv"], index_col=0, nrows=20)
    df.T.to_csv(tmp_path / "genes_by_cells.csv")
    err = _fails(capsys, tmp_path, tmp_path / "genes_by_cells.csv")
    assert "transposed" in err and "df.T.to_csv" in err


def test_unreadable_10x_directories(tmp_path, capsys, formats):
    missing = tmp_path / "no_matrix"
    shutil.copytree(formats["tenx"], missing)
    (missing / "matrix.mtx.gz").unlink()
    err = _fails(capsys, tmp_path, missing)
    assert "missing matrix.mtx" in err and "filtered_feature_bc_matrix" in err
    corrupt = tmp_path / "corrupt"
    shutil.copytree(formats["tenx"], corrupt)
    blob = (corrupt / "matrix.mtx.gz").read_bytes()
    (corrupt / "matrix.mtx.gz").write_bytes(blob[: len(blob) // 3])  # truncated download
    err = _fails(capsys, tmp_path, corrupt)
    assert "unreadable" in err
    short = tmp_path / "short"  # complete gzip, but entries missing (header says more)
    shutil.copytree(formats["tenx"], short)
    import gzip

    lines = gzip.decompress((short / "matrix.mtx.gz").read_bytes()).splitlines(keepends=True)
    (short / "matrix.mtx.gz").write_bytes(gzip.compress(b"".join(lines[:-100])))
    err = _fails(capsys, tmp_path, short)
    assert "unreadable" in err and "truncated" in err


def test_mixed_gene_id_types_that_cannot_be_mapped(tmp_path, capsys, formats, small_adata):
    import pandas as pd

    a = small_adata[:, :300].copy()
    a.var = pd.DataFrame(index=[f"Gm{i}" for i in range(a.n_vars)])  # names with no mapping
    a.write_h5ad(tmp_path / "mouse_names.h5ad")
    err = _fails(capsys, tmp_path, formats["h5ad"], tmp_path / "mouse_names.h5ad")
    assert "mix gene-id types" in err and "mouse_names.h5ad" in err
    err = _fails(capsys, tmp_path, "stats", formats["h5ad"], tmp_path / "mouse_names.h5ad")
    assert "mix gene-id types" in err and "source.gene_column" in err


def test_missing_input_names_supported_formats(tmp_path, capsys):
    err = _fails(capsys, tmp_path, tmp_path / "nope.h5ad")
    assert "does not exist" in err and "census://" in err
