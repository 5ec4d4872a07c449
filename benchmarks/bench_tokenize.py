"""Tokenization kernels alone, on real cells already in memory, against their peers in one run.

- rank value (Geneformer V2 recipe): scforge's Numba kernel (1 thread and all threads) vs a
  per-cell NumPy implementation of Geneformer's algorithm (vectorised normalisation per chunk,
  then a Python loop with one ``np.argsort`` per cell, as Geneformer's ``tokenize_cell`` does).
- binned expression (scGPT recipe, 51 bins): scforge's kernel vs scGPT's own ``binning``
  function applied cell by cell to the nonzero counts (the same call scGPT's ``Preprocessor``
  makes per row). scGPT's function is imported from the ``scgpt`` wheel
  (``pip download --no-deps scgpt``) without running ``scgpt/__init__`` (which needs
  flash-attn, torchtext and more): a stub parent package provides the ``logger`` that
  ``scgpt.preprocess`` imports. If the wheel cannot be found or imported, a faithful NumPy port
  of it is timed instead; the result says which (``binning_peer``).

Both scforge kernels do more than their peer: gene-id mapping, collapsing of duplicate genes,
truncation and special tokens. Input: ``pbmc_2batch.h5ad`` (real 10x counts), rows read once.

Usage: ``python -m benchmarks.bench_tokenize [--cells 10668] [--out DIR] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import json
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import (
    geneformer_inputs,
    geneformer_per_cell,
    loadavg,
    machine,
    write_results,
)

REPO = Path(__file__).resolve().parents[1]
PBMC = REPO / ".." / "shared" / "data" / "pbmc_2batch.h5ad"
SCGPT_DIST = REPO / "benchmarks" / "data" / "scgpt_dist"


# ----------------------------------------------------------------------------- scGPT's binning
def scgpt_binning_port(row: np.ndarray, n_bins: int) -> np.ndarray:
    """Faithful NumPy port of ``scgpt.preprocess.binning`` (scGPT 0.2.4) for a NumPy row."""
    dtype = row.dtype
    if row.max() == 0:
        return np.zeros_like(row, dtype=dtype)

    def digitize(x: np.ndarray, bins: np.ndarray) -> np.ndarray:
        left = np.digitize(x, bins)
        right = np.digitize(x, bins, right=True)
        rands = np.random.rand(len(x))
        return np.ceil(rands * (right - left) + left).astype(np.int64)

    if row.min() <= 0:
        ids = row.nonzero()
        nz = row[ids]
        bins = np.quantile(nz, np.linspace(0, 1, n_bins - 1))
        out = np.zeros_like(row, dtype=np.int64)
        out[ids] = digitize(nz, bins)
    else:
        bins = np.quantile(row, np.linspace(0, 1, n_bins - 1))
        out = digitize(row, bins)
    return out.astype(dtype)


def load_scgpt_binning(dist_dir: Path = SCGPT_DIST) -> tuple[Callable | None, str]:
    """scGPT's own ``binning`` (from an installed scgpt or a downloaded wheel), or None + why."""
    with contextlib.suppress(Exception):
        mod = importlib.import_module("scgpt.preprocess")
        return mod.binning, f"scgpt {_dist_version('scgpt')} (installed)"
    wheels = sorted(glob.glob(str(dist_dir / "scgpt-*.whl")))
    if not wheels:
        return None, f"no scgpt wheel in {dist_dir} (pip download --no-deps scgpt -d {dist_dir})"
    wheel = wheels[-1]
    import logging

    # A stub parent package: ``scgpt/__init__`` imports the whole model stack; preprocess.py
    # needs only ``from scgpt import logger``. Its submodule is then a normal zip import.
    stub = types.ModuleType("scgpt")
    stub.__path__ = [f"{wheel}/scgpt"]
    stub.logger = logging.getLogger("scgpt")
    saved = sys.modules.get("scgpt")
    sys.modules["scgpt"] = stub
    try:
        mod = importlib.import_module("scgpt.preprocess")
    except Exception as exc:  # a missing optional dependency of preprocess.py
        if saved is None:
            sys.modules.pop("scgpt", None)
        return None, f"{Path(wheel).name} did not import: {type(exc).__name__}: {exc}"
    return mod.binning, f"{Path(wheel).name} (scgpt.preprocess.binning, imported from the wheel)"


