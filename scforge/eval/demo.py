"""``scforge demo``: the whole pipeline on the bundled real PBMC cells, in a few CPU minutes.

Stages (each timed; a report ties them together):

1. **data**: the bundled pbmc3k (2,638 cells, 10x v1) plus 1,000 bundled pbmc8k cells (10x v2),
   rows shuffled with a fixed seed so every shard mixes both batches -> ``data/pbmc_demo.h5ad``;
2. **shard**: ``scforge-shard`` with the chosen tokenizer recipe -> ``shards_<recipe>/``;
3. **pretrain**: the ``debug`` encoder through the real DeepSpeed trainer -> ``run/``
   (``metrics.jsonl``, checkpoints, ``export/``), with the in-training evaluation callback
   (``eval.every``) scoring a linear probe on the live model every ``eval_every`` steps;
4. **evaluate**: embed every cell with the export, then the harness's ``linear_probe``
   (train on pbmc3k, test on pbmc8k) and scib-metrics ``embedding_quality``, each next to the
   HVG + PCA baseline computed in the same run -> ``eval/``;
5. **report**: ``report.md`` + ``report.json`` (metrics table model vs baseline, UMAPs by cell
   type and batch, loss curve, probe score over pretraining steps, throughput) in the output
   directory.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
RECIPES = {"rank_value": "geneformer_v2", "binned_expression": "scgpt_binned",
           "continuous_projection": "continuous"}
BATCH_TRAIN, BATCH_TEST = "pbmc3k_10x_v1_hg19", "pbmc8k_10x_v2_GRCh38"


@dataclass
class DemoConfig:
    """What ``scforge demo`` runs; the defaults are the README's main command."""

    out: str = "demo_out"
    strategy: str = "rank_value"
    steps: int = 500
    """Pretraining steps of the debug encoder (16,000 cells seen: about 4 epochs)."""
    max_len: int = 64
    """Tokens per cell (the top-ranked genes for rank-value tokens)."""
    batch_size: int = 32
    lr: float = 2e-3
    eval_cells: int = 0
    """Subsample of cells to evaluate (0 = all 3,638)."""
    eval_every: int = -1
    """In-training linear probe (stratified split) every N pretraining steps and after the
    last: -1 = ``max(1, steps // 5)`` (five checks), 0 = off."""
    eval_train_cells: int = 1000
    """Cells the in-training probe embeds each time (seeded subsample; ``eval_cells`` caps it)."""
    scib: bool = True
    """Run scib-metrics (needs the ``eval`` extra; skipped with a note when it is absent)."""
    umap: bool = True
    device: str = "auto"
    progress: bool = True
    seed: int = 0


def quick(cfg: DemoConfig) -> DemoConfig:
    """The ``--quick`` variant: a smoke run of every stage in well under a minute of compute."""
    import dataclasses

    return dataclasses.replace(cfg, steps=min(cfg.steps, 30), max_len=min(cfg.max_len, 32),
                               eval_cells=cfg.eval_cells or 600)


def _say(msg: str) -> None:
    print(f"[scforge demo] {msg}", flush=True)


# ---------------------------------------------------------------------------- stages
def build_dataset(path: Path, *, seed: int = 0) -> Any:
    """The two bundled PBMC batches as one raw-count h5ad, rows shuffled (seeded)."""
    import anndata as ad

    from scforge.resources import DEFAULT_DATASET, RESOURCES

    second = RESOURCES / "pbmc8k_demo.h5ad"
    parts = [ad.read_h5ad(DEFAULT_DATASET)]
    if second.is_file():
        parts.append(ad.read_h5ad(second))
    else:  # an install without the demo batch still runs (bio conservation only)
        _say(f"{second.name} is not bundled: one batch, no batch-correction scores")
    for p in parts:
        p.obs = p.obs[["cell_type", "batch"]].astype(str)
    both = ad.concat(parts, join="outer", merge="first") if len(parts) > 1 else parts[0]
    both.obs_names_make_unique()
    both = both[np.random.default_rng(seed).permutation(both.n_obs)].copy()
    both.X = both.X.tocsr().astype(np.float32)
    both.X.sort_indices()
    path.parent.mkdir(parents=True, exist_ok=True)
    both.write_h5ad(path)
    return both


def shard(data: Path, out: Path, strategy: str, max_len: int) -> Path:
    """Tokenizes ``data`` into ``out`` with the strategy's recipe (``configs/shard``)."""
    from scforge.data.shard.cli import main as shard_main

    cfg_path = REPO / "configs" / "shard" / f"{RECIPES[strategy]}.yaml"
    cmd = [str(data), "--out", str(out), "--no-progress", "shard.cells_per_shard=460",
           f"tokenizer.max_length={max_len}"]
    if cfg_path.is_file():
        cmd += ["--config", str(cfg_path)]
    else:  # installed without the repo's configs/
        cmd += [f"tokenizer.strategy={strategy}"]
    code = shard_main(cmd)
    if code != 0:
        raise RuntimeError(f"scforge-shard failed with exit status {code}")
    return out


