"""``scforge demo`` in a reduced form: every stage runs and the report holds finite numbers."""

from __future__ import annotations

import json
import math
import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports DeepSpeed
os.environ.setdefault("WANDB_MODE", "offline")


def _finite(values) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def _check_report(out, *, scib: bool) -> dict:
    rep = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert "## Model vs baseline" in md and "| scforge |" in md and "| PCA |" in md
    table = rep["comparison"]
    assert set(table) == {"scforge", "PCA"}
    want = {"probe accuracy", "probe macro-F1"}
    if scib:
        want |= {"scib Bio conservation", "scib Batch correction", "scib Total"}
    for name, row in table.items():
        assert want <= set(row), (name, sorted(row))
        assert _finite(row.values()), (name, row)
        assert 0.0 <= row["probe accuracy"] <= 1.0
    tr = rep["training"]
    assert _finite([tr["first_loss"], tr["final_loss"], tr["cells_per_s"], tr["tokens_per_s"]])
    assert tr["cells_per_s"] > 0 and tr["steps"] > 0
    assert rep["dataset"]["cells"] == 3638 and "pbmc8k" in rep["dataset"]["batches"]
    for fig in rep["figures"]:
        assert os.path.getsize(fig) > 5000, fig  # a real PNG, not an empty canvas
    assert (out / "loss_curve.png").is_file()
    assert (out / "eval" / "embedded.h5ad").is_file()
    return rep


def test_demo_cli_no_scib(tmp_path):
    """The CLI path with the cheap stages only (no scib, no UMAP), in-training probe on."""
    from scforge.cli import main

    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--steps", "4", "--max-len", "32",
                 "--eval-cells", "400", "--no-scib", "--no-umap", "--no-progress"])
    assert code == 0
    rep = _check_report(out, scib=False)
    assert rep["config"]["steps"] == 4
    assert [os.path.basename(f) for f in rep["figures"]] == ["loss_curve.png", "probe_curve.png"]
    # the trainer's eval callback probed the live encoder after every step (4 // 5 -> 1)
    curve = rep["probe_during_training"]
    assert [r["step"] for r in curve] == [1, 2, 3, 4]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["seconds"] > 0 for r in curve)
    md = (out / "report.md").read_text()
    assert "## Linear probe during pretraining" in md and "probe_curve.png" in md
    assert f"| 4 | {curve[-1]['accuracy']:.3f} |" in md


def test_demo_rejects_bad_strategy(tmp_path):
    from scforge.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path), "--strategy", "nope"])


@pytest.mark.slow
def test_demo_quick_full_report(tmp_path):
    """``--quick`` with scib-metrics and UMAPs: the full report of the README's command."""
    from scforge.eval.demo import DemoConfig, quick, run_demo

    out = tmp_path / "demo"
    md = run_demo(quick(DemoConfig(out=str(out), steps=10, eval_cells=500, progress=False)))
    assert md == out / "report.md"
    rep = _check_report(out, scib=True)
    names = {os.path.basename(f) for f in rep["figures"]}
    assert names == {"loss_curve.png", "probe_curve.png", "umap.png", "scib_scores.png"}
    assert [r["step"] for r in rep["probe_during_training"]] == [2, 4, 6, 8, 10]  # 10 // 5