def fetch_scgpt(dist_dir: Path = SCGPT_DIST) -> str:
    """``pip download --no-deps scgpt`` into ``dist_dir`` (PyPI only); returns pip's last line."""
    dist_dir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "scgpt", "-d", str(dist_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = (r.stdout + r.stderr).strip().splitlines()
    return lines[-1] if lines else f"pip exited {r.returncode}"


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


# ----------------------------------------------------------------------------- peers
def binning_per_cell(c, binning: Callable, n_bins: int = 51) -> int:
    """scGPT's binning called on each cell's nonzero counts (its Preprocessor's per-row call)."""
    ptr = c.indptr - c.indptr[0]
    n = 0
    for r in range(c.n_rows):
        row = np.asarray(c.data[ptr[r] : ptr[r + 1]], dtype=np.float32)
        if len(row):
            n += len(binning(row, n_bins))
    return n


# ----------------------------------------------------------------------------- timing
def _best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _prepared(path: Path, recipe: str):
    from scforge.config import ShardJobConfig, load_config
    from scforge.data.shard.prepare import Prepared

    cfg = load_config(ShardJobConfig, [REPO / f"configs/shard/{recipe}.yaml"])
    return Prepared([str(path)], cfg)


def _kernel_rates(prep, chunks, n: int, repeat: int) -> dict:
    from numba import get_num_threads, set_num_threads

    src, gmap = prep.sources[0], prep.maps[0]
    warm = src.read_rows(0, min(8, src.n_cells))  # load the compiled kernel first
    prep.tokenizer.tokenize(warm, gmap, np.arange(warm.n_rows))

    def run() -> None:
        for c in chunks:
            prep.tokenizer.tokenize(c, gmap, np.arange(c.start, c.start + c.n_rows))

    threads = get_num_threads()
    out = {"threads": threads}
    try:
        set_num_threads(1)
        out["cells_per_s_1thread"] = n / _best_of(run, repeat)
    finally:
        set_num_threads(threads)
    out["cells_per_s"] = n / _best_of(run, repeat)
    return out


def bench_rank_value(path: Path, n_cells: int, repeat: int, chunk: int = 4096) -> dict:
    prep = _prepared(path, "geneformer_v2")
    src = prep.sources[0]
    n = min(n_cells, src.n_cells)
    chunks = [src.read_rows(a, min(a + chunk, n)) for a in range(0, n, chunk)]
    collapse, factor, toks = geneformer_inputs(prep)
    t_np = _best_of(
        lambda: [geneformer_per_cell(c, src.n_genes, collapse, factor, toks) for c in chunks],
        max(1, repeat - 1),
    )
    k = _kernel_rates(prep, chunks, n, repeat)
    base = n / t_np
    return {
        "cells": n,
        "nnz_per_cell": float(sum(len(c.data) for c in chunks) / n),
        "peer": "per-cell NumPy Geneformer (argsort per cell)",
        "peer_cells_per_s": base,
        "scforge": k,
        "ratios": {
            "vs_per_cell_numpy": k["cells_per_s"] / base,
            "vs_per_cell_numpy_1thread": k["cells_per_s_1thread"] / base,
        },
    }


def bench_binning(path: Path, n_cells: int, repeat: int, chunk: int = 4096) -> dict:
    prep = _prepared(path, "scgpt_binned")
    src = prep.sources[0]
    n = min(n_cells, src.n_cells)
    chunks = [src.read_rows(a, min(a + chunk, n)) for a in range(0, n, chunk)]
    scgpt_fn, how = load_scgpt_binning()
    peers = {}
    np.random.seed(0)
    reps = max(1, repeat - 1)
    port_t = _best_of(lambda: [binning_per_cell(c, scgpt_binning_port) for c in chunks], reps)
    peers["numpy_port"] = n / port_t
    if scgpt_fn is not None:
        t = _best_of(lambda: [binning_per_cell(c, scgpt_fn) for c in chunks], reps)
        peers["scgpt"] = n / t
    k = _kernel_rates(prep, chunks, n, repeat)
    main_peer = peers.get("scgpt", peers["numpy_port"])
    return {
        "cells": n,
        "binning_peer": "scgpt" if scgpt_fn is not None else "numpy_port",
        "scgpt_source": how,
        "peer": "scGPT binning per cell" if scgpt_fn is not None else "NumPy port of scGPT binning",
        "peer_cells_per_s": main_peer,
        "peers_cells_per_s": peers,
        "scforge": k,
        "ratios": {
            "vs_scgpt_binning": k["cells_per_s"] / main_peer,
            "vs_scgpt_binning_1thread": k["cells_per_s_1thread"] / main_peer,
        },
    }


def markdown(payload: dict) -> str:
    m = payload["machine"]
    rv, bn = payload["rank_value"], payload["binning"]
    lines = [
        f"# Tokenization kernels ({m['date']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB RAM, GPU: {m['gpu']}; "
        f"git {m['git']}; 1-min load average {payload['load_start']} at start, "
        f"{payload['load_end']} at end.",
        "",
        f"Input: {payload['input']} (real cells, already in memory); best of "
        f"{payload['args']['repeat']} repeats.",
        "",
        "| tokenizer | implementation | cells/s | scforge / peer |",
        "|---|---|---:|---:|",
        f"| rank value (Geneformer V2) | {rv['peer']} | {rv['peer_cells_per_s']:,.0f} | 1.00x |",
        f"| | scforge kernel, 1 thread | {rv['scforge']['cells_per_s_1thread']:,.0f} | "
        f"{rv['ratios']['vs_per_cell_numpy_1thread']:.1f}x |",
        f"| | scforge kernel, {rv['scforge']['threads']} threads | "
        f"{rv['scforge']['cells_per_s']:,.0f} | **{rv['ratios']['vs_per_cell_numpy']:.1f}x** |",
    ]
    main_peer = bn["binning_peer"]
    label = {
        "scgpt": "scGPT's own `binning` per cell",
        "numpy_port": "NumPy port of scGPT `binning` per cell",
    }
    lines.append(
        f"| binned (scGPT, 51 bins) | {label[main_peer]} | {bn['peer_cells_per_s']:,.0f} | 1.00x |"
    )
    for name, rate in bn["peers_cells_per_s"].items():
        if name != main_peer:  # the port, timed as a check on the peer's speed
            lines.append(
                f"| | {label[name]} (not the peer) | {rate:,.0f} | "
                f"runs at {rate / bn['peer_cells_per_s']:.2f}x the peer |"
            )
    lines += [
        f"| | scforge kernel, 1 thread | {bn['scforge']['cells_per_s_1thread']:,.0f} | "
        f"{bn['ratios']['vs_scgpt_binning_1thread']:.1f}x |",
        f"| | scforge kernel, {bn['scforge']['threads']} threads | "
        f"{bn['scforge']['cells_per_s']:,.0f} | **{bn['ratios']['vs_scgpt_binning']:.1f}x** |",
        "",
        f"scGPT binning peer: {bn['scgpt_source']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--h5ad", type=Path, default=PBMC)
    ap.add_argument("--cells", type=int, default=10_668)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="4,096 cells, 2 repeats")
    ap.add_argument(
        "--fetch-scgpt",
        action="store_true",
        help="pip download --no-deps scgpt first if no wheel is there (PyPI)",
    )
    ap.add_argument("--out", type=Path, default=None, help="results directory")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.cells, args.repeat = min(args.cells, 4096), 2
    if not args.h5ad.is_file():
        print(f"bench_tokenize: error: input not found: {args.h5ad}", file=sys.stderr)
        return 2
    if args.fetch_scgpt and not glob.glob(str(SCGPT_DIST / "scgpt-*.whl")):
        print(f"[tokenize] {fetch_scgpt()}", file=sys.stderr)
    load0 = loadavg()
    print("[tokenize] rank value ...", file=sys.stderr)
    rv = bench_rank_value(args.h5ad, args.cells, args.repeat)
    print("[tokenize] binning ...", file=sys.stderr)
    bn = bench_binning(args.h5ad, args.cells, args.repeat)
    payload = {
        "stage": "tokenize",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "input": f"{args.h5ad.name}, first {rv['cells']:,} cells",
        "load_start": load0,
        "load_end": loadavg(),
        "rank_value": rv,
        "binning": bn,
    }
    payload["versions"] = payload["machine"]["packages"]
    md = markdown(payload)
    print(md)
    if not args.no_write:
        js, mdp = write_results("tokenize", payload, md, args.out)
        print(json.dumps({"json": str(js), "markdown": str(mdp)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
