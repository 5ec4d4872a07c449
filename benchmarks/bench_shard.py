"""Sharding benchmark: scforge-shard end to end vs a per-cell NumPy tokenizer vs the I/O floor.

All three read the same file through the same row-chunked h5py path, in the same run:

- I/O floor: read ``X`` once (data + indices of every row chunk), nothing else.
- per-cell NumPy: Geneformer's approach (vectorised normalisation per chunk, then a Python loop
  with ``np.argsort`` per cell), tokenizing only (no writing), on the first ``--baseline-cells``.
- scforge: the ``scforge-shard`` CLI in a subprocess (read + tokenize + compress + write), with
  1 and 2 workers; peak RSS of the whole process tree is sampled.

Datasets: the real ``pbmc_2batch.h5ad`` and synthetic corpora (``scforge.testing.corpus``, seed
0, kept in ``benchmarks/data/``) at each of ``--sizes``, which gives the scaling figures
(cells/s and peak RSS vs corpus size). ``--soma-sizes`` also shards those corpora from a local
TileDB-SOMA experiment (1 worker).

Usage: ``python -m benchmarks.bench_shard [--sizes 10k,100k,1m] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from benchmarks.common import (
    geneformer_inputs,
    geneformer_per_cell,
    loadavg,
    machine,
    run_measured,
    write_results,
)

REPO = Path(__file__).resolve().parents[1]
PBMC = REPO / ".." / "shared" / "data" / "pbmc_2batch.h5ad"
DATA = REPO / "benchmarks" / "data"


def io_floor(path: Path, chunk: int = 4096) -> dict:
    from scforge.data.sources import open_source

    src = open_source(str(path))
    t0 = time.perf_counter()
    nnz = 0
    for a in range(0, src.n_cells, chunk):
        c = src.read_rows(a, min(a + chunk, src.n_cells))
        nnz += len(c.data)
    dt = time.perf_counter() - t0
    return {
        "cells": src.n_cells,
        "seconds": dt,
        "cells_per_s": src.n_cells / dt,
        "nnz_per_cell": nnz / src.n_cells,
    }


def per_cell_numpy(path: Path, n_cells: int, chunk: int = 4096) -> dict:
    """Geneformer-style tokenizer: per chunk normalise, per cell argsort (what its loop does)."""
    from scforge.data.sources import open_source
    from scforge.data.vocab import GeneVocab

    src = open_source(str(path))
    vocab = GeneVocab.from_geneformer("v2")
    gmap, _ = vocab.map_genes(src.gene_ids())
    med = vocab.median_array()
    cols = np.flatnonzero(gmap.col_token >= 0)
    # Collapse matrix: input column -> unique token (sums duplicates, as Geneformer does).
    toks, inv = np.unique(gmap.col_token[cols], return_inverse=True)
    collapse = sp.csr_matrix((np.ones(len(cols)), (cols, inv)), shape=(src.n_genes, len(toks)))
    factor = 10_000.0 / med[toks]
    n = min(n_cells, src.n_cells)
    t0 = time.perf_counter()
    n_tok = 0
    for a in range(0, n, chunk):
        c = src.read_rows(a, min(a + chunk, n))
        n_tok += geneformer_per_cell(c, src.n_genes, collapse, factor, toks)
    dt = time.perf_counter() - t0
    return {"cells": n, "seconds": dt, "cells_per_s": n / dt, "tokens": n_tok}


def tokenize_only(path: Path, n_cells: int, chunk: int = 4096) -> dict:
    """Tokenization alone on chunks already in memory: scforge's kernel vs per-cell NumPy."""
    from scforge.config import ShardJobConfig, load_config
    from scforge.data.shard.writer import _Prepared

    cfg = load_config(ShardJobConfig, [REPO / "configs/shard/geneformer_v2.yaml"])
    prep = _Prepared([str(path)], cfg)
    src, gmap = prep.sources[0], prep.maps[0]
    n = min(n_cells, src.n_cells)
    chunks = [src.read_rows(a, min(a + chunk, n)) for a in range(0, n, chunk)]
    collapse, factor, toks = geneformer_inputs(prep)
    t0 = time.perf_counter()
    for c in chunks:
        geneformer_per_cell(c, src.n_genes, collapse, factor, toks)
    t_np = time.perf_counter() - t0
    warm = src.read_rows(0, min(8, n))  # load the compiled kernel from Numba's cache first
    prep.tokenizer.tokenize(warm, gmap, np.arange(warm.n_rows))
    t0 = time.perf_counter()
    for c in chunks:
        prep.tokenizer.tokenize(c, gmap, np.arange(c.start, c.start + c.n_rows))
    t_k = time.perf_counter() - t0
    return {
        "cells": n,
        "numpy_cells_per_s": n / t_np,
        "kernel_cells_per_s": n / t_k,
        "ratio": t_np / t_k,
    }


