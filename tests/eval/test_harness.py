"""Evaluation harness: probe beats chance, reports are written, scib scores match scib itself."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from scforge.config.loader import load_config
from scforge.eval.harness import EvalConfig, TrainingEvaluator, evaluate, evaluate_main
from scforge.eval.tasks import EVAL_TASKS


@pytest.fixture(scope="module")
def pbmc_sub(pbmc_path):
    a = ad.read_h5ad(pbmc_path)
    idx = np.sort(np.random.default_rng(1).choice(a.n_obs, 1200, replace=False))
    return a[idx].copy()


def test_registry_names():
    assert EVAL_TASKS.names() == ["embedding_quality", "linear_probe"]
    with pytest.raises(KeyError, match="linear_probe"):
        EVAL_TASKS.get("nope")


@pytest.mark.slow
def test_linear_probe_beats_chance(trained_debug_export, pbmc_sub):
    import json as _json

    debug_export = trained_debug_export
    manifest = _json.loads((debug_export / "config.json").read_text())
    ev = TrainingEvaluator(pbmc_sub, manifest, tasks=("linear_probe",), max_len=64)
    from scforge.training.export import load_pretrained

    scores = ev(load_pretrained(debug_export))
    acc, chance = scores["eval/linear_probe/accuracy"], scores["eval/linear_probe/majority_rate"]
    print(f"probe accuracy {acc:.3f}, macro-F1 {scores['eval/linear_probe/macro_f1']:.3f}, "
          f"majority {chance:.3f}")
    assert acc >= chance + 0.08  # 100 steps: weak but real signal


def test_evaluate_writes_report(debug_export, pbmc_path, tmp_path):
    code = evaluate_main(["--config", "configs/eval/pbmc.yaml", "--no-progress",
                          f"checkpoint={debug_export}", f"out_dir={tmp_path}", "max_cells=400",
                          "tasks=[linear_probe]", f"data={pbmc_path}"])
    assert code == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert 0 <= rep["tasks"]["linear_probe"]["scores"]["accuracy"] <= 1
    assert (tmp_path / "report.md").is_file() and (tmp_path / "config.yaml").is_file()


def test_config_rejects_unknown_task():
    from scforge.config.loader import ConfigError

    with pytest.raises(ConfigError, match="registered"):
        load_config(EvalConfig, [], ["checkpoint=x", "data=y", "tasks=[nope]"])


@pytest.mark.slow
def test_embedding_quality_equals_direct_scib(debug_export, pbmc_sub, tmp_path):
    """The harness's table equals scib-metrics' Benchmarker on the same embeddings."""
    from scib_metrics.benchmark import Benchmarker

    sub = pbmc_sub[:500].copy()
    path = tmp_path / "in.h5ad"
    sub.write_h5ad(path)
    cfg = load_config(EvalConfig, ["configs/eval/pbmc.yaml"],
                      [f"checkpoint={debug_export}", f"data={path}", f"out_dir={tmp_path}/r",
                       "max_cells=0", "tasks=[embedding_quality]", "embedding_quality.umap=true"])
    scores = evaluate(cfg, progress=False)["embedding_quality"]
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    table = rep["tasks"]["embedding_quality"]["table"]
    assert set(table) == {"scforge", "HVG", "PCA"}
    assert (tmp_path / "r" / "umap.png").is_file() and (tmp_path / "r" / "scib_scores.png").is_file()

    # Direct call: same embedding (re-embedded), same baselines.
    from scforge.eval import embed
    from scforge.eval.tasks import add_baselines

    direct = embed(debug_export, sub, None, device="cpu", progress=False)
    for col in ("cell_type", "batch"):
        direct.obs[col] = direct.obs[col].astype(str).astype("category")
    add_baselines(direct, ["hvg", "pca"], n_hvg=2000, n_pcs=50, batch_key="batch")
    bm = Benchmarker(direct, batch_key="batch", label_key="cell_type",
                     embedding_obsm_keys=["X_scforge", "X_hvg", "X_pca_hvg"],
                     pre_integrated_embedding_obsm_key="X_pca_hvg", n_jobs=1, progress_bar=False)
    bm.benchmark()
    ref = bm.get_results(min_max_scale=False).drop(index="Metric Type")
    for metric, value in scores.items():
        assert float(ref.loc["X_scforge", metric]) == pytest.approx(value, abs=1e-6), metric


@pytest.mark.parametrize("recipe", ["configs/eval/pbmc.yaml", "configs/eval/cellbench.yaml",
                                    "configs/finetune/pbmc_celltype.yaml"])
def test_recipes_load(recipe):
    """Every shipped recipe is valid against its schema (a misspelled key would fail here)."""
    from scforge.finetune import FinetuneConfig

    schema = FinetuneConfig if "finetune" in recipe else EvalConfig
    cfg = load_config(schema, [recipe], [])
    assert cfg.checkpoint and cfg.data


def test_cellbench_doublets_dropped_and_pca_baseline(debug_export, cellbench_path, tmp_path):
    """configs/eval/cellbench.yaml: 387 DBL cells excluded; the probe table holds the model and
    the HVG-PCA baseline on the same split (5 cell lines: PCA separates them almost perfectly)."""
    code = evaluate_main(["--config", "configs/eval/cellbench.yaml", "--no-progress",
                          f"checkpoint={debug_export}", f"data={cellbench_path}",
                          f"out_dir={tmp_path}", "tasks=[linear_probe]", "device=cpu"])
    assert code == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    probe = rep["tasks"]["linear_probe"]
    assert rep["meta"]["cells"] == 1408 - 387
    table = probe["table"]
    assert set(table) == {"scforge", "PCA"}
    assert table["scforge"]["n_test"] == table["PCA"]["n_test"] == probe["scores"]["n_test"]
    assert table["scforge"]["accuracy"] == pytest.approx(probe["scores"]["accuracy"], abs=1e-9)
    assert table["PCA"]["accuracy"] > 0.95
    print({k: round(v["accuracy"], 3) for k, v in table.items()})
