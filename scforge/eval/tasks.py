"""Evaluation tasks behind a registry: each maps (cells with embeddings, its config) -> scores.

A task receives an :class:`EvalContext` (AnnData with raw counts in ``X``, the model embedding
in ``obsm[ctx.key]``, the label and batch columns) and returns a :class:`TaskResult`. Tasks are
registered with ``@EVAL_TASKS.register(name)``; the harness runs those a config names.

scib-metrics pulls in JAX, so it (and scanpy) is imported inside the task functions only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scforge.registry import Registry


@dataclass
class LinearProbeConfig:
    """Logistic regression on embeddings predicting ``label_key``."""

    split: str = "stratified"
    """``stratified`` (random split keeping label proportions) or ``batch`` (hold out a batch)."""
    test_fraction: float = 0.2
    heldout_batch: str = ""
    """Batch value held out as the test set when ``split=batch`` ("" = the last batch, sorted)."""
    max_iter: int = 1000
    C: float = 1.0
    baselines: list[str] = field(default_factory=list)
    """Also probe these baselines on the same split (``hvg``, ``pca``; see
    :func:`add_baselines`). Empty by default: the in-training callback stays cheap."""
    n_hvg: int = 2000
    n_pcs: int = 50


@dataclass
class EmbeddingQualityConfig:
    """scib-metrics' default Benchmarker metrics on the model embedding and baselines."""

    baselines: list[str] = field(default_factory=lambda: ["hvg", "pca"])
    """Computed in the same run: ``hvg`` (log-normalised HVG expression), ``pca`` (its PCA)."""
    n_hvg: int = 2000
    n_pcs: int = 50
    umap: bool = True
    """UMAPs of the model and baseline embeddings, coloured by label and by batch."""
    neighbors: str = "pynndescent"
    """kNN graph the metrics share: ``pynndescent`` (scib-metrics' default, approximate) or
    ``exact`` (scikit-learn brute force: no Numba compilation, faster below ~10k cells)."""


@dataclass
class EvalContext:
    """What every task sees."""

    adata: Any
    key: str
    label_key: str
    batch_key: str
    out_dir: Path | None = None
    seed: int = 0


@dataclass
class TaskResult:
    """Flat scores (``{metric: value}``), an optional table and the figures written."""

    scores: dict[str, float]
    table: pd.DataFrame | None = None
    figures: list[str] = field(default_factory=list)


EvalTask = Callable[[EvalContext, Any], TaskResult]
EVAL_TASKS: Registry[EvalTask] = Registry("eval task")
TASK_CONFIGS: dict[str, type] = {"linear_probe": LinearProbeConfig,
                                 "embedding_quality": EmbeddingQualityConfig}


