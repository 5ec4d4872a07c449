"""Embedding: h5ad and shards of the same cells give identical embeddings; mismatches refused."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from _eval_util import make_shards

from scforge.eval import CheckpointMismatchError, embed, embed_main


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory, pbmc_path):
    a = ad.read_h5ad(pbmc_path)
    idx = np.sort(np.random.default_rng(0).choice(a.n_obs, 200, replace=False))
    path = tmp_path_factory.mktemp("embed") / "small.h5ad"
    a[idx].copy().write_h5ad(path)
    return path


def test_h5ad_and_shards_embed_identically(debug_export, small_h5ad, tmp_path):
    shards = make_shards(small_h5ad, tmp_path / "shards", "shard.cells_per_shard=64")
    a = embed(debug_export, small_h5ad, tmp_path / "a.h5ad", batch_size=32, device="cpu",
              progress=False)
    b = embed(debug_export, shards, None, batch_size=32, device="cpu", progress=False)
    assert list(a.obs_names) == list(b.obs_names)
    assert a.obsm["X_scforge"].shape == (200, 40)
    np.testing.assert_array_equal(a.obsm["X_scforge"], b.obsm["X_scforge"])
    assert list(b.obs["cell_type"]) == list(a.obs["cell_type"].astype(str))
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    np.testing.assert_array_equal(back.obsm["X_scforge"], a.obsm["X_scforge"])
    assert back.n_vars == a.n_vars  # the input's matrix is kept


def test_embed_cli(debug_export, small_h5ad, tmp_path):
    out = tmp_path / "cli.h5ad"
    code = embed_main(["--checkpoint", str(debug_export), "--data", str(small_h5ad), "--out",
                       str(out), "--key", "X_dbg", "--device", "cpu", "--no-progress"])
    assert code == 0 and ad.read_h5ad(out).obsm["X_dbg"].shape == (200, 40)


@pytest.mark.parametrize("overrides", [("tokenizer.max_length=128",),
                                       ("vocab.kind=geneformer_v1",
                                        "tokenizer.special_tokens=false")])
def test_mismatched_shards_refused(debug_export, small_h5ad, tmp_path, overrides):
    from scforge.config import ShardJobConfig, load_config
    from scforge.data.shard import ShardJob

    cfg = load_config(ShardJobConfig, [], ["shard.cells_per_shard=200", *overrides])
    ShardJob([str(small_h5ad)], tmp_path / "s", cfg, progress=False).run()
    with pytest.raises(CheckpointMismatchError, match="re-tokenize|vocabulary"):
        embed(debug_export, tmp_path / "s", None, device="cpu", progress=False)
