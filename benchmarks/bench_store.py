"""Zarr benchmarks: tensorstore vs zarr-python, on the two places scforge reads Zarr.

1. **AnnData zarr input** (``scforge.data.sources.anndata_zarr``): row chunks of ``X`` (CSR
   ``data``/``indices`` slices, ``source.chunk_cells`` rows at a time, in order, as the sharder
   reads them) from ``pbmc_2batch`` written by ``anndata.write_zarr`` as zarr v2 and v3.
   Decides ``DEFAULT_BACKEND`` there.
2. **Token store random access** (``scforge.data.store``): random batches of 256 cell indices
   (uniform over the whole store, as a global shuffle draws them) from the ragged and the dense
   layout, ``TokenStore.get_batch`` (per-cell arrays) and ``get_padded`` (one padded array).
   zarr-python reads a quarter as many batches (it is over 10x slower; rates are per cell).

Every number compares backends in the same run (ratios), with the 1-minute load average at start
and end, because the machine is shared. Files are read from the page cache (each measurement is
preceded by an untimed warm-up pass): this measures the readers' CPU cost, not the disk.

Usage: ``python -m benchmarks.bench_store [--quick] [--out DIR] [--cells N]``
(run under ``flock /tmp/scforge-bench.lock``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import loadavg, machine, write_results

REPO = Path(__file__).resolve().parents[1]
PBMC = REPO / ".." / "shared" / "data" / "pbmc_2batch.h5ad"
BATCH = 256
BACKENDS = ("tensorstore", "zarr")


def _prepare_inputs(work: Path, n_cells: int) -> dict[str, Path]:
    """pbmc_2batch (its first ``n_cells`` cells) as AnnData zarr v2 and v3."""
    import anndata as ad

    backed = ad.read_h5ad(PBMC, backed="r")
    a = backed[: min(n_cells, backed.n_obs)].to_memory()  # reads only those rows
    backed.file.close()
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fmt in (2, 3):
            ad.settings.zarr_write_format = fmt
            out[f"v{fmt}"] = work / f"pbmc_v{fmt}.zarr"
            a.write_zarr(out[f"v{fmt}"])
        ad.settings.zarr_write_format = 2
    out["h5ad"] = work / "pbmc.h5ad"
    a.write_h5ad(out["h5ad"])
    return out


def _time_x_reads(path: Path, backend: str, chunk: int, trials: int) -> dict:
    from scforge.data.sources.anndata_zarr import AnnDataZarrSource

    src = AnnDataZarrSource(str(path), backend=backend)
    nnz = 0

    def one_pass() -> int:
        n = 0
        for a in range(0, src.n_cells, chunk):
            n += len(src.read_rows(a, min(a + chunk, src.n_cells)).data)
        return n

    nnz = one_pass()  # warm-up: page cache, handles
    times = []
    for _ in range(trials):
        t0 = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "backend": backend,
        "cells": src.n_cells,
        "nnz": nnz,
        "chunk_cells": chunk,
        "seconds": [round(t, 4) for t in times],
        "cells_per_s": round(src.n_cells / best, 1),
        "nnz_per_s": round(nnz / best, 1),
    }


def _make_stores(work: Path, h5ad: Path) -> dict[str, Path]:
    from scforge.config import ShardJobConfig, load_config
    from scforge.data.shard import ShardJob

    out = {}
    for layout in ("ragged", "dense"):
        cfg = load_config(
            ShardJobConfig,
            [REPO / "configs/shard/geneformer_v2.yaml"],
            [
                "tokenizer.max_length=2048",
                "shard.format=zarr",
                f"store.layout={layout}",
                "shard.cells_per_shard=4096",
            ],
        )
        out[layout] = work / f"store_{layout}"
        ShardJob([str(h5ad)], out[layout], cfg, progress=False).run()
    return out


def _dir_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 2)


def _time_random_batches(path: Path, backend: str, method: str, n_batches: int, trials: int):
    from scforge.data.store import TokenStore

    store = TokenStore(path, backend=backend)
    n = len(store)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, n, BATCH) for _ in range(n_batches)]
    read = store.get_batch if method == "get_batch" else store.get_padded
    for b in batches[: max(2, n_batches // 4)]:  # warm-up: opens every unit, fills the cache
        read(b)
    for u in range(len(store.entries)):
        store._unit(u)
    times = []
    for _ in range(trials):
        t0 = time.perf_counter()
        tokens = 0
        for b in batches:
            got = read(b)
            tokens += (
                sum(len(c["input_ids"]) for c in got)
                if method == "get_batch"
                else int(got["lengths"].sum())
            )
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "backend": backend,
        "method": method,
        "batches": n_batches,
        "batch_size": BATCH,
        "cells_in_store": n,
        "seconds": [round(t, 4) for t in times],
        "cells_per_s": round(n_batches * BATCH / best, 1),
        "tokens_per_batch": round(tokens / n_batches, 1),
    }


def _markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [
        "# Zarr reads: tensorstore vs zarr-python",
        "",
        f"{m['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}, zarr "
        f"{m['packages'].get('zarr')}, tensorstore {m['packages'].get('tensorstore')}, git "
        f"{m['git']}. Load average (1 min) {payload['load_avg_start']} at start, "
        f"{payload['load_avg_end']} at end (shared machine: compare ratios within this run). "
        f"{'Quick run. ' if payload['quick'] else ''}Best of {payload['trials']} trials after a "
        "warm-up pass (page cache warm).",
        "",
        f"## AnnData zarr input: row chunks of X ({payload['x_reads'][0]['cells']:,} pbmc cells, "
        f"{payload['x_reads'][0]['nnz']:,} nonzeros, {payload['x_reads'][0]['chunk_cells']} rows "
        "per chunk, in order)",
        "",
        "| zarr format | backend | cells/s | nonzeros/s | tensorstore / zarr |",
        "|---|---|---:|---:|---:|",
    ]
    for fmt in ("v2", "v3"):
        rows = {r["backend"]: r for r in payload["x_reads"] if r["format"] == fmt}
        ratio = rows["tensorstore"]["cells_per_s"] / rows["zarr"]["cells_per_s"]
        for b in BACKENDS:
            r = rows[b]
            lines.append(
                f"| {fmt} | {b} | {r['cells_per_s']:,.0f} | {r['nnz_per_s']:,.0f} | "
                + (f"{ratio:.2f}x |" if b == "tensorstore" else "|")
            )
    lines += [
        "",
        f"Default backend chosen from these numbers: **{payload['x_default']}**.",
        "",
        f"## Token store: random batches of {BATCH} cells (Geneformer V2 tokens, max 2,048; "
        f"{payload['store_reads'][0]['cells_in_store']:,} cells)",
        "",
        "| layout | size MB | method | backend | cells/s | tensorstore / zarr |",
        "|---|---:|---|---|---:|---:|",
    ]
    for layout in ("ragged", "dense"):
        for method in ("get_batch", "get_padded"):
            rows = {
                r["backend"]: r
                for r in payload["store_reads"]
                if r["layout"] == layout and r["method"] == method
            }
            ratio = rows["tensorstore"]["cells_per_s"] / rows["zarr"]["cells_per_s"]
            for b in BACKENDS:
                lines.append(
                    f"| {layout} | {payload['store_mb'][layout]} | {method} | {b} | "
                    f"{rows[b]['cells_per_s']:,.0f} | "
                    + (f"{ratio:.2f}x |" if b == "tensorstore" else "|")
                )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cells and batches (<= ~1 min)")
    ap.add_argument("--out", type=Path, default=None, help="results directory")
    ap.add_argument("--cells", type=int, default=0, help="pbmc cells used (0 = all / quick 3000)")
    ap.add_argument("--trials", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    args = ap.parse_args(argv)
    n_cells = args.cells or (3000 if args.quick else 10**9)
    trials = args.trials or (2 if args.quick else 5)
    n_batches = 12 if args.quick else 60
    load_start = loadavg()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        inputs = _prepare_inputs(work, n_cells)
        stores = _make_stores(work, inputs["h5ad"])
        prep_s = time.perf_counter() - t0
        x_reads = []
        for fmt in ("v2", "v3"):
            for backend in BACKENDS:
                r = _time_x_reads(inputs[fmt], backend, 4096, trials)
                x_reads.append({"format": fmt, **r})
                print(f"X {fmt} {backend}: {r['cells_per_s']:,.0f} cells/s", file=sys.stderr)
        store_reads = []
        for layout, path in stores.items():
            for method in ("get_batch", "get_padded"):
                for backend in BACKENDS:
                    # zarr-python is >10x slower here: a quarter of the batches keeps the run short
                    nb = n_batches if backend == "tensorstore" else max(4, n_batches // 4)
                    r = _time_random_batches(path, backend, method, nb, trials)
                    store_reads.append({"layout": layout, **r})
                    print(
                        f"store {layout} {method} {backend}: {r['cells_per_s']:,.0f} cells/s",
                        file=sys.stderr,
                    )
        store_mb = {k: _dir_mb(p) for k, p in stores.items()}
    ts_wins = sum(
        a["cells_per_s"] > b["cells_per_s"]
        for a, b in zip(x_reads[0::2], x_reads[1::2], strict=True)
    )
    payload = {
        "benchmark": "store",
        "quick": args.quick,
        "trials": trials,
        "prepare_seconds": round(prep_s, 1),
        "load_avg_start": load_start,
        "load_avg_end": loadavg(),
        "x_reads": x_reads,
        "x_default": "tensorstore" if ts_wins == 2 else ("zarr" if ts_wins == 0 else "mixed"),
        "store_reads": store_reads,
        "store_mb": store_mb,
        "machine": machine(),
    }
    payload["versions"] = payload["machine"]["packages"]
    js, md = write_results("store", payload, _markdown(payload), args.out)
    print(_markdown(payload))
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
