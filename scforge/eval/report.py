"""Evaluation report: ``report.json``, ``report.md`` and figures in the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scforge.fsutil import write_text_atomic


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def plot_scores(table: pd.DataFrame, path: Path) -> str:
    """Grouped bar chart: one group per metric, one bar per embedding."""
    plt = _plt()
    cols = list(table.columns)
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.35 * len(cols) * len(table) + 2)), 4))
    width = 0.8 / max(1, len(table))
    x = np.arange(len(cols))
    for i, (name, row) in enumerate(table.iterrows()):
        ax.bar(x + i * width, row.to_numpy(dtype=float), width, label=str(name))
    ax.set_xticks(x + 0.4 - width / 2, cols, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("score (unscaled)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def umap_coords(x: np.ndarray, *, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """2-D UMAP of an embedding (umap-learn)."""
    import umap

    nn = min(n_neighbors, max(2, len(x) - 1))
    return umap.UMAP(n_neighbors=nn, random_state=seed, n_jobs=1).fit_transform(x)


def plot_umaps(adata: Any, keys: dict[str, str], colours: list[str], path: Path, *,
               seed: int = 0) -> str:
    """Grid of UMAPs: a row per embedding (``{title: obsm key}``), a column per obs colour."""
    plt = _plt()
    fig, axes = plt.subplots(len(keys), len(colours), figsize=(6 * len(colours), 4 * len(keys)),
                             squeeze=False)
    for r, (title, key) in enumerate(keys.items()):
        xy = umap_coords(np.asarray(adata.obsm[key], np.float32), seed=seed)
        for c, col in enumerate(colours):
            ax = axes[r, c]
            values = adata.obs[col].astype(str).to_numpy()
            for lab in sorted(set(values)):
                sel = values == lab
                ax.scatter(xy[sel, 0], xy[sel, 1], s=2, label=lab, rasterized=True)
            ax.set_title(f"{title}: {col}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:  # one legend per colour column, outside the scatter
                ax.legend(markerscale=4, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                          frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_report(out_dir: Path, results: dict[str, Any], meta: dict[str, Any]) -> dict[str, str]:
    """Writes ``report.json`` and ``report.md``; ``results`` maps task name -> TaskResult."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"meta": meta, "tasks": {}}
    lines = ["# scforge evaluation", ""]
    lines += [f"- **{k}**: {v}" for k, v in meta.items() if not isinstance(v, dict)]
    for name, res in results.items():
        entry: dict[str, Any] = {"scores": res.scores, "figures": res.figures}
        lines += ["", f"## {name}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in res.scores.items()]
        if res.table is not None:
            entry["table"] = json.loads(res.table.to_json(orient="index"))
            lines += ["", res.table.to_markdown(floatfmt=".4f") if _has_tabulate()
                      else "```\n" + res.table.to_string(float_format="%.4f") + "\n```"]
        lines += [f"![{Path(f).stem}]({Path(f).name})" for f in res.figures]
        payload["tasks"][name] = entry
    write_text_atomic(out_dir / "report.json", json.dumps(payload, indent=1, default=str) + "\n")
    write_text_atomic(out_dir / "report.md", "\n".join(lines) + "\n")
    return {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md")}


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