def eval_every(cfg: DemoConfig) -> int:
    """Steps between in-training probes (0 = none)."""
    return max(1, cfg.steps // 5) if cfg.eval_every < 0 else cfg.eval_every


def pretrain(shards: Path, out: Path, cfg: DemoConfig, data: Path | None = None) -> Any:
    """The debug encoder through :func:`scforge.training.trainer.train`; returns its result.

    With ``data`` (the labelled demo h5ad) and :func:`eval_every` > 0, the trainer's eval
    callback probes the live model's embeddings (``kind: eval`` records in metrics.jsonl).
    """
    from scforge.training import load_train_config
    from scforge.training.trainer import train

    recipe = REPO / "configs" / "train" / "debug.yaml"
    over = {"data.train": shards, "data.val_fraction": 0.1, "train.out_dir": out,
            "train.max_steps": cfg.steps, "train.micro_batch_size": cfg.batch_size,
            "train.log_every": max(1, min(10, cfg.steps // 10)),
            "train.val_every": max(1, cfg.steps // 4), "train.ckpt_every": 0,
            "train.resume": "none", "train.progress": cfg.progress,
            "train.seed": cfg.seed, "data.stream.seed": cfg.seed,
            "data.stream.max_len": cfg.max_len, "model.max_len": cfg.max_len,
            "model.preset": "debug", "optim.lr": cfg.lr,
            "optim.warmup_steps": max(1, cfg.steps // 20)}
    every = eval_every(cfg)
    if every and data is not None:
        cells = min(cfg.eval_train_cells, cfg.eval_cells or cfg.eval_train_cells)
        over.update({"eval.every": every, "eval.data": data, "eval.tasks": "[linear_probe]",
                     "eval.max_cells": cells, "eval.seed": cfg.seed})
    tcfg = load_train_config([recipe] if recipe.is_file() else [],
                             [f"{k}={v}" for k, v in over.items()])
    return train(tcfg)


def evaluate_export(export: Path, data: Path, out: Path, cfg: DemoConfig,
                    n_batches: int) -> dict[str, Any]:
    """Harness run: probe (pbmc3k -> pbmc8k) and scib, both against the HVG + PCA baseline."""
    from scforge.eval.harness import EvalConfig, evaluate
    from scforge.eval.tasks import EmbeddingQualityConfig, LinearProbeConfig

    tasks = ["linear_probe"]
    if cfg.scib and _has("scib_metrics"):
        tasks.append("embedding_quality")
    elif cfg.scib:
        _say("scib-metrics is not installed (pip install 'scforge[eval]'): probe only")
    split = "batch" if n_batches > 1 else "stratified"
    ecfg = EvalConfig(checkpoint=str(export), data=str(data), out_dir=str(out),
                      max_cells=cfg.eval_cells, seed=cfg.seed, device=cfg.device, tasks=tasks,
                      save_embeddings=True,
                      linear_probe=LinearProbeConfig(split=split, heldout_batch=BATCH_TEST,
                                                     baselines=["pca"]),
                      embedding_quality=EmbeddingQualityConfig(baselines=["pca"],
                                                               umap=cfg.umap,
                                                               neighbors="exact"))
    ecfg.validate()
    return evaluate(ecfg, progress=cfg.progress)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------- report
def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and validation records of a run's ``metrics.jsonl``."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return ([r for r in recs if r.get("kind") == "train"],
            [r for r in recs if r.get("kind") == "val"])


def read_evals(path: Path) -> list[dict[str, Any]]:
    """The in-training probe records (``kind: eval``) of a run's ``metrics.jsonl``."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if r.get("kind") == "eval"
            and "eval/linear_probe/accuracy" in r]


def plot_probe(evals: list[dict[str, Any]], path: Path) -> str:
    """In-training probe accuracy and macro-F1 against the pretraining step."""
    from scforge.eval.report import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in evals]
    for key, label in (("accuracy", "probe accuracy"), ("macro_f1", "probe macro-F1")):
        ax.plot(steps, [r.get(f"eval/linear_probe/{key}", math.nan) for r in evals], "o-",
                label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.set_title("linear probe on the live encoder during pretraining", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_loss(train: list[dict[str, Any]], val: list[dict[str, Any]], path: Path) -> str:
    """Training loss per logged step and validation loss at each check."""
    from scforge.eval.report import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (masked tokens/values)")
    ax.set_title("debug encoder pretraining on pbmc shards", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def training_summary(train: list[dict[str, Any]], val: list[dict[str, Any]]) -> dict[str, Any]:
    """Loss at start/end and throughput (mean over logged windows after the first)."""
    steady = train[1:] or train
    return {
        "steps": int(train[-1]["step"]) if train else 0,
        "first_loss": float(train[0]["loss"]) if train else math.nan,
        "final_loss": float(train[-1]["loss"]) if train else math.nan,
        "final_val_loss": float(val[-1]["val_loss"]) if val else math.nan,
        "cells_per_s": float(np.mean([r["cells_per_s"] for r in steady])) if train else 0.0,
        "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in steady])) if train else 0.0,
        "step_time_s": float(np.mean([r["step_time_s"] for r in steady])) if train else 0.0,
        "pad_fraction": float(np.mean([r["pad_fraction"] for r in steady])) if train else 0.0,
    }


def comparison_table(eval_dir: Path) -> dict[str, dict[str, float]]:
    """``{embedding: {metric: value}}`` from the harness report: probe and scib aggregates."""
    rep = json.loads((eval_dir / "report.json").read_text())["tasks"]
    rows: dict[str, dict[str, float]] = {}
    probe = rep.get("linear_probe", {}).get("table") or {
        "scforge": rep.get("linear_probe", {}).get("scores", {})}
    for name, vals in probe.items():
        rows.setdefault(name, {})["probe accuracy"] = vals.get("accuracy", math.nan)
        rows[name]["probe macro-F1"] = vals.get("macro_f1", math.nan)
    for name, vals in (rep.get("embedding_quality", {}).get("table") or {}).items():
        for col in ("Bio conservation", "Batch correction", "Total"):
            if col in vals:
                rows.setdefault(name, {})[f"scib {col}"] = vals[col]
    return rows


def write_demo_report(out: Path, *, cfg: DemoConfig, dataset: dict[str, Any],
                      run_dir: Path, eval_dir: Path, stages: dict[str, float]) -> Path:
    """``report.md`` + ``report.json`` (+ ``loss_curve.png``) in ``out``; returns the md path."""
    train_recs, val_recs = read_metrics(run_dir / "metrics.jsonl")
    training = training_summary(train_recs, val_recs)
    loss_png = plot_loss(train_recs, val_recs, out / "loss_curve.png")
    evals = read_evals(run_dir / "metrics.jsonl")
    probe_png = [plot_probe(evals, out / "probe_curve.png")] if evals else []
    probe_curve = [{"step": int(r["step"]),
                    "accuracy": float(r["eval/linear_probe/accuracy"]),
                    "macro_f1": float(r.get("eval/linear_probe/macro_f1", math.nan)),
                    "seconds": float(r.get("eval_time_s", math.nan))} for r in evals]
    table = comparison_table(eval_dir)
    eval_rep = json.loads((eval_dir / "report.json").read_text())
    figures = [loss_png, *probe_png] + [f for t in eval_rep["tasks"].values()
                                        for f in t.get("figures", [])]
    payload = {"config": cfg.__dict__, "dataset": dataset, "training": training,
               "probe_during_training": probe_curve,
               "comparison": table, "stages_s": stages, "figures": figures,
               "eval_report": str(eval_dir / "report.json"), "run_dir": str(run_dir)}
    (out / "report.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")

    cols = sorted({c for r in table.values() for c in r}, key=_col_order)
    lines = ["# scforge demo report", "",
             f"Data: {dataset['cells']} real PBMC cells ({dataset['batches']}), "
             f"{dataset['genes']} genes; {cfg.strategy} tokens, {cfg.max_len} per cell, "
             f"{dataset['shards']} shards ({dataset['shard_mb']:.1f} MB).", "",
             "## Model vs baseline", "",
             "`scforge`: the debug encoder (2 layers x 40) pretrained below, its pooled cell "
             "embedding. "
             "`PCA`: 50 PCs of log-normalised highly variable genes, computed in the same run. "
             "Probe: logistic regression trained on one batch, tested on the other "
             f"({dataset['probe_split']}). scib: scib-metrics Benchmarker defaults, unscaled.",
             "", "| embedding | " + " | ".join(cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row.get(c, math.nan):.3f}" for c in cols)
                     + " |")
    lines += ["", "## Pretraining", "",
              f"- steps: {training['steps']} (micro-batch {cfg.batch_size}, lr {cfg.lr})",
              f"- loss: {training['first_loss']:.3f} -> {training['final_loss']:.3f} "
              f"(validation {training['final_val_loss']:.3f})",
              f"- throughput: {training['cells_per_s']:.0f} cells/s, "
              f"{training['tokens_per_s']:.0f} tokens/s, {training['step_time_s'] * 1e3:.0f} ms "
              f"per step (padding {100 * training['pad_fraction']:.1f}%)",
              "", "![loss curve](loss_curve.png)", ""]
    if probe_curve:
        n = int(evals[-1].get("eval/linear_probe/n_train", 0)
                + evals[-1].get("eval/linear_probe/n_test", 0))
        lines += ["## Linear probe during pretraining", "",
                  f"The trainer's eval callback (`eval.every={eval_every(cfg)}`) embeds {n} "
                  "cells with the live encoder and fits a logistic-regression probe "
                  "(stratified 80/20 split, both batches) after every check.", "",
                  "| step | probe accuracy | probe macro-F1 | seconds |", "|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | "
                  f"{r['seconds']:.1f} |" for r in probe_curve]
        lines += ["", "![probe curve](probe_curve.png)", ""]
    lines += ["## Figures", ""]
    lines += [f"![{Path(f).stem}]({Path(f).relative_to(out)})" for f in figures[1 + len(probe_png):]]
    lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in stages.items()]
    lines += ["", f"Full evaluation report: `{eval_dir.relative_to(out)}/report.md`; "
              f"training run: `{run_dir.relative_to(out)}/`."]
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def _col_order(col: str) -> tuple[int, str]:
    order = ["probe accuracy", "probe macro-F1", "scib Bio conservation", "scib Batch correction",
             "scib Total"]
    return (order.index(col) if col in order else len(order), col)


# ---------------------------------------------------------------------------- driver
def run_demo(cfg: DemoConfig) -> Path:
    """Runs every stage; returns the path of ``report.md``."""
    import os

    os.environ.setdefault("WANDB_MODE", "offline")
    if cfg.strategy not in RECIPES:
        raise ValueError(f"strategy={cfg.strategy!r}; choose one of {sorted(RECIPES)}")
    if cfg.steps < 1 or cfg.max_len < 8:
        raise ValueError(f"steps={cfg.steps}, max_len={cfg.max_len}: need steps >= 1, "
                         "max_len >= 8")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("data", f"shards_{RECIPES[cfg.strategy]}", "run", "eval"):
        if (out / sub).is_dir():  # a rerun starts fresh (the demo owns these directories)
            shutil.rmtree(out / sub)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    data_path = out / "data" / "pbmc_demo.h5ad"
    adata = build_dataset(data_path, seed=cfg.seed)
    batches = adata.obs["batch"].value_counts().sort_index()
    _say(f"dataset: {adata.n_obs} real PBMC cells x {adata.n_vars} genes, batches "
         + ", ".join(f"{k} ({v})" for k, v in batches.items()))
    stages["data"] = time.perf_counter() - t0

    t = time.perf_counter()
    shards = shard(data_path, out / f"shards_{RECIPES[cfg.strategy]}", cfg.strategy, cfg.max_len)
    from scforge.data.shard import load_manifest
    from scforge.data.shard.inspect import inspect

    print(inspect(shards, n_cells=2, n_genes=8))
    man = load_manifest(shards)
    stages["shard"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(f"pretraining the debug encoder for {cfg.steps} steps (DeepSpeed trainer) ...")
    result = pretrain(shards, out / "run", cfg, data=data_path)
    if result.export_dir is None:
        raise RuntimeError("training finished without an export")
    stages["pretrain"] = time.perf_counter() - t

    t = time.perf_counter()
    _say("embedding and evaluating against the HVG + PCA baseline ...")
    evaluate_export(Path(result.export_dir), data_path, out / "eval", cfg, len(batches))
    stages["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    dataset = {"cells": int(adata.n_obs), "genes": int(adata.n_vars),
               "batches": ", ".join(f"{k}: {v}" for k, v in batches.items()),
               "shards": len(man.get("shards", [])),
               "shard_mb": sum(s.get("bytes", 0) for s in man.get("shards", [])) / 1e6,
               "probe_split": (f"train {BATCH_TRAIN}, test {BATCH_TEST}" if len(batches) > 1
                               else "stratified 80/20")}
    stages["report"] = 0.0
    md = write_demo_report(out, cfg=cfg, dataset=dataset, run_dir=out / "run",
                           eval_dir=out / "eval", stages=stages)
    stages["report"] = time.perf_counter() - t
    stages["total"] = time.perf_counter() - t0
    md = write_demo_report(out, cfg=cfg, dataset=dataset, run_dir=out / "run",
                           eval_dir=out / "eval", stages=stages)
    _say(f"done in {stages['total']:.0f} s. Report: {md}")
    return md
