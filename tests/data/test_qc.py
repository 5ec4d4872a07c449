"""QC filters inside units and HVG-restricted vocabularies.

Filtered shards must stay a pure function of (inputs, config): blocks are packed across chunks, so
the bytes do not depend on chunk size or worker count, every block but a shard's last is full (as
the streaming loader indexes cells), and a unit whose cells are all dropped is left out."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scforge.config import ShardJobConfig, load_config
from scforge.data import read_shards
from scforge.data.shard import ShardJob, load_manifest
from scforge.data.sources import open_source
from scforge.data.stats.qc import mito_columns
from scforge.data.stream.ordering import block_sizes

REPO = Path(__file__).resolve().parents[2]
QC = ["source.qc.min_genes=3000", "source.qc.max_counts=60000", "source.qc.max_mito_fraction=0.2"]


def _cfg(*overrides: str, recipe: str = "geneformer_v2.yaml") -> ShardJobConfig:
    base = ["shard.cells_per_shard=400", "shard.block_cells=64", "source.chunk_cells=128"]
    return load_config(ShardJobConfig, [REPO / "configs/shard" / recipe], [*base, *overrides])


def _direct_qc(path: Path) -> tuple[np.ndarray, dict[str, int]]:
    src = open_source(str(path))
    x = sp.csr_matrix(ad.read_h5ad(path).X)
    genes = np.asarray((x > 0).sum(axis=1)).ravel()
    total = np.asarray(x.sum(axis=1)).ravel()
    mt = np.asarray(x[:, mito_columns(src)].sum(axis=1)).ravel() / total
    fails = {"min_genes": genes < 3000, "max_counts": total > 60000, "max_mito_fraction": mt > 0.2}
    drop = np.logical_or.reduce(list(fails.values()))
    return ~drop, {**{k: int(v.sum()) for k, v in fails.items()}, "total": int(drop.sum())}


def test_drop_counts_and_kept_cells_match_direct_qc(tmp_path, cellbench_path):
    keep, counts = _direct_qc(cellbench_path)
    assert 0 < counts["total"] < len(keep) and all(counts.values())
    cfg = _cfg(*QC)
    job = ShardJob([str(cellbench_path)], tmp_path / "o", cfg, progress=False)
    summary = job.run()
    man = load_manifest(tmp_path / "o")
    assert man["totals"]["cells_dropped"] == counts
    assert man["sources"][0]["cells_dropped"] == counts
    assert summary["cells"] == man["totals"]["cells"] == int(keep.sum())
    cells = list(read_shards(tmp_path / "o"))
    rows = np.flatnonzero(keep)
    assert [c["row"] for c in cells] == rows.tolist()
    # Tokens of the kept cells equal a direct tokenization of those rows.
    src = open_source(str(cellbench_path))
    chunk = src.read_rows(0, src.n_cells)
    x = sp.csr_matrix((chunk.data, chunk.indices, chunk.indptr))[rows]
    from scforge.data.sources import CSRChunk

    kept = CSRChunk(0, x.indptr.astype(np.int64), x.indices, x.data)
    direct = job.prep.tokenizer.tokenize(kept, job.prep.maps[0], rows)
    assert np.array_equal(np.concatenate([c["input_ids"] for c in cells]), direct.tokens)
    # Blocks are packed: the streaming loader's block arithmetic holds for filtered shards.
    sizes = block_sizes(
        [s["cells"] for s in man["shards"]],
        [s["blocks"] for s in man["shards"]],
        man["block_cells"],
    )
    assert sum(int(s.sum()) for s in sizes) == keep.sum()
    assert all(s["cells"] < 400 for s in man["shards"])


def test_filtered_shards_independent_of_chunk_size(tmp_path, cellbench_path):
    a = ShardJob([str(cellbench_path)], tmp_path / "a", _cfg(*QC), progress=False)
    a.run()
    b_cfg = _cfg(*QC, "source.chunk_cells=1000")
    ShardJob([str(cellbench_path)], tmp_path / "b", b_cfg, progress=False).run()
    assert load_manifest(tmp_path / "a")["shards"] == load_manifest(tmp_path / "b")["shards"]


def test_filter_pass_column_and_empty_units(tmp_path, cellbench_path):
    a = ad.read_h5ad(cellbench_path)
    fp = np.ones(a.n_obs, dtype=int)
    fp[:400] = 0  # the whole first unit fails a previous QC
    fp[500:520] = 0
    a.obs["filter_pass"] = fp
    path = tmp_path / "with_filter_pass.h5ad"
    a.write_h5ad(path)
    ShardJob([str(path)], tmp_path / "o", _cfg(), progress=False).run()
    man = load_manifest(tmp_path / "o")
    assert man["totals"]["cells_dropped"] == {"filter_pass": 420, "total": 420}
    assert [s["file"] for s in man["shards"]][0] == "shard-000001.tar"  # empty unit not listed
    assert (tmp_path / "o" / "shard-000000.tar").is_file()  # but marked done for resume
    cells = list(read_shards(tmp_path / "o"))
    assert len(cells) == a.n_obs - 420 and cells[0]["row"] == 400
    rerun = ShardJob([str(path)], tmp_path / "o", _cfg(), progress=False).run()
    assert rerun["shards_written"] == 0
    off = _cfg('source.qc.filter_pass_column=""')
    ShardJob([str(path)], tmp_path / "all", off, progress=False).run()
    assert load_manifest(tmp_path / "all")["totals"]["cells"] == a.n_obs


def test_binned_hvg_restriction_matches_scgpt_subsetting(tmp_path, cellbench_path):
    """HVG genes only, and bin edges from HVG counts only (scGPT subsets, then bins)."""
    cfg = _cfg(
        "tokenizer.binned_expression.hvg=600",
        "source.hvg.batch_key=batch",
        "shard.cells_per_shard=6000",
        "source.chunk_cells=2048",
        recipe="scgpt_binned.yaml",
    )
    job = ShardJob([str(cellbench_path)], tmp_path / "o", cfg, progress=False)
    job.run()
    hvg = pd.read_json(tmp_path / "o" / "hvg.json", typ="series").tolist()
    assert len(hvg) == 600 and load_manifest(tmp_path / "o")["hvg"]["n_genes"] == 600
    src = open_source(str(cellbench_path))
    cols = np.isin(src.gene_ids(), hvg)
    gmap = job.prep.maps[0]
    allowed = set(gmap.col_token[cols & (gmap.col_token >= 0)].tolist())
    assert len(allowed) > 450 and set(np.flatnonzero(gmap.col_token >= 0)) <= set(
        np.flatnonzero(cols)
    )
    n = 400  # direct: subset the columns to HVGs, then tokenize
    chunk = src.read_rows(0, n)
    x = sp.csr_matrix((chunk.data, chunk.indices, chunk.indptr), shape=(n, src.n_genes))
    x = sp.csr_matrix(x.multiply(cols[None, :].astype(np.float32)))
    x.eliminate_zeros()
    from scforge.data.sources import CSRChunk

    direct = job.prep.tokenizer.tokenize(
        CSRChunk(0, x.indptr.astype(np.int64), x.indices, x.data), gmap, np.arange(n)
    )
    cells = [c for _, c in zip(range(n), read_shards(tmp_path / "o"), strict=False)]
    specials = set(job.prep.vocab.specials.values())
    assert set(np.concatenate([c["input_ids"] for c in cells]).tolist()) - specials <= allowed
    assert np.array_equal(np.concatenate([c["input_ids"] for c in cells]), direct.tokens)
    assert np.array_equal(np.concatenate([c["values"] for c in cells]), direct.values)
    # A precomputed list (scforge-shard stats --hvg) gives the same shards without a stats pass.
    cfg2 = _cfg(
        f"source.hvg.genes={tmp_path / 'o' / 'hvg.json'}",
        "shard.cells_per_shard=6000",
        "source.chunk_cells=2048",
        recipe="scgpt_binned.yaml",
    )
    ShardJob([str(cellbench_path)], tmp_path / "o2", cfg2, progress=False).run()
    assert [s["sha256"] for s in load_manifest(tmp_path / "o2")["shards"]] == [
        s["sha256"] for s in load_manifest(tmp_path / "o")["shards"]
    ]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("source.qc.max_mito_fraction=0", "max_mito_fraction"),
        ("source.qc.min_genes=-1", "min_genes"),
        ("source.hvg.genes=/nonexistent/hvg.json", "stats --hvg"),
    ],
)
def test_bad_qc_and_hvg_settings(tmp_path, capsys, cellbench_path, override, needle):
    from scforge.data.shard.cli import main

    code = main([str(cellbench_path), "--out", str(tmp_path / "o"), override, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1


def test_recipes_census_and_hvg1200(tmp_path, cellbench_path):
    """The Census recipe names its query as an input; the HVG recipe keeps 1,200 genes."""
    from scforge.data.shard.prepare import config_inputs
    from scforge.data.sources.soma import parse_soma_url

    census = load_config(
        ShardJobConfig,
        [REPO / "configs/shard/geneformer_v2.yaml", REPO / "configs/shard/census_blood.yaml"],
    )
    (url,) = config_inputs(census)
    spec = parse_soma_url(url)
    assert spec.census_version == "2025-01-30" and spec.layer == "raw"
    assert spec.obs_value_filter == 'is_primary_data == True and tissue_general == "blood"'
    cfg = load_config(
        ShardJobConfig,
        [REPO / "configs/shard/scgpt_binned.yaml", REPO / "configs/shard/scgpt_hvg1200.yaml"],
        ["shard.cells_per_shard=2000", "source.chunk_cells=2048"],
    )
    ShardJob([str(cellbench_path)], tmp_path / "o", cfg, progress=False).run()
    man = load_manifest(tmp_path / "o")
    assert man["hvg"]["n_genes"] == 1200
    lens = [len(c["input_ids"]) for c in read_shards(tmp_path / "o")]
    assert max(lens) <= 1201 and len(lens) == 1408
