"""``scforge evaluate``: embed labelled cells with a checkpoint, run registered tasks, report.

A run directory gets the resolved config, ``report.json``, ``report.md`` and the figures.
:class:`TrainingEvaluator` is the in-training variant: it tokenizes a small labelled AnnData once
and scores a live model at any step (the trainer calls it; no files, no scib unless asked).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scforge.eval.embed import embed_cells, resolve_device
from scforge.eval.tasks import (
    EVAL_TASKS,
    NEIGHBORS,
    EmbeddingQualityConfig,
    EvalContext,
    LinearProbeConfig,
    TaskResult,
)
from scforge.eval.tokenize import checkpoint_tokenizer, seq_len_of, tokenize_adata


@dataclass
class EvalConfig:
    """Schema of ``configs/eval/*.yaml``."""

    checkpoint: str = ""
    """Export directory (``<run>/export``)."""
    data: str = ""
    """Labelled h5ad with raw counts."""
    out_dir: str = "runs/eval"
    label_key: str = "cell_type"
    batch_key: str = "batch"
    exclude: dict[str, list[str]] = field(default_factory=dict)
    """Drop cells whose obs column has one of these values, e.g. ``{demuxlet_cls: [DBL]}``."""
    max_cells: int = 0
    """Random subsample of this many cells (0 = all)."""
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"
    layer: str = "X"
    tasks: list[str] = field(default_factory=lambda: ["linear_probe", "embedding_quality"])
    save_embeddings: bool = False
    """Also write ``embedded.h5ad`` (the cells with ``obsm``: model and baseline embeddings)."""
    linear_probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    embedding_quality: EmbeddingQualityConfig = field(default_factory=EmbeddingQualityConfig)

    def validate(self) -> None:
        from scforge.config.loader import ConfigError

        if not self.checkpoint or not self.data:
            raise ConfigError("evaluation needs checkpoint=<export dir> and data=<h5ad>")
        for t in self.tasks:
            if t not in EVAL_TASKS:
                raise ConfigError(f"tasks: {t!r} is not an eval task; registered: "
                                  f"{EVAL_TASKS.names()}")
        if self.linear_probe.split not in ("stratified", "batch"):
            raise ConfigError(f"linear_probe.split={self.linear_probe.split!r}; choose "
                              "stratified or batch")
        if self.embedding_quality.neighbors not in NEIGHBORS:
            raise ConfigError(f"embedding_quality.neighbors={self.embedding_quality.neighbors!r};"
                              f" choose one of {sorted(NEIGHBORS)}")


def select_cells(adata: Any, *, exclude: dict[str, list[str]], max_cells: int, seed: int) -> Any:
    """Drops excluded cells and subsamples (stratification-free, seeded)."""
    keep = np.ones(adata.n_obs, dtype=bool)
    for col, bad in exclude.items():
        if col not in adata.obs:
            raise ValueError(f"exclude: obs has no column {col!r}")
        keep &= ~adata.obs[col].astype(str).isin([str(b) for b in bad]).to_numpy()
    idx = np.flatnonzero(keep)
    if max_cells and len(idx) > max_cells:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_cells, replace=False))
    return adata[idx].copy()


def run_tasks(ctx: EvalContext, tasks: list[str], configs: dict[str, Any]) -> dict[str, TaskResult]:
    """Runs the named tasks on one context; ``configs`` maps task name -> its config."""
    return {name: EVAL_TASKS.get(name)(ctx, configs.get(name) or _default_cfg(name))
            for name in tasks}


def _default_cfg(name: str) -> Any:
    from scforge.eval.tasks import TASK_CONFIGS

    return TASK_CONFIGS[name]() if name in TASK_CONFIGS else None


def evaluate(cfg: EvalConfig, *, progress: bool = True) -> dict[str, Any]:
    """Runs an evaluation; returns ``{task: scores}`` and writes the report under ``out_dir``."""
    from scforge.config.loader import to_yaml
    from scforge.data.sources.h5ad import read_anndata
    from scforge.training.export import load_pretrained, read_pretrained_info

    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    info = read_pretrained_info(cfg.checkpoint)
    adata = select_cells(read_anndata(cfg.data), exclude=cfg.exclude, max_cells=cfg.max_cells,
                         seed=cfg.seed)
    cells = tokenize_adata(adata, checkpoint_tokenizer(info), layer=cfg.layer)
    model = load_pretrained(cfg.checkpoint, device=resolve_device(cfg.device))
    adata.obsm["X_scforge"] = embed_cells(
        model, cells, max_len=seq_len_of(info, model.config.max_len), batch_size=cfg.batch_size,
        eos_id=int(info["tokenizer"].get("eos_id", -1)), progress=progress)
    ctx = EvalContext(adata, "X_scforge", cfg.label_key, cfg.batch_key, out, cfg.seed)
    results = run_tasks(ctx, list(cfg.tasks), {"linear_probe": cfg.linear_probe,
                                                "embedding_quality": cfg.embedding_quality})
    from scforge.eval.report import write_report

    meta = {"checkpoint": str(Path(cfg.checkpoint).resolve()), "data": cfg.data,
            "cells": int(adata.n_obs), "step": info.get("step"),
            "seconds": round(time.perf_counter() - t0, 1), **_versions()}
    write_report(out, results, meta)
    if cfg.save_embeddings:
        adata.write_h5ad(out / "embedded.h5ad")
    return {name: res.scores for name, res in results.items()}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("scforge", "torch", "scib-metrics", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def evaluate_main(argv: list[str] | None = None) -> int:
    """``scforge evaluate --config configs/eval/<x>.yaml [key=value ...]``."""
    from scforge.config.loader import load_config
    from scforge.errors import ArgumentParser, run_command

    ap = ArgumentParser(prog="scforge evaluate",
                                 description="Evaluate a checkpoint's embeddings on labelled cells.")
    ap.add_argument("--config", action="append", default=[], help="YAML recipe (repeatable)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_cells=2000")
    args = ap.parse_args(argv)

    def run() -> int:
        cfg = load_config(EvalConfig, args.config, args.overrides)
        scores = evaluate(cfg, progress=not args.no_progress)
        print(json.dumps(scores, indent=1))
        print(f"report: {Path(cfg.out_dir) / 'report.md'}")
        return 0

    return run_command("scforge evaluate", run)


class TrainingEvaluator:
    """Scores a live model on a small labelled AnnData during training.

    Tokenizes the cells once (with the training shards' tokenizer, from their manifest), then
    each call embeds them with the current weights and runs the chosen tasks.

    Args:
        adata: labelled AnnData with raw counts (keep it small: ~1-2k cells).
        manifest: the training shards' manifest (or an export's ``config.json``).
        tasks: task names (``linear_probe`` is cheap; ``embedding_quality`` costs scib time).
        label_key / batch_key: obs columns.
        max_len: truncation length (the loader's ``data.stream.max_len``).
        batch_size: cells per forward pass.
        configs: optional ``{task: config}`` overrides.
    """

    def __init__(self, adata: Any, manifest: dict[str, Any], *,
                 tasks: tuple[str, ...] = ("linear_probe",), label_key: str = "cell_type",
                 batch_key: str = "batch", max_len: int = 2048, batch_size: int = 64,
                 configs: dict[str, Any] | None = None, seed: int = 0) -> None:
        for t in tasks:
            EVAL_TASKS.get(t)  # fail at construction, not mid-run
        self.adata = adata.copy()
        tokenizer = checkpoint_tokenizer(manifest)
        self.cells = tokenize_adata(self.adata, tokenizer)
        self.eos_id = tokenizer.eos_id
        self.tasks, self.label_key, self.batch_key = tuple(tasks), label_key, batch_key
        self.max_len, self.batch_size, self.seed = max_len, batch_size, seed
        self.configs = dict(configs or {})

    def __call__(self, model: torch.nn.Module, *, prefix: str = "eval/") -> dict[str, float]:
        """``{prefix + task/metric: value}`` for the model's current weights (model mode kept)."""
        self.adata.obsm["X_scforge"] = embed_cells(
            model, self.cells, max_len=min(self.max_len, model.config.max_len),
            batch_size=self.batch_size, eos_id=self.eos_id)
        ctx = EvalContext(self.adata, "X_scforge", self.label_key, self.batch_key, None, self.seed)
        results = run_tasks(ctx, list(self.tasks), self.configs)
        return {f"{prefix}{t}/{k}": v for t, r in results.items() for k, v in r.scores.items()}


def evaluate_in_training(model: torch.nn.Module, adata: Any, manifest: dict[str, Any],
                         **kw: Any) -> dict[str, float]:
    """One-shot :class:`TrainingEvaluator` (re-tokenizes on every call; prefer the class)."""
    return TrainingEvaluator(adata, manifest, **kw)(model)


__all__ = ["EvalConfig", "TrainingEvaluator", "evaluate", "evaluate_in_training",
           "evaluate_main"]
