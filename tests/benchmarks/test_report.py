"""The report builder on a small fake suite payload: markdown tables, ratios, PNG charts."""

from __future__ import annotations

from benchmarks.report import all_ratios, scaling_rows, stage_ratios, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _shard_dataset(name: str, cells: int, rate: float, floor: float) -> dict:
    runs = [
        {
            "workers": w,
            "cells": cells,
            "cells_per_s_job": rate * w**0.5,
            "cells_per_s_wall": rate * 0.8,
            "peak_rss_gib": 0.4 + cells / 1e6 * w,
        }
        for w in (1, 2)
    ]
    return {
        "name": name,
        "io_floor": {"cells": cells, "cells_per_s": floor},
        "per_cell_numpy": {"cells": cells, "cells_per_s": rate / 2},
        "tokenize_only": {"ratio": 4.2},
        "scforge": runs,
        "ratios": {"vs_per_cell_numpy": 2.0, "io_floor_over_scforge": 1.25},
    }


def fake_payload() -> dict:
    datasets = [_shard_dataset("pbmc_2batch", 10_668, 15_000, 20_000)]
    datasets += [_shard_dataset(f"synthetic_{n}", n, 20_000, 28_000) for n in (10_000, 100_000)]
    scaling = [
        {
            k: r[k]
            for k in ("cells", "workers", "cells_per_s_job", "cells_per_s_wall", "peak_rss_gib")
        }
        for d in datasets[1:]
        for r in d["scforge"]
    ]
    ok = {"status": "ok", "wall_s": 12.0, "peak_rss_gib": 0.5, "peers": "p"}
    return {
        "suite": "quick",
        "load_start": 1.5,
        "load_end": 2.5,
        "wall_s": 99.0,
        "machine": {
            "cpu": "Fake CPU",
            "cores": 2,
            "ram_gb": 8,
            "gpu": None,
            "git": "abc",
            "date": "2026-12-01",
            "python": "3.11",
        },
        "versions": {"numpy": "2.4.6", "torch": "2.13.0"},
        "stages": {
            "tokenize": {
                **ok,
                "result": {
                    "rank_value": {
                        "peer": "per-cell NumPy Geneformer",
                        "ratios": {"vs_per_cell_numpy": 5.0, "vs_per_cell_numpy_1thread": 2.5},
                    },
                    "binning": {
                        "peer": "scGPT binning per cell",
                        "ratios": {"vs_scgpt_binning": 6.0, "vs_scgpt_binning_1thread": 3.1},
                    },
                },
                "markdown": "# Tokenization\n\n## Table\n\n| x | y |\n|---|---|\n| 1 | 2 |\n",
            },
            "shard": {**ok, "result": {"datasets": datasets, "scaling": scaling}},
            "loader": {
                **ok,
                "result": {
                    "ratios": {
                        "scforge 2 workers / (a) best": 32.8,
                        "scforge 2 workers / (b) best": 9.3,
                    }
                },
            },
            "train": {
                **ok,
                "result": {
                    "sizes": {
                        "debug": {
                            "hf_eager": {"s_per_step": 8.5, "vs_hf_eager": 1.0},
                            "scforge_eager": {"s_per_step": 5.5, "vs_hf_eager": 1.27},
                        }
                    }
                },
            },
            "store": {
                "status": "failed",
                "error": "exit status 1",
                "peers": "zarr vs ts",
                "stderr_tail": "ModuleNotFoundError: no module named 'x'",
            },
            "eval": {
                **ok,
                "result": {
                    "result": {
                        "ratios": {"scib_model_over_pca": 1.8, "embed_over_scib_cells_per_s": 4.3}
                    }
                },
            },
        },
    }


