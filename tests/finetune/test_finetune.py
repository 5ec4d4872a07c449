"""Fine-tune -> save -> predict on real pbmc cells; cross-batch accuracy vs HVG-PCA + LR."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from scforge.finetune import FinetuneConfig, finetune, load_finetuned, predict
from scforge.finetune.model import encoder_units
from scforge.finetune.train import param_groups

BATCH3K = "pbmc3k_10x_v1_hg19"


@pytest.fixture(scope="module")
def pbmc(pbmc_path):
    return ad.read_h5ad(pbmc_path)


def _cells(pbmc, batch3k: bool, n: int, seed: int):
    is3k = (pbmc.obs["batch"] == BATCH3K).to_numpy()
    pool = np.flatnonzero(is3k if batch3k else ~is3k & (pbmc.obs["cell_type"] != "Other"))
    return pbmc[np.sort(np.random.default_rng(seed).choice(pool, n, replace=False))].copy()


def test_layer_decay_groups(debug_export):
    from scforge.finetune import FinetuneModel
    from scforge.training.export import load_pretrained

    model = FinetuneModel(load_pretrained(debug_export), 4)
    cfg = FinetuneConfig(lr=1e-2, encoder_lr=1e-3, layer_decay=0.5)
    lrs = {g["name"]: g["lr"] for g in param_groups(model, cfg)}
    n = len(encoder_units(model.encoder))
    assert lrs["head"] == 1e-2 and lrs["encoder0"] == 1e-3
    assert lrs[f"encoder{n - 1}"] == pytest.approx(1e-3 * 0.5 ** (n - 1))  # the embedding


def test_finetune_predict_roundtrip(debug_export, pbmc, tmp_path):
    train = _cells(pbmc, True, 160, 0)
    cfg = FinetuneConfig(checkpoint=str(debug_export), out_dir=str(tmp_path / "ft"), epochs=2,
                         batch_size=32, val_fraction=0.2, unfreeze_every=1, progress=False,
                         device="cpu")
    res = finetune(cfg, train)
    hist = res["history"]
    assert hist[0]["unfrozen_groups"] == 0 and hist[1]["unfrozen_groups"] == 1
    assert hist[0]["trainable"] < hist[1]["trainable"]
    model, meta = load_finetuned(tmp_path / "ft")
    assert meta["classes"] == sorted(set(train.obs["cell_type"].astype(str)))
    out = predict(tmp_path / "ft", _cells(pbmc, False, 50, 1), tmp_path / "pred.h5ad",
                  device="cpu")
    back = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert set(back.obs["scforge_pred"]) <= set(meta["classes"])
    np.testing.assert_allclose(back.obs["scforge_pred_prob"], out.obs["scforge_pred_prob"])


def test_finetune_regression_and_lora(debug_export, pbmc, tmp_path):
    cells = _cells(pbmc, True, 96, 2)
    cells.obs["n_counts"] = np.log1p(np.asarray(cells.X.sum(1)).ravel())
    cfg = FinetuneConfig(checkpoint=str(debug_export), out_dir=str(tmp_path / "reg"),
                         task="regression", label_key="n_counts", epochs=1, val_fraction=0.0,
                         unfreeze_every=0, progress=False, device="cpu")
    cfg.lora.enabled = True
    res = finetune(cfg, cells)
    assert len(res["lora"]) == 4
    pred = predict(tmp_path / "reg", cells[:20].copy(), None, device="cpu")
    assert np.isfinite(pred.obs["scforge_pred"].to_numpy()).all()


@pytest.mark.slow
def test_cross_batch_finetune_vs_pca_lr(trained_debug_export, pbmc, tmp_path):
    """Train on every pbmc3k cell (10x v1), test on 2,000 pbmc8k cells (10x v2): the fine-tuned
    encoder reaches at least HVG-PCA + logistic regression fitted on the same cells."""
    import scanpy as sc

    from scforge.eval.tasks import fit_probe

    is3k = (pbmc.obs["batch"] == BATCH3K).to_numpy()
    train = pbmc[np.flatnonzero(is3k)].copy()
    test = _cells(pbmc, False, 2000, 0)
    cfg = FinetuneConfig(checkpoint=str(trained_debug_export), out_dir=str(tmp_path / "ft"),
                         epochs=8, lr=3e-3, encoder_lr=5e-3, layer_decay=1.0, unfreeze_every=0,
                         head_dropout=0.0, weight_decay=0.05, pooling="mean", val_fraction=0.0,
                         progress=False, device="cpu")
    finetune(cfg, train)
    pred = predict(tmp_path / "ft", test, None, device="cpu")
    acc = float((pred.obs["scforge_pred"].astype(str) == test.obs["cell_type"].astype(str)).mean())

    both = ad.concat([train, test])
    sc.pp.normalize_total(both, target_sum=1e4)
    sc.pp.log1p(both)
    sc.pp.highly_variable_genes(both, n_top_genes=2000)
    both = both[:, both.var["highly_variable"].to_numpy()].copy()
    sc.pp.pca(both, n_comps=50, random_state=0)
    x, y = both.obsm["X_pca"], both.obs["cell_type"].astype(str).to_numpy()
    n = train.n_obs
    ref = fit_probe(x[:n], y[:n], x[n:], y[n:])["accuracy"]
    print(f"fine-tuned {acc:.3f} vs HVG-PCA logistic regression {ref:.3f}")
    assert acc >= ref
