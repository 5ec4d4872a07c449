"""Fixtures for the input formats: local SOMA experiments / a Census-shaped tree built from the
real h5ad files with ``tiledbsoma.io.from_anndata`` (once per session), and the same cells written
as AnnData zarr (v2, v3), 10x mtx / h5, loom and csv."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
REPO = Path(__file__).resolve().parents[3]
N_SMALL = 160


def write_census_tree(root: Path, adata: ad.AnnData, organism: str = "homo_sapiens") -> Path:
    """A local tree shaped like the CELLxGENE Census (what ``cellxgene_census.open_soma(uri=)``
    opens): ``census_info/summary`` and ``census_data/<organism>`` with Census var columns."""
    import pyarrow as pa
    import tiledbsoma as soma
    import tiledbsoma.io

    a = adata.copy()
    ids = a.var["gene_ids"].to_numpy() if "gene_ids" in a.var else a.var_names.to_numpy()
    if "gene_symbols" in a.var:
        names = a.var["gene_symbols"].to_numpy()
    else:  # Census var carries symbols; take them from the bundled GENCODE map
        from scforge.resources import load_json

        id2name = load_json("gencode_v44_id2name.json.gz")
        names = np.array([id2name.get(g, g) for g in ids], dtype=object)
    a.var = pd.DataFrame(
        {"feature_id": ids, "feature_name": names, "feature_length": np.zeros(a.n_vars, np.int64)},
        index=a.var_names,
    )
    with soma.Collection.create(str(root)) as c:
        info = c.add_new_collection("census_info")
        schema = pa.schema([("label", pa.large_string()), ("value", pa.large_string())])
        summ = info.add_new_dataframe("summary", schema=schema, domain=[[0, 7]])
        summ.write(
            pa.table(
                {
                    "soma_joinid": pa.array([0, 1], pa.int64()),
                    "label": ["census_schema_version", "census_build_date"],
                    "value": ["2.1.0", "test"],
                }
            )
        )
        c.add_new_collection("census_data")
    uri = str(root / "census_data" / organism)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        soma.io.from_anndata(
            uri, a, measurement_name="RNA", X_layer_name="raw", platform_config=_FAST_INGEST
        )
    with soma.Collection.open(str(root / "census_data"), "w") as cd:
        cd.set(organism, soma.Experiment.open(uri), use_relative_uri=True)
    return root


# Larger tiles than the default halve from_anndata's time on these 2-core machines.
_FAST_INGEST = {
    "tiledb": {"create": {"dims": {"soma_dim_0": {"tile": 65536}, "soma_dim_1": {"tile": 65536}}}}
}


@pytest.fixture(scope="session")
def fast_ingest() -> dict:
    """``platform_config`` for ``tiledbsoma.io.from_anndata`` with the faster tiles."""
    return _FAST_INGEST


@pytest.fixture(scope="session")
def census_root(tmp_path_factory) -> Path:
    """Census-shaped tree holding cellbench_5batch (1,408 cells) as homo_sapiens."""
    pytest.importorskip("tiledbsoma")
    pytest.importorskip("cellxgene_census")
    a = ad.read_h5ad(SHARED / "cellbench_5batch.h5ad")
    return write_census_tree(tmp_path_factory.mktemp("census") / "census", a)


@pytest.fixture(scope="session")
def cellbench_experiment(census_root) -> Path:
    return census_root / "census_data" / "homo_sapiens"


@pytest.fixture(scope="session")
def small_adata() -> ad.AnnData:
    """The first cells of cellbench_5batch (real counts, Ensembl ids, obs batch/cell_type)."""
    a = ad.read_h5ad(SHARED / "cellbench_5batch.h5ad")
    return a[:N_SMALL].copy()


def write_formats(root: Path, a: ad.AnnData) -> dict[str, Path]:
    """The same cells as h5ad, zarr v2/v3, 10x mtx dir, 10x h5, loom, csv and tsv.gz."""
    x = sp.csr_matrix(a.X)
    out = {"h5ad": root / "small.h5ad"}
    a.write_h5ad(out["h5ad"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fmt in (2, 3):
            ad.settings.zarr_write_format = fmt
            out[f"zarr{fmt}"] = root / f"small_v{fmt}.zarr"
            a.write_zarr(out[f"zarr{fmt}"])
        ad.settings.zarr_write_format = 2
    tenx = root / "filtered_feature_bc_matrix"
    tenx.mkdir()
    feats = pd.DataFrame({0: a.var_names, 1: a.var_names, 2: "Gene Expression"})
    feats.loc[len(feats)] = ["ADT_CD3", "CD3", "Antibody Capture"]  # dropped by the reader
    with gzip.open(tenx / "features.tsv.gz", "wt") as fh:
        feats.to_csv(fh, sep="\t", header=False, index=False)
    with gzip.open(tenx / "barcodes.tsv.gz", "wt") as fh:
        fh.write("\n".join(a.obs_names) + "\n")
    adt = sp.csr_matrix(np.full((1, a.n_obs), 7))  # antibody counts must not enter totals
    mtx = sp.vstack([x.T.astype(np.int64), adt]).tocoo()
    with gzip.open(tenx / "matrix.mtx.gz", "wb", compresslevel=1) as fh:
        scipy.io.mmwrite(fh, mtx)
    out["tenx"] = tenx
    out["tenx_h5"] = root / "small_10x.h5"
    c = sp.csc_matrix(x.T)
    with h5py.File(out["tenx_h5"], "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = c.data.astype(np.int32), c.indices, c.indptr
        g["shape"] = np.array(c.shape)
        g["barcodes"] = np.array(a.obs_names, dtype="S")
        fg = g.create_group("features")
        fg["id"] = np.array(a.var_names, dtype="S")
        fg["name"] = np.array(a.var_names, dtype="S")
        fg["feature_type"] = np.array(["Gene Expression"] * a.n_vars, dtype="S")
    out["loom"] = root / "small.loom"
    with h5py.File(out["loom"], "w") as f:
        f.create_dataset("matrix", data=x.T.toarray(), chunks=(64, 64))
        f.create_group("layers")
        r = f.create_group("row_attrs")
        r["Accession"] = np.array(a.var_names, dtype="S")
        r["Gene"] = np.array(a.var_names, dtype="S")
        col = f.create_group("col_attrs")
        col["CellID"] = np.array(a.obs_names, dtype="S")
        for k in ("cell_type", "batch"):
            col[k] = np.array(a.obs[k].astype(str), dtype="S")
    out["csv"] = root / "small.csv"
    _write_text(out["csv"], a, ",")
    out["tsv_gz"] = root / "small.tsv.gz"
    _write_text(out["tsv_gz"], a, "\t")
    return out


def _write_text(path: Path, a: ad.AnnData, sep: str) -> None:
    """Cells x genes counts with a header of gene ids (what pandas ``to_csv`` writes, faster)."""
    rows = sp.csr_matrix(a.X).toarray().astype(np.int64).tolist()
    lines = [sep.join(["", *a.var_names])]
    lines += [sep.join([name, *map(str, r)]) for name, r in zip(a.obs_names, rows, strict=True)]
    text = ("\n".join(lines) + "\n").encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text, compresslevel=1))
    else:
        path.write_bytes(text)


@pytest.fixture(scope="session")
def formats(tmp_path_factory, small_adata) -> dict[str, Path]:
    return write_formats(tmp_path_factory.mktemp("formats"), small_adata)