def test_ratios_are_extracted_per_stage():
    p = fake_payload()
    tok = stage_ratios("tokenize", p["stages"]["tokenize"]["result"])
    assert [round(r["ratio"], 2) for r in tok] == [5.0, 2.5, 6.0, 3.1]
    shard = stage_ratios("shard", p["stages"]["shard"]["result"])
    floor = [r for r in shard if "fraction of the I/O floor" in r["label"]]
    assert len(floor) == 3 and all(abs(r["ratio"] - 0.8) < 1e-9 for r in floor)
    train = stage_ratios("train", p["stages"]["train"]["result"])
    assert len(train) == 1 and "scforge eager" in train[0]["label"]  # peer vs itself dropped
    rows = {
        "rows": [
            {"size": "debug", "variant": "hf_eager", "vs_hf_eager": 1.0},
            {"size": "debug", "variant": "scforge_compile", "vs_hf_eager": 1.6},
        ]
    }
    train = stage_ratios("train", rows)
    assert [(r["label"], r["ratio"]) for r in train] == [
        ("debug: scforge_compile / HF BertForMaskedLM eager", 1.6)
    ]
    store = stage_ratios(
        "store",
        {
            "x_reads": [
                {"format": "v3", "backend": "tensorstore", "cells_per_s": 300.0},
                {"format": "v3", "backend": "zarr", "cells_per_s": 100.0},
                {"format": "v2", "backend": "zarr", "cells_per_s": 100.0},
            ]
        },
    )
    assert [(r["label"], r["ratio"]) for r in store] == [
        ("AnnData-zarr X rows (v3): tensorstore / zarr-python", 3.0)
    ]
    loader = stage_ratios("loader", p["stages"]["loader"]["result"])
    assert sorted(r["ratio"] for r in loader) == [9.3, 32.8]
    ev = {r["label"]: r for r in stage_ratios("eval", p["stages"]["eval"]["result"])}
    assert not next(r for k, r in ev.items() if "model embedding / PCA" in k)["speedup"]
    assert not any(r["stage"] == "store" for r in all_ratios(p))  # failed stage: no ratios
    assert stage_ratios("anything", None) == []


def test_scaling_rows_carry_the_io_floor():
    rows = scaling_rows(fake_payload())
    assert [(r["cells"], r["workers"]) for r in rows] == [
        (10_000, 1),
        (10_000, 2),
        (100_000, 1),
        (100_000, 2),
    ]
    assert all(r["io_floor_cells_per_s"] == 28_000 for r in rows)


def test_write_report_makes_markdown_and_pngs(tmp_path):
    rep = write_report(fake_payload(), tmp_path)
    md = (tmp_path / "report.md").read_text()
    for needle in (
        "Fake CPU",
        "1.5 at start, 2.5 at end",
        "| tokenize | ok |",
        "| store | failed: exit status 1 |",
        "ModuleNotFoundError",
        "**6.00x**",
        "**32.80x**",
        "![Ratios](ratios.png)",
        "![Sharding scaling](scaling.png)",
        "| 100,000 | 2 |",
        "### Table",
    ):
        assert needle in md, needle
    assert "# Tokenization" not in md  # the stage's own title is dropped
    for name in ("ratios", "scaling"):
        png = tmp_path / f"{name}.png"
        assert rep["figures"][name] == str(png)
        data = png.read_bytes()
        assert data[:8] == PNG and len(data) > 5_000


def test_report_without_data_has_no_charts(tmp_path):
    p = {
        "suite": "quick",
        "machine": {},
        "stages": {"tokenize": {"status": "timeout", "error": "stopped after 90 s"}},
    }
    rep = write_report(p, tmp_path)
    assert rep["figures"] == {}
    md = (tmp_path / "report.md").read_text()
    assert "No stage produced ratios." in md and "stopped after 90 s" in md
    assert not (tmp_path / "ratios.png").exists()


def test_summary_copy_links_figures_in_the_suite_dir(tmp_path):
    out = tmp_path / "suite_full_2026-12-01"
    rep = write_report(fake_payload(), out, summary_dir=tmp_path)
    summary = tmp_path / "2026-12-01_2core.md"
    assert rep["summary"] == str(summary)
    text = summary.read_text()
    assert "![Ratios](suite_full_2026-12-01/ratios.png)" in text
    assert (out / "ratios.png").is_file()
