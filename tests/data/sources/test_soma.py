"""TileDB-SOMA / Census inputs: a value-filtered query gives exactly the shards of the same cells
read from .h5ad, through ``soma://``, a SOMA directory, ``census://`` (``open_soma(uri=...)`` on
a local Census-shaped tree) and the ``source.soma`` config block; bad queries fail cleanly."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import anndata as ad
import numpy as np
import pytest

from scforge.config import ShardJobConfig, load_config
from scforge.data import read_shards
from scforge.data.shard import ShardJob, load_manifest
from scforge.data.shard.cli import main

pytest.importorskip("tiledbsoma")

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO / ".." / "shared" / "data"
BATCH = "sc_dropseq"
FILTER = f"batch == '{BATCH}'"


def _cfg(recipe: str, *overrides: str) -> ShardJobConfig:
    base = ["shard.cells_per_shard=100", "shard.block_cells=40", "source.chunk_cells=64"]
    return load_config(ShardJobConfig, [REPO / "configs/shard" / recipe], [*base, *overrides])


@pytest.fixture(scope="module")
def dropseq_h5ad(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The cells of one batch, written as their own .h5ad, and their rows in the full file."""
    a = ad.read_h5ad(SHARED / "cellbench_5batch.h5ad")
    rows = np.flatnonzero((a.obs["batch"] == BATCH).to_numpy())
    path = tmp_path_factory.mktemp("ref") / "dropseq.h5ad"
    a[rows].copy().write_h5ad(path)
    return path, rows


def _assert_same_cells(got: list[dict], ref: list[dict], joinids: np.ndarray) -> None:
    assert len(got) == len(ref) == len(joinids)
    for a, b, j in zip(got, ref, joinids, strict=True):
        assert np.array_equal(a["input_ids"], b["input_ids"])
        if "values" in b:
            assert np.array_equal(a["values"], b["values"])
        assert (a["cell_id"], a["batch"], a["cell_type"]) == (
            b["cell_id"],
            b["batch"],
            b["cell_type"],
        )
        assert a["soma_joinid"] == str(j)  # traces back to the experiment's obs row


@pytest.mark.parametrize(
    ("recipe", "strategy"),
    [("geneformer_v2.yaml", "rank_value"), ("scgpt_binned.yaml", "binned_expression")],
)
def test_soma_query_equals_h5ad_of_same_cells(
    tmp_path, cellbench_experiment, dropseq_h5ad, recipe, strategy
):
    ref_path, rows = dropseq_h5ad
    cfg = _cfg(recipe)
    ShardJob([str(ref_path)], tmp_path / "ref", cfg, progress=False).run()
    url = f"soma://{cellbench_experiment}?obs={quote(FILTER)}"
    ShardJob([url], tmp_path / "soma", cfg, progress=False).run()
    _assert_same_cells(
        list(read_shards(tmp_path / "soma")), list(read_shards(tmp_path / "ref")), rows
    )
    man = load_manifest(tmp_path / "soma")
    assert man["tokenizer"]["strategy"] == strategy
    assert man["obs_fields"][-1] == "soma_joinid"
    src = man["sources"][0]
    assert src["format"] == "soma" and src["obs_value_filter"] == FILTER
    assert src["n_cells"] == len(rows)


def test_census_url_config_block_and_directory_agree(
    tmp_path, census_root, cellbench_experiment, dropseq_h5ad, capsys
):
    _, rows = dropseq_h5ad
    cfg = _cfg("geneformer_v2.yaml")
    url = f"census://test?organism=Homo%20sapiens&uri={quote(str(census_root))}&obs={quote(FILTER)}"
    ShardJob([url], tmp_path / "census", cfg, progress=False).run()
    ref = list(read_shards(tmp_path / "census"))
    man = load_manifest(tmp_path / "census")
    assert man["sources"][0]["format"] == "census"
    assert man["sources"][0]["dataset"] == "census-test-homo_sapiens"
    # The same query as a config block, through the CLI (no positional inputs).
    code = main(
        [
            "--out",
            str(tmp_path / "block"),
            "--no-progress",
            "source.soma.census_version=test",
            f"source.soma.uri={census_root}",
            f"source.soma.obs_value_filter={FILTER}",
            "shard.cells_per_shard=100",
            "shard.block_cells=40",
        ]
    )
    assert code == 0, capsys.readouterr().err
    # And the experiment directory itself as an input, filter from the config.
    cfg_dir = _cfg("geneformer_v2.yaml", f"source.soma.obs_value_filter={FILTER}")
    ShardJob([str(cellbench_experiment)], tmp_path / "dir", cfg_dir, progress=False).run()
    for other in ("block", "dir"):
        got = list(read_shards(tmp_path / other))
        _assert_same_cells(got, ref, rows)


def test_soma_obs_columns_and_dataset_field(tmp_path, cellbench_experiment):
    cfg = _cfg(
        "geneformer_v2.yaml", "source.obs_fields=[dataset]", "source.soma.obs_columns=[protocol]"
    )
    url = f"soma://{cellbench_experiment}?obs={quote('protocol == ' + repr('Drop-seq'))}"
    ShardJob([url], tmp_path / "o", cfg, progress=False).run()
    cell = next(iter(read_shards(tmp_path / "o")))
    assert cell["protocol"] == "Drop-seq" and cell["dataset"] == "homo_sapiens"
    assert load_manifest(tmp_path / "o")["obs_fields"] == ["dataset", "soma_joinid", "protocol"]


