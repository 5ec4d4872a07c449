"""The suite's report: ``report.md`` with a table per stage and ratios to each peer, PNG charts.

Input is the suite payload (``suite.json``): ``machine``, ``versions``, ``stages`` (per stage its
``status`` and, when it ran, the stage script's own JSON under ``result`` and markdown under
``markdown``). Ratios are read from the stage JSONs: the stages this module knows (tokenize,
shard, eval) by name, the others (loader, store, train, and any new one) from their ``ratios``
dict, else from every numeric leaf whose key starts with ``vs_`` or contains ``ratio`` or
``speedup``. A ratio is always "scforge / peer" with > 1 meaning scforge is faster, unless its
row says otherwise (``speedup: False``: such rows are tabled but not charted).

Charts: ``ratios.png`` (one horizontal bar per speed-up, log scale, a line at 1x) and
``scaling.png`` (sharding cells/s and peak RSS against corpus size, from the shard stage).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Row = dict[str, Any]  # {"stage", "label", "ratio", "speedup": bool}


# ----------------------------------------------------------------------------- ratios
def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    x = float(x)
    return x if math.isfinite(x) and x > 0 else None


def _row(stage: str, label: str, value: Any, *, speedup: bool = True) -> Row | None:
    v = _num(value)
    return None if v is None else {"stage": stage, "label": label, "ratio": v, "speedup": speedup}


def _tokenize(res: dict) -> Iterator[Row | None]:
    rv, bn = res.get("rank_value", {}), res.get("binning", {})
    q = rv.get("ratios", {})
    peer = str(rv.get("peer", "per-cell NumPy")).split(" (")[0]
    yield _row("tokenize", f"rank value: scforge kernel / {peer}", q.get("vs_per_cell_numpy"))
    yield _row(
        "tokenize",
        "rank value: scforge kernel, 1 thread / per-cell NumPy",
        q.get("vs_per_cell_numpy_1thread"),
    )
    q = bn.get("ratios", {})
    peer = bn.get("peer", "scGPT binning")
    yield _row("tokenize", f"binning: scforge kernel / {peer}", q.get("vs_scgpt_binning"))
    yield _row(
        "tokenize", f"binning: scforge kernel, 1 thread / {peer}", q.get("vs_scgpt_binning_1thread")
    )


def _shard(res: dict) -> Iterator[Row | None]:
    for d in res.get("datasets", []):
        name, q = d.get("name", "?"), d.get("ratios", {})
        yield _row(
            "shard", f"{name}: scforge-shard / per-cell NumPy tokenizer", q.get("vs_per_cell_numpy")
        )
        floor = _num(q.get("io_floor_over_scforge"))
        yield _row(
            "shard",
            f"{name}: scforge-shard speed as a fraction of the I/O floor",
            None if floor is None else 1 / floor,
        )
        t = d.get("tokenize_only", {})
        yield _row(
            "shard", f"{name}: rank-value kernel / per-cell NumPy, in memory", t.get("ratio")
        )


def _eval(res: dict) -> Iterator[Row | None]:
    r = res.get("result", {})
    q = r.get("ratios", {})
    yield _row(
        "eval",
        "embedding cells/s / scib-metrics scoring cells/s",
        q.get("embed_over_scib_cells_per_s"),
    )
    yield _row(
        "eval",
        "scib-metrics runtime: model embedding / PCA baseline (>1: slower)",
        q.get("scib_model_over_pca"),
        speedup=False,
    )


def _train(res: dict) -> Iterator[Row | None]:
    rows = res.get("rows")
    if not (isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)):
        yield from _generic("train", res)
        return
    for r in rows:
        variant = str(r.get("variant", "?"))
        if variant == "hf_eager":
            continue
        yield _row(
            "train",
            f"{r.get('size', '?')}: {variant} / HF BertForMaskedLM eager",
            r.get("vs_hf_eager"),
        )


def _store(res: dict) -> Iterator[Row | None]:
    """tensorstore (scforge's default reader) / zarr-python, per format or layout + method."""
    for key, group_by in (("x_reads", ("format",)), ("store_reads", ("layout", "method"))):
        reads = res.get(key)
        if not isinstance(reads, list):
            continue
        groups: dict[tuple, dict[str, float]] = {}
        for r in reads:
            if isinstance(r, dict) and _num(r.get("cells_per_s")):
                g = tuple(str(r.get(k, "")) for k in group_by)
                groups.setdefault(g, {})[str(r.get("backend"))] = float(r["cells_per_s"])
        what = "AnnData-zarr X rows" if key == "x_reads" else "token store batches"
        for g, by in groups.items():
            if "tensorstore" in by and "zarr" in by:
                yield _row(
                    "store",
                    f"{what} ({', '.join(g)}): tensorstore / zarr-python",
                    by["tensorstore"] / by["zarr"],
                )
    if not any(isinstance(res.get(k), list) for k in ("x_reads", "store_reads")):
        yield from _generic("store", res)


def _generic(stage: str, res: dict) -> Iterator[Row | None]:
    top = res.get("ratios")
    if isinstance(top, dict) and any(_num(v) for v in top.values()):
        for k, v in top.items():
            yield _row(stage, str(k).replace("_", " "), v)
        return
    yield from _walk(stage, res, [])


def _walk(stage: str, x: Any, path: list[str]) -> Iterator[Row | None]:
    if isinstance(x, dict):
        for k, v in x.items():
            if k in ("machine", "versions", "args", "config", "packages"):
                continue
            yield from _walk(stage, v, [*path, str(k)])
    elif isinstance(x, list):
        for i, v in enumerate(x):
            label = v.get("name") or v.get("label") if isinstance(v, dict) else None
            yield from _walk(stage, v, [*path, str(label or i)])
    elif path:
        key = path[-1]
        if key.startswith("vs_") or "ratio" in key or "speedup" in key:
            # "hf_eager/vs_hf_eager" is the peer against itself (always 1): not a comparison
            if key.startswith("vs_") and len(path) > 1 and path[-2] == key[3:]:
                return
            yield _row(stage, " / ".join(p.replace("_", " ") for p in path), x)


_KNOWN = {"tokenize": _tokenize, "shard": _shard, "eval": _eval, "train": _train, "store": _store}


def stage_ratios(stage: str, result: dict | None) -> list[Row]:
    """The ratio rows of one stage's JSON (empty when it has none or did not run)."""
    if not isinstance(result, dict):
        return []
    gen = _KNOWN[stage](result) if stage in _KNOWN else _generic(stage, result)
    return [r for r in gen if r is not None]


def all_ratios(payload: dict) -> list[Row]:
    rows: list[Row] = []
    for name, rec in payload.get("stages", {}).items():
        if rec.get("status") == "ok":
            rows += stage_ratios(name, rec.get("result"))
    return rows


# ----------------------------------------------------------------------------- scaling
def scaling_rows(payload: dict) -> list[dict]:
    """Sharding rows per synthetic corpus size (cells, workers, cells/s, peak RSS, floor)."""
    rec = payload.get("stages", {}).get("shard", {})
    res = rec.get("result") if rec.get("status") == "ok" else None
    if not isinstance(res, dict):
        return []
    floors = {
        d["io_floor"]["cells"]: d["io_floor"]["cells_per_s"]
        for d in res.get("datasets", [])
        if str(d.get("name", "")).startswith("synthetic_") and "io_floor" in d
    }
    rows = []
    for r in res.get("scaling", []):
        if all(_num(r.get(k)) for k in ("cells", "cells_per_s_job", "peak_rss_gib")):
            rows.append({**r, "io_floor_cells_per_s": floors.get(r["cells"])})
    return rows


# ----------------------------------------------------------------------------- charts
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ratios(rows: list[Row], path: Path, title: str = "") -> Path | None:
    """Horizontal bars of every speed-up row (log scale, 1x marked); None when there are none."""
    rows = [r for r in rows if r["speedup"]]
    if not rows:
        return None
    plt = _plt()
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(stages)}
    h = max(2.5, 0.38 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(11, h))
    y = list(range(len(rows)))[::-1]
    vals = [r["ratio"] for r in rows]
    # bars grow from 1x, rightwards when scforge is faster, leftwards when slower
    ax.barh(y, [v - 1.0 for v in vals], left=1.0, color=[colours[r["stage"]] for r in rows])
    ax.set_yticks(y, [f"[{r['stage']}] {_short(r['label'])}" for r in rows], fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=1)
    for yi, v in zip(y, vals, strict=True):
        ax.text(v, yi, f" {v:.2f}x ", va="center", ha="left" if v >= 1 else "right", fontsize=8)
    lo, hi = min(vals + [1.0]), max(vals + [1.0])
    ax.set_xlim(lo / 1.8, hi * 2.2)
    ticks = [
        t
        for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)
        if lo / 1.8 <= t <= hi * 2.2
    ]
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.set_xlabel("scforge / peer (log scale; > 1: scforge faster)")
    ax.set_title(title or "scforge against its peers, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(label: str, n: int = 70) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def plot_scaling(rows: list[dict], path: Path, title: str = "") -> Path | None:
    """Sharding cells/s and peak RSS against corpus size; None without rows."""
    if not rows:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    workers = sorted({int(r["workers"]) for r in rows})
    for w in workers:
        rs = sorted((r for r in rows if int(r["workers"]) == w), key=lambda r: r["cells"])
        x = [r["cells"] for r in rs]
        a1.plot(x, [r["cells_per_s_job"] for r in rs], "o-", label=f"scforge-shard, {w} worker(s)")
        a2.plot(x, [r["peak_rss_gib"] for r in rs], "o-", label=f"{w} worker(s)")
    fl = sorted(
        {(r["cells"], r["io_floor_cells_per_s"]) for r in rows if r.get("io_floor_cells_per_s")}
    )
    if fl:
        a1.plot([f[0] for f in fl], [f[1] for f in fl], "k--", label="I/O floor (read X once)")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("corpus size (cells)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a1.set_ylabel("cells/s (job, excluding start-up)")
    a1.set_ylim(bottom=0)
    a2.set_ylabel("peak RSS of the process tree (GiB)")
    a2.set_ylim(bottom=0)
    fig.suptitle(title or "Sharding scaling (Geneformer V2 recipe)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- markdown
def _machine_line(payload: dict) -> str:
    m = payload.get("machine", {})
    gpu = m.get("gpu") or "none"
    if m.get("gpu_count", 0) > 1:
        gpu = f"{m['gpu_count']} x {gpu}"
    return (
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('ram_gb', '?')} GiB RAM, "
        f"GPU: {gpu}; Python {m.get('python', '?')}; git {m.get('git', '?')}; host "
        f"{m.get('host', '?')}"
    )


def _versions_line(payload: dict) -> str:
    v = payload.get("versions") or payload.get("machine", {}).get("packages", {})
    return ", ".join(f"{k} {v[k]}" for k in sorted(v))


def _demote(md: str) -> str:
    """A stage's own markdown under the suite's headings: drop its title, headings one deeper."""
    lines = md.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(
        re.sub(r"^(#+) ", r"\1## ", ln) if ln.startswith("#") else ln for ln in lines
    ).strip()


def _fmt_ratio(r: Row) -> str:
    return f"**{r['ratio']:.2f}x**" if r["speedup"] else f"{r['ratio']:.2f}x"


def markdown(payload: dict, figures: dict[str, str]) -> str:
    stages = payload.get("stages", {})
    lines = [
        f"# scforge benchmark suite: {payload.get('suite', '?')} "
        f"({payload.get('machine', {}).get('date', '?')})",
        "",
        f"Machine: {_machine_line(payload)}.",
        "",
        f"1-min load average: {payload.get('load_start')} at start, {payload.get('load_end')} at "
        f"end (a shared machine: compare ratios measured in the same run, not absolute "
        f"figures). Suite wall time: {payload.get('wall_s', '?')} s"
        + (
            f"; stage timeouts stretched {payload['load_stretch']}x for the load"
            if (payload.get("load_stretch") or 1) > 1
            else ""
        )
        + ".",
        "",
        f"Packages: {_versions_line(payload)}.",
        "",
        "## Stages",
        "",
        "| stage | status | wall (s) | peak RSS (GiB) | peers | load avg start / end |",
        "|---|---|---:|---:|---|---|",
    ]
    for name, rec in stages.items():
        status = rec.get("status", "?")
        if rec.get("error"):
            status += f": {rec['error']}"
        lines.append(
            f"| {name} | {status} | {rec.get('wall_s', '')} | {rec.get('peak_rss_gib', '')} | "
            f"{rec.get('peers', '')} | {rec.get('load_start', '')} / {rec.get('load_end', '')} |"
        )
    rows = all_ratios(payload)
    lines += ["", "## Ratios to each peer (same run)", ""]
    if rows:
        lines += [
            "Ratio = scforge / peer in throughput: > 1 means scforge is faster (rows marked "
            "otherwise say what they compare).",
            "",
            "| stage | comparison | ratio |",
            "|---|---|---:|",
        ]
        lines += [f"| {r['stage']} | {r['label']} | {_fmt_ratio(r)} |" for r in rows]
    else:
        lines.append("No stage produced ratios.")
    if figures:
        lines.append("")
        for key, title in (("ratios", "Ratios"), ("scaling", "Sharding scaling")):
            if key in figures:
                lines.append(f"![{title}]({figures[key]})")
    scal = scaling_rows(payload)
    if scal:
        lines += [
            "",
            "## Sharding scaling",
            "",
            "| corpus cells | workers | cells/s (job) | cells/s (wall) | peak RSS (GiB) | "
            "I/O floor cells/s |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in scal:
            floor = r.get("io_floor_cells_per_s")
            lines.append(
                f"| {r['cells']:,} | {r['workers']} | {r['cells_per_s_job']:,.0f} | "
                f"{r.get('cells_per_s_wall', 0):,.0f} | {r['peak_rss_gib']:.2f} | "
                f"{'' if floor is None else f'{floor:,.0f}'} |"
            )
    for name, rec in stages.items():
        lines += ["", f"## {name}", ""]
        if rec.get("status") != "ok":
            lines.append(f"**{rec.get('status', '?')}**: {rec.get('error', '')}")
            if rec.get("cmd"):
                lines += ["", f"Command: `{' '.join(map(str, rec['cmd']))}`"]
            if rec.get("stderr_tail"):
                lines += ["", "```", rec["stderr_tail"].rstrip(), "```"]
            continue
        own = stage_ratios(name, rec.get("result"))
        if own:
            lines += ["| comparison | ratio |", "|---|---:|"]
            lines += [f"| {r['label']} | {_fmt_ratio(r)} |" for r in own]
            lines.append("")
        if rec.get("markdown"):
            lines.append(_demote(rec["markdown"]))
        if rec.get("json"):
            lines += ["", f"Full figures: `{rec['json']}`."]
    return "\n".join(lines) + "\n"


def machine_tag(m: dict) -> str:
    """``2core`` / ``16core_nvidia-h200``: names a result file after the machine."""
    tag = f"{m.get('cores', '?')}core"
    if m.get("gpu"):
        tag += "_" + re.sub(r"[^a-z0-9]+", "-", str(m["gpu"]).lower()).strip("-")
    return tag


def write_report(
    payload: dict, out: str | Path, *, summary_dir: str | Path | None = None
) -> dict[str, Any]:
    """Writes ``report.md``, ``ratios.png`` and ``scaling.png`` (when there is data) into ``out``.

    With ``summary_dir``, the same report is also written as ``<summary_dir>/<date>_<machine>.md``
    (figure links rewritten relative to it): the file the README points to.

    Returns ``{"markdown": path, "figures": {name: path}}`` (+ ``summary`` when written).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    m = payload.get("machine", {})
    tag = f"{payload.get('suite', '')} suite, {m.get('date', '')}, {m.get('cores', '?')} cores"
    if m.get("gpu"):
        tag += f", {m['gpu']}"
    if plot_ratios(
        all_ratios(payload), out / "ratios.png", title=f"scforge / peer, same run ({tag})"
    ):
        figures["ratios"] = "ratios.png"
    if plot_scaling(
        scaling_rows(payload),
        out / "scaling.png",
        title=f"Sharding scaling, Geneformer V2 recipe ({tag})",
    ):
        figures["scaling"] = "scaling.png"
    md = out / "report.md"
    md.write_text(markdown(payload, figures))
    res: dict[str, Any] = {
        "markdown": str(md),
        "figures": {k: str(out / v) for k, v in figures.items()},
    }
    if summary_dir is not None:
        import os

        summary_dir = Path(summary_dir)
        summary_dir.mkdir(parents=True, exist_ok=True)
        rel = Path(os.path.relpath(out.resolve(), summary_dir.resolve()))
        figs = {k: (rel / v).as_posix() for k, v in figures.items()}
        text = markdown(payload, figs)
        if rel.as_posix() != ".":
            text = text.replace("Full figures: `", f"Full figures: `{rel.as_posix()}/")
        path = summary_dir / f"{m.get('date', 'undated')}_{machine_tag(m)}.md"
        path.write_text(text)
        res["summary"] = str(path)
    return res