def scforge_shard(path: Path, workers: int, tmp: Path) -> dict:
    out = tmp / f"shards_w{workers}_{path.suffix.lstrip('.')}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "scforge.data.shard.cli",
        str(path),
        "--out",
        str(out),
        "--config",
        str(REPO / "configs/shard/geneformer_v2.yaml"),
        "--workers",
        str(workers),
        "--no-progress",
    ]
    m = run_measured(cmd)
    line = m["stdout"].strip().splitlines()[-1]
    inner = float(re.search(r"in ([\d.]+) s", line).group(1))
    man = json.loads((out / "manifest.json").read_text())
    cells = man["totals"]["cells"]
    res = {
        "workers": workers,
        "cells": cells,
        "wall_s": m["wall_s"],
        "job_s": inner,
        "cells_per_s_wall": cells / m["wall_s"],
        "cells_per_s_job": cells / inner,
        "peak_rss_gib": m["peak_rss_gib"],
        "bytes": man["totals"]["bytes"],
        "shards": man["totals"]["shards"],
        "summary": line,
    }
    shutil.rmtree(out, ignore_errors=True)
    return res


def ensure_synthetic(n_cells: int, n_genes: int, nnz: int, *, soma: bool = False) -> dict:
    """The synthetic corpus of ``n_cells`` under benchmarks/data/ (made on first use)."""
    from scforge.testing.corpus import ensure_corpus

    t0 = time.perf_counter()
    info = ensure_corpus(DATA, n_cells, n_genes=n_genes, mean_nnz=nnz, seed=0, soma=soma)
    if not info["reused"]:
        print(f"generated {info['h5ad']} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return info


def bench_dataset(
    name: str,
    path: Path,
    baseline_cells: int,
    workers: list[int],
    tmp: Path,
    soma: str | None = None,
) -> dict:
    print(f"[{name}] I/O floor ...", file=sys.stderr)
    floor = io_floor(path)
    print(f"[{name}] per-cell NumPy on {baseline_cells} cells ...", file=sys.stderr)
    base = per_cell_numpy(path, baseline_cells)
    print(f"[{name}] tokenization only, in memory ...", file=sys.stderr)
    tok_only = tokenize_only(path, baseline_cells)
    runs = []
    for w in workers:
        print(f"[{name}] scforge-shard --workers {w} ...", file=sys.stderr)
        runs.append(scforge_shard(path, w, tmp))
    soma_runs = []
    if soma:
        print(f"[{name}] scforge-shard from SOMA, 1 worker ...", file=sys.stderr)
        soma_runs.append(scforge_shard(Path(soma), 1, tmp))
    best = max(runs, key=lambda r: r["cells_per_s_job"])
    return {
        "name": name,
        "path": str(path),
        "io_floor": floor,
        "per_cell_numpy": base,
        "tokenize_only": tok_only,
        "scforge": runs,
        "scforge_soma": soma_runs,
        # Job-only throughput excludes interpreter start-up and imports, as the floor and
        # baseline (measured in this process) do; wall-clock ratios are reported next to them.
        "ratios": {
            "vs_per_cell_numpy": best["cells_per_s_job"] / base["cells_per_s"],
            "io_floor_over_scforge": floor["cells_per_s"] / best["cells_per_s_job"],
            "vs_per_cell_numpy_wall": best["cells_per_s_wall"] / base["cells_per_s"],
            "io_floor_over_scforge_wall": floor["cells_per_s"] / best["cells_per_s_wall"],
        },
    }


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [
        f"# Sharding benchmark ({m['date']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB RAM, GPU: {m['gpu']}; "
        f"git {m['git']}; {json.dumps(m['versions'])}"
        + (
            f"; 1-min load average {payload['load_start']} at start, {payload['load_end']} at end"
            if "load_start" in payload
            else ""
        ),
        "",
        "Geneformer V2 recipe (`configs/shard/geneformer_v2.yaml`): read + rank-value "
        "tokenize + zstd + tar write. Wall time includes process start-up.",
        "",
    ]
    for d in payload["datasets"]:
        f, b = d["io_floor"], d["per_cell_numpy"]
        lines += [
            f"## {d['name']} ({f['cells']:,} cells, {f['nnz_per_cell']:.0f} nonzeros/cell)",
            "",
            "| pipeline | cells/s | peak RSS (GiB) | note |",
            "|---|---:|---:|---|",
            f"| I/O floor (read X once) | {f['cells_per_s']:,.0f} | | same chunked reader |",
            f"| per-cell NumPy tokenizer (no writing) | {b['cells_per_s']:,.0f} | | "
            f"first {b['cells']:,} cells |",
        ]
        for r in d["scforge"] + d.get("scforge_soma", []):
            what = "from local SOMA, " if r in d.get("scforge_soma", []) else ""
            lines.append(
                f"| scforge-shard, {what}{r['workers']} worker(s) | {r['cells_per_s_wall']:,.0f} "
                f"| {r['peak_rss_gib']:.2f} | job only: {r['cells_per_s_job']:,.0f} cells/s; "
                f"{r['shards']} shards, {r['bytes'] / 1e6:,.0f} MB |"
            )
        t = d["tokenize_only"]
        lines += [
            "",
            f"Tokenization alone on {t['cells']:,} cells already in memory: scforge kernel "
            f"{t['kernel_cells_per_s']:,.0f} cells/s vs per-cell NumPy "
            f"{t['numpy_cells_per_s']:,.0f} cells/s = **{t['ratio']:.1f}x**.",
        ]
        q = d["ratios"]
        lines += [
            "",
            f"- scforge / per-cell NumPy: **{q['vs_per_cell_numpy']:.1f}x** job-only, "
            f"{q['vs_per_cell_numpy_wall']:.1f}x wall (target >= 4x)",
            f"- I/O floor / scforge: **{q['io_floor_over_scforge']:.2f}x** job-only, "
            f"{q['io_floor_over_scforge_wall']:.2f}x wall (target <= 2x)",
            "",
        ]
    if payload.get("scaling"):
        lines += [
            "## Scaling (synthetic corpora)",
            "",
            "| cells | workers | cells/s (job) | cells/s (wall) | peak RSS (GiB) |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in payload["scaling"]:
            lines.append(
                f"| {r['cells']:,} | {r['workers']} | {r['cells_per_s_job']:,.0f} | "
                f"{r['cells_per_s_wall']:,.0f} | {r['peak_rss_gib']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def scaling(datasets: list[dict]) -> list[dict]:
    """Per synthetic corpus size: the best scforge run (cells/s) and its peak RSS."""
    rows = []
    for d in datasets:
        if not d["name"].startswith("synthetic_"):
            continue
        for r in d["scforge"]:
            rows.append(
                {
                    k: r[k]
                    for k in (
                        "cells",
                        "workers",
                        "cells_per_s_job",
                        "cells_per_s_wall",
                        "peak_rss_gib",
                    )
                }
            )
    return sorted(rows, key=lambda r: (r["cells"], r["workers"]))


def _sizes(text: str) -> list[int]:
    from scforge.testing.corpus import parse_cells

    try:
        return [parse_cells(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes",
        type=_sizes,
        default=None,
        help="synthetic corpus sizes, comma-separated (default 10k,100k,1m)",
    )
    ap.add_argument(
        "--cells",
        type=int,
        default=None,
        help="one synthetic corpus of this size (the former interface)",
    )
    ap.add_argument(
        "--soma-sizes",
        type=_sizes,
        default=[],
        help="sizes also sharded from a local SOMA experiment (e.g. 100k)",
    )
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--nnz", type=int, default=1500)
    ap.add_argument("--baseline-cells", type=int, default=20_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-pbmc", action="store_true")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="sizes 10k,100k and 10,000 baseline cells (unless given)",
    )
    ap.add_argument("--out", type=Path, default=None, help="results directory")
    args = ap.parse_args(argv)
    if args.sizes is None:
        args.sizes = (
            [args.cells]
            if args.cells
            else ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
        )
    if args.quick:
        args.baseline_cells = min(args.baseline_cells, 10_000)
    load0 = loadavg()
    datasets = []
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        if not args.skip_pbmc:
            datasets.append(bench_dataset("pbmc_2batch", PBMC, 10_668, args.workers, Path(tmp)))
        for n in [] if args.skip_synthetic else args.sizes:
            info = ensure_synthetic(n, args.genes, args.nnz, soma=n in args.soma_sizes)
            datasets.append(
                bench_dataset(
                    f"synthetic_{n}",
                    Path(info["h5ad"]),
                    args.baseline_cells,
                    args.workers,
                    Path(tmp),
                    soma=info["soma"],
                )
            )
    m = machine()
    payload = {
        "stage": "shard",
        "machine": m,
        "versions": m["packages"],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_start": load0,
        "load_end": loadavg(),
        "datasets": datasets,
        "scaling": scaling(datasets),
    }
    md = markdown(payload)
    js, mdp = write_results("shard", payload, md, args.out)
    print(md)
    print(json.dumps({"json": str(js), "markdown": str(mdp)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