def test_pbmc_subset_experiment_one_batch(tmp_path_factory, tmp_path, fast_ingest):
    """pbmc_2batch cells (every 8th, both batches interleaved) as a local experiment: a value
    filter on one batch gives the shards of the same cells from .h5ad (the whole file, binned
    too: test_pbmc_soma_experiment_one_batch with --runslow)."""
    import tiledbsoma.io

    a = ad.read_h5ad(SHARED / "pbmc_2batch.h5ad")[::8].copy()
    uri = tmp_path_factory.mktemp("pbmc_sub") / "exp"
    tiledbsoma.io.from_anndata(
        str(uri), a, measurement_name="RNA", X_layer_name="raw", platform_config=fast_ingest
    )
    batch = "pbmc8k_10x_v2_GRCh38"
    rows = np.flatnonzero((a.obs["batch"] == batch).to_numpy())
    assert 0 < len(rows) < a.n_obs
    a[rows].copy().write_h5ad(tmp_path / "ref.h5ad")
    for recipe in ("geneformer_v2.yaml",):
        cfg = _cfg(recipe, "shard.cells_per_shard=400")
        ShardJob(
            [str(tmp_path / "ref.h5ad")], tmp_path / f"ref-{recipe}", cfg, progress=False
        ).run()
        url = f"soma://{uri}?obs={quote(f'batch == {batch!r}')}"
        ShardJob([url], tmp_path / f"soma-{recipe}", cfg, progress=False).run()
        _assert_same_cells(
            list(read_shards(tmp_path / f"soma-{recipe}")),
            list(read_shards(tmp_path / f"ref-{recipe}")),
            rows,
        )


def test_census_url_forms():
    """The issue's spelling (filter not URL-encoded), an encoded one, and soma:// URLs."""
    from scforge.data.sources import SourceError
    from scforge.data.sources.soma import SomaSpec, parse_soma_url

    flt = 'is_primary_data == True and tissue_general == "blood"'
    spec = parse_soma_url(f"census://2025-01-30?organism=homo_sapiens&obs={flt}")
    assert spec == SomaSpec(census_version="2025-01-30", obs_value_filter=flt)
    assert spec.is_census and parse_soma_url(spec.url()) == spec  # canonical form round-trips
    enc = parse_soma_url(
        f"census://stable?organism=Mus%20musculus&obs={quote(flt)}&obs_columns=tissue,assay"
    )
    assert (enc.organism, enc.obs_value_filter, enc.obs_columns) == (
        "Mus musculus",
        flt,
        ("tissue", "assay"),
    )
    defaults = SomaSpec(layer="normalized", obs_value_filter="x == 1")
    plain = parse_soma_url("soma:///data/exp", defaults)
    assert (plain.uri, plain.layer, plain.obs_value_filter, plain.is_census) == (
        "/data/exp",
        "normalized",
        "x == 1",
        False,
    )
    with pytest.raises(SourceError, match="unknown parameter"):
        parse_soma_url("census://stable?tissue=blood")
    with pytest.raises(SourceError, match="Census version"):
        parse_soma_url("census://?obs=x")


# ---------------------------------------------------------------------------- bad input
def _fails(capsys, out: Path, *args: str) -> str:
    code = main([*args, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("scforge-shard: error:"), err
    assert not out.exists()
    return err


def test_census_filter_matching_no_cells(tmp_path, capsys, census_root):
    flt = "batch == 'sc_10x'"
    url = f"census://test?uri={quote(str(census_root))}&obs={quote(flt)}"
    err = _fails(capsys, tmp_path / "o", url)
    assert "matches no cells" in err and flt in err and "batch" in err


def test_soma_uri_that_does_not_exist(tmp_path, capsys):
    err = _fails(capsys, tmp_path / "o", f"soma://{tmp_path}/no_such_experiment")
    assert "does not exist" in err and "from_anndata" in err


def test_invalid_filter_names_the_columns(tmp_path, capsys, cellbench_experiment):
    url = f"soma://{cellbench_experiment}?obs={quote('tissue == 1')}"
    err = _fails(capsys, tmp_path / "o", url)
    assert "is invalid" in err and "cell_type" in err


def test_census_without_organism(tmp_path, capsys, census_root):
    err = _fails(capsys, tmp_path / "o", f"census://test?uri={census_root}&organism=mus_musculus")
    assert "no organism" in err and "homo_sapiens" in err


@pytest.mark.slow
def test_pbmc_soma_experiment_one_batch(tmp_path_factory, tmp_path):
    """pbmc_2batch (10,668 cells) as a local experiment; one batch queried = the h5ad rows."""
    import tiledbsoma.io

    a = ad.read_h5ad(SHARED / "pbmc_2batch.h5ad")
    uri = tmp_path_factory.mktemp("pbmc") / "exp"
    tiledbsoma.io.from_anndata(str(uri), a, measurement_name="RNA", X_layer_name="raw")
    rows = np.flatnonzero((a.obs["batch"] == "pbmc3k_10x_v1_hg19").to_numpy())
    a[rows].copy().write_h5ad(tmp_path / "pbmc3k.h5ad")
    cfg = _cfg("scgpt_binned.yaml", "shard.cells_per_shard=1000")
    ShardJob([str(tmp_path / "pbmc3k.h5ad")], tmp_path / "ref", cfg, progress=False).run()
    url = f"soma://{uri}?obs={quote(chr(32).join(['batch', '==', repr('pbmc3k_10x_v1_hg19')]))}"
    ShardJob([url], tmp_path / "soma", cfg, progress=False).run()
    _assert_same_cells(
        list(read_shards(tmp_path / "soma")), list(read_shards(tmp_path / "ref")), rows
    )