# ---------------------------------------------------------------------------- linear probe
def probe_split(obs: pd.DataFrame, cfg: LinearProbeConfig, *, label_key: str, batch_key: str,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices of a probe (test labels unseen in training are dropped)."""
    n = len(obs)
    labels = obs[label_key].astype(str).to_numpy()
    if cfg.split == "batch":
        batches = obs[batch_key].astype(str).to_numpy()
        held = cfg.heldout_batch or sorted(set(batches))[-1]
        if held not in set(batches):
            raise ValueError(f"linear_probe.heldout_batch={held!r} is not a value of "
                             f"obs[{batch_key!r}]: {sorted(set(batches))}")
        test = np.flatnonzero(batches == held)
        train = np.flatnonzero(batches != held)
    elif cfg.split == "stratified":
        from sklearn.model_selection import train_test_split

        counts = pd.Series(labels).value_counts()
        strat = labels if counts.min() >= 2 else None  # singletons cannot be stratified
        train, test = train_test_split(np.arange(n), test_size=cfg.test_fraction,
                                       random_state=seed, stratify=strat)
    else:
        raise ValueError(f"linear_probe.split={cfg.split!r}; choose stratified or batch")
    seen = set(labels[train])
    test = test[np.isin(labels[test], list(seen))]
    if len(train) == 0 or len(test) == 0:
        raise ValueError("linear_probe has an empty train or test set; check the split")
    return np.sort(train), np.sort(test)


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              *, max_iter: int = 1000, C: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Standardised logistic regression: accuracy, macro-F1 and the majority-class rate."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(),
                        LogisticRegression(max_iter=max_iter, C=C, random_state=seed))
    clf.fit(x_train, y_train)
    pred = clf.predict(x_test)
    majority = pd.Series(y_train).value_counts().index[0]
    return {"accuracy": float(accuracy_score(y_test, pred)),
            "macro_f1": float(f1_score(y_test, pred, average="macro")),
            "majority_rate": float(np.mean(y_test == majority)),
            "n_train": float(len(y_train)), "n_test": float(len(y_test))}


@EVAL_TASKS.register("linear_probe")
def linear_probe(ctx: EvalContext, cfg: LinearProbeConfig) -> TaskResult:
    """Predicts ``ctx.label_key`` from the embedding with logistic regression.

    Scores are the model's; with ``cfg.baselines`` the table also holds each baseline's probe on
    the same train/test cells (rows: ``scforge``, ``HVG``, ``PCA``).
    """
    train, test = probe_split(ctx.adata.obs, cfg, label_key=ctx.label_key,
                              batch_key=ctx.batch_key, seed=ctx.seed)
    y = ctx.adata.obs[ctx.label_key].astype(str).to_numpy()
    keys = {"scforge": ctx.key}
    if cfg.baselines:
        keys.update(add_baselines(ctx.adata, list(cfg.baselines), n_hvg=cfg.n_hvg,
                                  n_pcs=cfg.n_pcs, batch_key=ctx.batch_key))
    rows = {}
    for name, key in keys.items():
        x = np.asarray(ctx.adata.obsm[key], dtype=np.float32)
        rows[name] = fit_probe(x[train], y[train], x[test], y[test], max_iter=cfg.max_iter,
                               C=cfg.C, seed=ctx.seed)
    table = pd.DataFrame(rows).T if cfg.baselines else None
    return TaskResult(rows["scforge"], table=table)


# ---------------------------------------------------------------------------- scib
def add_baselines(adata: Any, baselines: list[str], *, n_hvg: int, n_pcs: int,
                  batch_key: str) -> dict[str, str]:
    """Computes baseline embeddings from raw counts in ``X``; returns ``{name: obsm key}``.

    ``hvg``: log1p(counts / total * 1e4) of the ``n_hvg`` most variable genes (Seurat flavour,
    batch-aware); ``pca``: its ``n_pcs``-component PCA. Computed once per AnnData and settings:
    a second call (another task of the same run) reuses them.
    """
    import scanpy as sc

    unknown = sorted(set(baselines) - {"hvg", "pca"})
    if unknown:
        raise ValueError(f"baselines has {unknown}; choose from ['hvg', 'pca']")
    if not baselines:
        return {}
    names = {"hvg": ("HVG", "X_hvg"), "pca": ("PCA", "X_pca_hvg")}
    stamp = {"n_hvg": int(n_hvg), "n_pcs": int(n_pcs), "batch_key": batch_key,
             "n_obs": int(adata.n_obs)}
    done = adata.uns.get("scforge_baselines", {})
    if all(done.get(b) == stamp and names[b][1] in adata.obsm for b in baselines):
        return {names[b][0]: names[b][1] for b in baselines}
    tmp = sc.AnnData(X=adata.X.copy(), obs=adata.obs[[batch_key]].copy())
    sc.pp.filter_genes(tmp, min_cells=1)
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    n_batches = tmp.obs[batch_key].nunique()
    sc.pp.highly_variable_genes(tmp, n_top_genes=min(n_hvg, tmp.n_vars),
                                batch_key=batch_key if n_batches > 1 else None)
    hvg = tmp[:, tmp.var["highly_variable"].to_numpy()].copy()
    dense = np.asarray(hvg.X.toarray() if hasattr(hvg.X, "toarray") else hvg.X, np.float32)
    keys: dict[str, str] = {}
    if "hvg" in baselines:
        adata.obsm["X_hvg"] = dense
        keys["HVG"] = "X_hvg"
    if "pca" in baselines:
        sc.pp.pca(hvg, n_comps=min(n_pcs, min(hvg.shape) - 1), random_state=0)
        adata.obsm["X_pca_hvg"] = np.asarray(hvg.obsm["X_pca"], np.float32)
        keys["PCA"] = "X_pca_hvg"
    adata.uns["scforge_baselines"] = {**done, **{b: stamp for b in baselines}}
    return keys


def exact_neighbors(x: np.ndarray, k: int) -> Any:
    """Exact Euclidean kNN of every row (itself first, like scib's pynndescent wrapper), as
    scib-metrics ``NeighborsResults``."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(x))
    dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(x)
    return NeighborsResults(indices=idx, distances=dist)


NEIGHBORS: dict[str, Callable[[np.ndarray, int], Any] | None] = {"pynndescent": None,
                                                                 "exact": exact_neighbors}


def scib_table(adata: Any, keys: list[str], *, label_key: str, batch_key: str,
               pre_integrated: str | None, neighbors: str = "pynndescent") -> pd.DataFrame:
    """scib-metrics ``Benchmarker`` with its default metrics; rows = embeddings (obsm keys),
    columns = metrics and aggregates (unscaled). ``neighbors`` picks the kNN computer
    (``pynndescent``: scib's default)."""
    from scib_metrics.benchmark import Benchmarker

    if neighbors not in NEIGHBORS:
        raise ValueError(f"embedding_quality.neighbors={neighbors!r}; choose one of "
                         f"{sorted(NEIGHBORS)}")
    bm = Benchmarker(adata, batch_key=batch_key, label_key=label_key, embedding_obsm_keys=keys,
                     pre_integrated_embedding_obsm_key=pre_integrated, n_jobs=1,
                     progress_bar=False)
    bm.prepare(neighbor_computer=NEIGHBORS[neighbors])
    bm.benchmark()
    df = bm.get_results(min_max_scale=False)
    df = df.drop(index="Metric Type", errors="ignore")
    return df.apply(pd.to_numeric, errors="coerce")


@EVAL_TASKS.register("embedding_quality")
def embedding_quality(ctx: EvalContext, cfg: EmbeddingQualityConfig) -> TaskResult:
    """scib-metrics on the model embedding and HVG/PCA baselines, in one table."""
    adata = ctx.adata.copy()
    adata.obs[ctx.label_key] = adata.obs[ctx.label_key].astype(str).astype("category")
    adata.obs[ctx.batch_key] = adata.obs[ctx.batch_key].astype(str).astype("category")
    base = add_baselines(adata, list(cfg.baselines), n_hvg=cfg.n_hvg, n_pcs=cfg.n_pcs,
                         batch_key=ctx.batch_key)
    names = {ctx.key: "scforge", **{v: k for k, v in base.items()}}
    pre = base.get("PCA")
    table = scib_table(adata, list(names), label_key=ctx.label_key, batch_key=ctx.batch_key,
                       pre_integrated=pre, neighbors=cfg.neighbors)
    table = table.rename(index=names)
    scores = {f"{c}": float(table.loc["scforge", c]) for c in table.columns}
    figures: list[str] = []
    if ctx.out_dir is not None:
        from scforge.eval.report import plot_scores, plot_umaps

        figures.append(plot_scores(table, Path(ctx.out_dir) / "scib_scores.png"))
        if cfg.umap:
            umap_keys = {names[k]: k for k in names if k != "X_hvg"}
            figures.append(plot_umaps(adata, umap_keys, [ctx.label_key, ctx.batch_key],
                                      Path(ctx.out_dir) / "umap.png", seed=ctx.seed))
    return TaskResult(scores, table=table, figures=figures)
