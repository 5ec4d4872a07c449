"""The Zarr token store: same cells as tar shards, random access, torch Dataset, resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scforge.config import ShardJobConfig, load_config
from scforge.data import read_shards
from scforge.data.shard import ShardJob, load_manifest
from scforge.data.store import StoreFormatError, TokenStore, load_store_manifest, read_store

REPO = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str) -> ShardJobConfig:
    base = [
        "shard.cells_per_shard=500",
        "shard.block_cells=64",
        "source.chunk_cells=128",
        "source.obs_fields=[cell_type,batch,dataset]",
        "source.qc.min_genes=3000",
    ]
    return load_config(
        ShardJobConfig, [REPO / "configs/shard/scgpt_binned.yaml"], [*base, *overrides]
    )


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, cellbench_path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("store")
    ShardJob([str(cellbench_path)], root / "tar", _cfg(), progress=False).run()
    ShardJob([str(cellbench_path)], root / "zarr", _cfg("shard.format=zarr"), progress=False).run()
    return root / "tar", root / "zarr"


@pytest.fixture(scope="module")
def short(tmp_path_factory, cellbench_path) -> dict[str, Path]:
    """Cells of 6,000 tokens at most (some shorter, some cut) as tar shards, a ragged store and
    a dense store."""
    import anndata as ad

    root = tmp_path_factory.mktemp("dense")
    inp = root / "cellbench_first400.h5ad"
    ad.read_h5ad(cellbench_path)[:400].copy().write_h5ad(inp)
    out = {}
    for name, extra in (
        ("tar", []),
        ("ragged", ["shard.format=zarr"]),
        ("dense", ["shard.format=zarr", "store.layout=dense"]),
    ):
        cfg = _cfg("tokenizer.max_length=6000", *extra)
        ShardJob([str(inp)], root / name, cfg, progress=False).run()
        out[name] = root / name
    out["input"] = inp
    return out


def _same(a: dict, b: dict) -> bool:
    keys = ("cell_id", "row", "cell_type", "batch", "dataset")
    return (
        np.array_equal(a["input_ids"], b["input_ids"])
        and np.array_equal(a["values"], b["values"])
        and all(a[k] == b[k] for k in keys)
    )


@pytest.mark.parametrize("backend", ["tensorstore", "zarr"])
def test_store_holds_the_tar_cells(outputs, backend):
    tar, zarr_dir = outputs
    ref = list(read_shards(tar))
    store = TokenStore(zarr_dir, backend=backend)
    assert len(store) == len(ref) < 1408  # QC dropped some
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(ref))[:300]
    got = store.get_batch(idx)
    assert all(_same(g, ref[i]) for g, i in zip(got, idx, strict=True))
    assert _same(store[-1], ref[-1])
    assert all(_same(a, b) for a, b in zip(read_store(zarr_dir, backend=backend), ref, strict=True))


@pytest.mark.parametrize("backend", ["tensorstore", "zarr"])
def test_dense_layout_holds_the_same_cells(short, backend):
    """The padded [cells, max_length] layout: same cells as the tar shards of the same job."""
    dense_dir = short["dense"]
    ref = list(read_shards(short["tar"]))
    lens = [len(c["input_ids"]) for c in ref]
    assert max(lens) == 6000 and min(lens) < 5000  # some cells fill a whole row, some do not
    store = TokenStore(dense_dir, backend=backend)
    man = store.manifest
    assert man["layout"]["name"] == "dense" and man["layout"]["width"] == 6000
    assert len(store) == len(ref)
    idx = np.random.default_rng(1).integers(0, len(ref), 300)  # with repeats, any order
    got = store.get_batch(idx)
    assert all(_same(g, ref[i]) for g, i in zip(got, idx, strict=True))
    import zarr

    tokens = zarr.open_group(str(dense_dir / man["shards"][0]["file"]), mode="r")["tokens"]
    assert tokens.ndim == 2 and tokens.shape[1] == 6000 and tokens.shards is not None
    # Padded batches: rows are the cells, then <pad> (scGPT: its id) and value 0.
    pad = man["layout"]["pad_id"]
    assert pad == man["vocab"]["specials"]["<pad>"] > 0
    batch = store.get_padded(idx[:64])
    assert batch["input_ids"].shape == (64, 6000) and batch["values"].shape == (64, 6000)
    assert (batch["lengths"] < 6000).any()
    for row, vals, n, i in zip(
        batch["input_ids"], batch["values"], batch["lengths"], idx[:64], strict=True
    ):
        assert n == len(ref[i]["input_ids"])
        assert np.array_equal(row[:n], ref[i]["input_ids"]) and (row[n:] == pad).all()
        assert np.array_equal(vals[:n], ref[i]["values"]) and (vals[n:] == 0).all()


def test_ragged_get_padded_equals_dense(short):
    """get_padded gives the same batch from either layout (ragged pads on the fly)."""
    ragged = TokenStore(short["ragged"], backend="zarr")
    dense = TokenStore(short["dense"])
    assert len(ragged) == len(dense)
    idx = np.random.default_rng(2).permutation(len(dense))
    a = ragged.get_padded(idx, width=6000)
    b = dense.get_padded(idx)
    assert (a["lengths"] < 6000).any()
    for k in ("lengths", "input_ids", "values"):
        assert np.array_equal(a[k], b[k]), k
    a0, b0 = ragged.get_padded(idx, width=6000, pad_id=0), dense.get_padded(idx, pad_id=0)
    assert np.array_equal(a0["input_ids"], b0["input_ids"])
    assert not np.array_equal(a0["input_ids"], a["input_ids"])  # the padding changed
    short = ragged.get_padded(idx[:5])
    assert short["input_ids"].shape[1] == short["lengths"].max()
    with pytest.raises(ValueError, match="width"):
        ragged.get_padded(idx, width=3)


def test_store_manifest_and_layout(outputs):
    tar, zarr_dir = outputs
    man, ref = load_store_manifest(zarr_dir), load_manifest(tar)
    assert (man["format"], man["version"]) == ("scforge-zarr-store", 1)
    assert man["layout"]["name"] == "ragged"
    for k in ("tokenizer", "vocab_hash", "obs_fields"):
        assert man[k] == ref[k]
    assert man["totals"]["cells"] == ref["totals"]["cells"]
    assert man["totals"]["cells_dropped"] == ref["totals"]["cells_dropped"]
    assert [s["cells"] for s in man["shards"]] == [s["cells"] for s in ref["shards"]]
    import zarr

    root = zarr.open_group(str(zarr_dir), mode="r")
    assert root.attrs["scforge"] == {"format": "scforge-zarr-store", "version": 1}
    tokens = root[f"{man['shards'][0]['file']}/tokens"]
    assert tokens.shards is not None  # the sharding codec
    with pytest.raises(StoreFormatError, match="read_shards"):
        TokenStore(tar)


def test_torch_dataset_and_dataloader(outputs):
    torch = pytest.importorskip("torch")
    from scforge.data.store import TokenStoreDataset

    _, zarr_dir = outputs
    ds = TokenStoreDataset(zarr_dir, as_tensors=True)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=32, shuffle=True, collate_fn=list, generator=torch.Generator().manual_seed(0)
    )
    seen = [c["cell_id"] for batch in loader for c in batch]
    assert sorted(seen) == sorted(c["cell_id"] for c in ds.store.get_batch(range(len(ds))))
    cell = ds[3]
    assert (
        cell["input_ids"].dtype == torch.int64 and cell["values"].shape == cell["input_ids"].shape
    )


def test_sharder_and_store_reader_do_not_import_torch():
    code = (
        "import sys, scforge.data.shard.writer, scforge.data.store, scforge.data.store.writer;"
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_store_resume_rewrites_only_missing_units(tmp_path, cellbench_path, outputs):
    _, ref_dir = outputs
    out = tmp_path / "z"
    cfg = _cfg("shard.format=zarr")
    ShardJob([str(cellbench_path)], out, cfg, progress=False, partition=(0, 2)).run()
    assert not (out / "manifest.json").exists()
    (out / "shard-000000.json").unlink()  # as if killed before its marker was written
    summary = ShardJob([str(cellbench_path)], out, cfg, progress=False).run()
    assert summary["complete"] and summary["shards_written"] == 2  # units 0 and 1
    assert load_store_manifest(out)["shards"] == load_store_manifest(ref_dir)["shards"]


def test_other_layout_into_the_same_directory_is_refused(short):
    from scforge.data.shard import ShardError

    before = sorted(p.name for p in short["ragged"].iterdir())
    cfg = _cfg("tokenizer.max_length=6000", "shard.format=zarr", "store.layout=dense")
    with pytest.raises(ShardError, match="store_layout"):
        ShardJob([str(short["input"])], short["ragged"], cfg, progress=False).run()
    assert sorted(p.name for p in short["ragged"].iterdir()) == before
