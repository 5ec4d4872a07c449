"""Loader benchmark: scforge's ShardStream vs on-the-fly tokenization from backed AnnData.

Every pipeline delivers the same thing: batches of 64 cells as torch tensors, Geneformer V2
rank-value tokens padded to the longest cell (at most 2,048 tokens) and BERT-masked (15%,
80/10/10), i.e. what a Geneformer pretraining step consumes. Measured in one run:

- scforge: ``ShardStream`` + ``StatefulLoader`` with 0, 1 and 2 worker processes, from shards
  of the same cells (sharding time reported separately; it is paid once per corpus).
- (a) AnnData backed mode (``anndata.read_h5ad(path, backed="r")``): random batches of rows,
  each cell tokenized by a per-cell NumPy Geneformer tokenizer (normalise by n_counts * 1e4 /
  gene median, argsort descending), padded and masked; a map-style dataset in a DataLoader
  with 0 and 2 workers. This is what most users do today.
- (b) scDataset (``scdataset`` on PyPI) over the same backed AnnData with the same per-batch
  tokenization, if it can be imported (``--scdataset-path DIR`` adds a ``pip install --target``
  directory; annbatch needs Python >= 3.12 and is reported as not installable here).

The consumer only counts cells (a GPU trainer would copy the tensors to the device), so the
numbers are delivery rates. ``--corpus PATH`` (or ``--synthetic N`` through
``scforge.testing.write_synthetic_h5ad``) adds a large-corpus scforge run with 2 workers.

Besides wall-clock rates, every run reports the CPU time each delivered cell cost in the
consuming process and in its workers (sampled over the process tree): on a shared machine the
rates move with the load, the CPU per cell much less, and ``cores / CPU per cell`` bounds what
the same code reaches on idle cores (reported as the CPU-bound ceiling).

Usage: ``python -m benchmarks.bench_loader [--quick] [--out DIR] [--synthetic 1000000]``
(``--quick``: pbmc only, one trial, about 2 minutes; results go to ``--out``, default
``benchmarks/results``, as ``loader_<date>[_quick].json/.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import scipy.sparse as sp
import torch

from benchmarks.common import RESULTS, machine

REPO = Path(__file__).resolve().parents[1]
PBMC = REPO / ".." / "shared" / "data" / "pbmc_2batch.h5ad"
DEPS = REPO / "benchmarks" / "data" / "pydeps"
"""Throwaway ``pip install --no-deps --target`` directory for baseline loaders (scdataset)."""
BIG = REPO / "benchmarks" / "data" / "synthetic_1000000x20000_nnz1500_seed0.h5ad"
"""The headline 1M-cell corpus (``scforge.testing.corpus``), used by default when present."""
BATCH, MAX_LEN = 64, 2048


# ----------------------------------------------------------------------------- baselines
class GeneformerPerCell:
    """Geneformer's tokenizer loop: per cell normalise, argsort descending, <cls> ... <eos>."""

    def __init__(self, var_ids: list[str]) -> None:
        from scforge.data.vocab import GeneVocab

        vocab = GeneVocab.from_geneformer("v2")
        gmap, _ = vocab.map_genes(var_ids)
        cols = np.flatnonzero(gmap.col_token >= 0)
        # Geneformer sums the counts of input columns that collapse onto one token.
        self.toks, inv = np.unique(gmap.col_token[cols], return_inverse=True)
        self.collapse = sp.csr_matrix((np.ones(len(cols)), (cols, inv)),
                                      shape=(len(var_ids), len(self.toks)))
        self.factor = 10_000.0 / vocab.median_array()[self.toks]
        self.vocab_size = vocab.size

    def __call__(self, x: sp.csr_matrix) -> list[np.ndarray]:
        n_counts = np.asarray(x.sum(axis=1, dtype=np.float64)).ravel()
        xv = (x.astype(np.float64) @ self.collapse).tocsr()
        out = []
        for r in range(xv.shape[0]):
            lo, hi = xv.indptr[r], xv.indptr[r + 1]
            v = xv.data[lo:hi] / n_counts[r] * self.factor[xv.indices[lo:hi]]
            order = np.argsort(-v)[: MAX_LEN - 2]
            out.append(np.concatenate(([2], self.toks[xv.indices[lo:hi][order]], [3])))
        return out


def pad_and_mask(seqs: list[np.ndarray], rng: np.random.Generator, vocab_size: int) -> dict:
    """HF-style collator in NumPy: pad to the longest, mask 15% of genes 80/10/10."""
    lens = np.array([len(s) for s in seqs])
    ids = np.zeros((len(seqs), int(lens.max())), dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = s
    attn = np.arange(ids.shape[1])[None, :] < lens[:, None]
    sel = (rng.random(ids.shape) < 0.15) & (ids > 3)
    labels = np.where(sel, ids, -100)
    u = rng.random(ids.shape)
    ids[sel & (u < 0.8)] = 1
    rnd = sel & (u >= 0.8) & (u < 0.9)
    ids[rnd] = rng.integers(4, vocab_size, int(rnd.sum()))
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attn),
            "labels": torch.from_numpy(labels)}


class LazyBackedX:
    """Backed ``adata.X``, opened lazily in each process (h5py handles do not survive pickling)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._x: Any = None
        import anndata

        a = anndata.read_h5ad(path, backed="r")
        self.n = a.n_obs
        self.var_ids = list(a.var_names)
        a.file.close()

    def _open(self) -> Any:
        if self._x is None:
            import anndata

            self._x = anndata.read_h5ad(self.path, backed="r").X
        return self._x

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: Any) -> sp.csr_matrix:
        return self._open()[np.sort(np.asarray(idx))]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_x": None}


class TokenizeBatch:
    """CSR rows -> tokenized, padded, masked batch (a picklable batch_transform)."""

    def __init__(self, var_ids: list[str]) -> None:
        self.tok = GeneformerPerCell(var_ids)
        self.rng = np.random.default_rng(0)

    def __call__(self, x: sp.csr_matrix) -> dict:
        return pad_and_mask(self.tok(x), self.rng, self.tok.vocab_size)


class BackedBatches(torch.utils.data.Dataset):
    """Map-style: item i = random batch i of backed rows, tokenized, padded, masked."""

    def __init__(self, x: LazyBackedX, n_batches: int, seed: int = 0) -> None:
        self.x = x
        self.tok = GeneformerPerCell(x.var_ids)
        perm = np.random.default_rng(seed).permutation(len(x))
        self.batches = [perm[i * BATCH : (i + 1) * BATCH] for i in range(n_batches)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        idx = np.sort(self.batches[i])
        return pad_and_mask(self.tok(self.x[idx]), np.random.default_rng(i), self.tok.vocab_size)


# ----------------------------------------------------------------------------- measuring
class TreeCPU:
    """CPU seconds (user + system) used by this process's descendants while it runs.

    DataLoader workers (forkserver children) are not reaped by this process, so
    ``RUSAGE_CHILDREN`` misses them; they are sampled with psutil every ``interval`` seconds
    instead (a worker's last < ``interval`` s before it exits is missed: a slight undercount).
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.me = psutil.Process()
        self.interval = interval
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[int, float]:
        out = {}
        for p in self.me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.last.update(self._sample())

    def __enter__(self) -> TreeCPU:
        self.base = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.last.update(self._sample())
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(max(0.0, v - self.base.get(k, 0.0)) for k, v in self.last.items())


def measure(batches: Iterable[Any], size: Callable[[Any], int], limit: int | None = None,
            tokens: Callable[[Any], int] | None = None) -> dict:
    """Cells/s overall and after the first batch (startup excluded), and CPU per cell of this
    process and of its workers (load-independent: what the cells cost, not how long they took
    on a shared machine)."""
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    n = n_first = n_tok = 0
    t_first = None
    with TreeCPU() as tree:
        for b in batches:
            n += size(b)
            if tokens is not None:
                n_tok += tokens(b)
            if t_first is None:
                t_first, n_first = time.perf_counter(), n
            if limit is not None and n >= limit:
                break
        t1 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    steady = (n - n_first) / (t1 - t_first) if t_first is not None and t1 > t_first else 0.0
    out = {"cells": n, "seconds": round(t1 - t0, 3), "cells_per_s": round(n / (t1 - t0)),
           "steady_cells_per_s": round(steady), "first_batch_s": round((t_first or t1) - t0, 3),
           "main_cpu_us_per_cell": round(cpu / max(n, 1) * 1e6, 2),
           "worker_cpu_us_per_cell": round(tree.seconds / max(n, 1) * 1e6, 2)}
    out["total_cpu_us_per_cell"] = round(out["main_cpu_us_per_cell"]
                                         + out["worker_cpu_us_per_cell"], 2)
    if tokens is not None:
        out["tokens_per_cell"] = round(n_tok / max(n, 1), 1)
    return out


def run_scforge(shards: Path, workers: int, epochs: int, limit: int | None = None) -> dict:
    from scforge.data.stream import ShardStream, StatefulLoader, StreamConfig

    cfg = StreamConfig(batch_size=BATCH, max_len=MAX_LEN)
    stream = ShardStream(shards, cfg)
    loader = StatefulLoader(stream, num_workers=workers)

    def all_epochs() -> Iterable[Any]:
        for _ in range(epochs):
            yield from loader

    res = measure(all_epochs(), lambda b: b.size, limit=limit,
                  tokens=lambda b: int(b.attention_mask.shape[1]) * b.size)
    res.update(workers=workers, epochs=epochs, pad_fraction=round(stream.metrics["pad_fraction"], 4))
    return res


def run_backed(path: Path, workers: int, n_batches: int) -> dict:
    ds = BackedBatches(LazyBackedX(str(path)), n_batches)
    dl = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                     multiprocessing_context="forkserver" if workers else None)
    res = measure(dl, lambda b: int(b["input_ids"].shape[0]))
    res.update(workers=workers)
    return res


def run_scdataset(path: Path, workers: int, n_batches: int) -> dict:
    from scdataset import scDataset
    from scdataset.strategy import BlockShuffling

    x = LazyBackedX(str(path))
    ds = scDataset(x, BlockShuffling(block_size=8), batch_size=BATCH, fetch_factor=16,
                   batch_transform=TokenizeBatch(x.var_ids), seed=0)
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                     multiprocessing_context="forkserver" if workers else None)
    res = measure(dl, lambda b: int(b["input_ids"].shape[0]), limit=n_batches * BATCH)
    res.update(workers=workers)
    return res


def shard(inputs: list[Path], out: Path, cells_per_shard: int) -> dict:
    from scforge.config import ShardJobConfig, load_config
    from scforge.data.shard import ShardJob

    cfg = load_config(ShardJobConfig, [REPO / "configs/shard/geneformer_v2.yaml"],
                      [f"shard.cells_per_shard={cells_per_shard}", "shard.workers=2"])
    return ShardJob([str(p) for p in inputs], out, cfg, progress=False).run()


def _try_scdataset(path: Path, workers: int, n_batches: int) -> dict:
    try:
        return run_scdataset(path, workers, n_batches)
    except ImportError as e:
        return {"workers": workers, "error": f"scdataset not importable ({e}); install it into "
                "a throwaway dir: pip install --no-deps --target DIR scdataset, then pass "
                "--scdataset-path DIR"}


def _annbatch_status() -> str:
    try:
        import annbatch  # noqa: F401

        return "importable (not benchmarked: no loader adapter written yet)"
    except ImportError:
        return (f"not installable here: every annbatch release requires Python >= 3.12 "
                f"(this venv: {sys.version.split()[0]})")


def _row(name: str, r: dict) -> str:
    if "error" in r:
        return f"| {name} | {r['workers']} | | | | | | | | {r['error']} |"
    return (f"| {name} | {r['workers']} | {r['cells']:,} | {r['cells_per_s']:,} | "
            f"{r['steady_cells_per_s']:,} | {r['first_batch_s']} | {r['main_cpu_us_per_cell']} | "
            f"{r['worker_cpu_us_per_cell']} | {r['total_cpu_us_per_cell']} | "
            f"{r.get('tokens_per_cell', '')} |")


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [f"# Loader benchmark ({m['date']}{', quick' if payload.get('quick') else ''})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB RAM, GPU: {m['gpu']}; "
             f"git {m['git']}; 1-min load average {payload['load_average']:.2f} at start, "
             f"{payload['load_average_end']:.2f} at end (other sessions share the cores); "
             f"{json.dumps(m['versions'])}", "",
             f"Batches of {BATCH} cells, Geneformer V2 tokens padded to the longest cell "
             f"(<= {MAX_LEN}), BERT-masked 15% (80/10/10), torch tensors. Input: "
             f"{payload['input']}. Steady = after the first batch (worker start-up excluded). "
             "CPU columns: microseconds of CPU per delivered cell in the consuming process "
             "(main) and in its DataLoader workers: what a cell costs, whatever else runs on "
             "the machine.", "",
             "| pipeline | workers | cells | cells/s | steady cells/s | first batch (s) | "
             "main CPU us/cell | worker CPU us/cell | total CPU us/cell | tokens/cell |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, runs in (("scforge ShardStream", payload["scforge"]),
                       ("(a) AnnData backed + per-cell NumPy", payload["backed"]),
                       ("(b) scDataset + per-cell NumPy", payload["scdataset"]),
                       ("scforge, 1M synthetic corpus", payload.get("corpus_runs", []))):
        lines += [_row(name, r) for r in runs]
    lines += ["", f"- sharding the input once: {payload['sharding']['cells_per_s']:,} cells/s "
              f"({payload['sharding']['seconds']} s)",
              f"- pad fraction with length bucketing: {payload['scforge'][0]['pad_fraction']}",
              f"- annbatch: {payload['annbatch']}"]
    if "corpus" in payload:
        lines.append(f"- large corpus: {payload['corpus']} ({payload.get('corpus_note', '')})")
    for k, v in payload["ratios"].items():
        lines.append(f"- {k}: **{v}x**")
    for k, v in payload.get("cpu_bound", {}).items():
        lines.append(f"- {k}: {v:,} cells/s")
    lines += ["", "Targets in the issue: >= 100k cells/s with 2 workers; >= 10x (a); ahead of (b)."]
    if "ab" in payload:
        lines += _ab_markdown(payload["ab"])
    return "\n".join(lines) + "\n"


def _start_forkserver(shards: Path) -> None:
    """Starts the worker forkserver (imports torch, numba, the loader) before anything is
    measured: it is paid once per training process, not per epoch or per cell."""
    from scforge.data.stream import ShardStream, StatefulLoader, StreamConfig

    loader = StatefulLoader(ShardStream(shards, StreamConfig(batch_size=BATCH)), num_workers=1)
    next(iter(loader))


def _corpus_shards(corpus: Path, tmp: Path, payload: dict) -> Path:
    """Shards of a large corpus: the directory itself, or cached next to its h5ad."""
    if (corpus / "manifest.json").is_file():
        return corpus
    cache = corpus.parent / "loader_shards" / f"{corpus.stem}_gf_v2_cps50000"
    if not (cache / "manifest.json").is_file():
        t0 = time.perf_counter()
        shard([corpus], cache, cells_per_shard=50_000)
        payload["corpus_sharding_s"] = round(time.perf_counter() - t0, 1)
    return cache


def _ab_one(code: Path, shards: Path, workers: int, epochs: int, limit: int | None) -> dict:
    """``run_scforge`` of the source tree ``code`` in a fresh interpreter (its own forkserver)."""
    # _warm loads the loader's kernels first, as the headline runs' earlier trials do.
    script = ("import json; from pathlib import Path; import scforge.data.stream._warm; "
              "from benchmarks.bench_loader import run_scforge, _start_forkserver; "
              f"s = Path({str(shards)!r}); _start_forkserver(s); "
              f"print('@@' + json.dumps(run_scforge(s, {workers}, {epochs}, {limit!r})))")
    load0 = os.getloadavg()[0]
    res = subprocess.run([sys.executable, "-c", script], cwd=code, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(code)}, timeout=1200,
                         check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("@@")]
    if res.returncode != 0 or not lines:
        return {"workers": workers, "error": f"exit {res.returncode}: {res.stderr[-300:]}"}
    out = json.loads(lines[-1][2:])
    out.update(load_start=round(load0, 2), load_end=round(os.getloadavg()[0], 2))
    return out


def run_ab(before: Path, inputs: list[tuple[str, Path, int, int | None]], rounds: int) -> dict:
    """Interleaved A/B: the source tree ``before`` (another revision, e.g. ``git archive REV |
    tar -x -C DIR``) against this one, on the same shards, alternating run by run."""
    runs: list[dict] = []
    for rnd in range(rounds):
        for name, shards, epochs, limit in inputs:
            for workers in (0, 2) if limit is None else (2,):
                for label, code in (("before", before), ("after", REPO)):
                    r = _ab_one(code, shards, workers, epochs, limit)
                    r.update(round=rnd + 1, code=label, input=name)
                    runs.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
    return {"before": str(before), "rounds": rounds, "runs": runs}


def _ab_markdown(ab: dict) -> list[str]:
    lines = ["", f"## Before/after, same run (interleaved, fresh interpreter per run, {ab['rounds']}"
             f" rounds; before = {ab.get('before_rev', ab['before'])})", "",
             "| input | workers | code | round | cells/s | steady cells/s | main CPU us/cell | "
             "worker CPU us/cell | total CPU us/cell | 1-min load start-end |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in ab["runs"]:
        if "error" in r:
            lines.append(f"| {r['input']} | {r['workers']} | {r['code']} | {r['round']} | "
                         f"{r['error']} | | | | | |")
            continue
        lines.append(f"| {r['input']} | {r['workers']} | {r['code']} | {r['round']} | "
                     f"{r['cells_per_s']:,} | {r['steady_cells_per_s']:,} | "
                     f"{r['main_cpu_us_per_cell']} | {r['worker_cpu_us_per_cell']} | "
                     f"{r['total_cpu_us_per_cell']} | {r['load_start']}-{r['load_end']} |")
    lines += ["", "| input | workers | after/before steady cells/s (per round) | "
              "before/after total CPU per cell (per round) |", "|---|---:|---|---|"]
    keys = sorted({(r["input"], r["workers"]) for r in ab["runs"]})
    for inp, w in keys:
        speed, cpu = [], []
        for rnd in range(1, ab["rounds"] + 1):
            pair = {r["code"]: r for r in ab["runs"] if r["input"] == inp and r["workers"] == w
                    and r["round"] == rnd and "error" not in r}
            if len(pair) == 2:
                b, a = pair["before"], pair["after"]
                speed.append(f"{a['steady_cells_per_s'] / max(b['steady_cells_per_s'], 1):.2f}x")
                cpu.append(f"{b['total_cpu_us_per_cell'] / max(a['total_cpu_us_per_cell'], 1e-9):.2f}x")
        lines.append(f"| {inp} | {w} | {', '.join(speed)} | {', '.join(cpu)} |")
    return lines


def _measure_all(payload: dict, args: argparse.Namespace, out: Path,
                 best: Callable[[Callable[[], dict]], dict], corpus: Path | None,
                 big: Path | None) -> None:
    """The headline measurements: scforge 0/1/2 workers, baselines (a) and (b), the corpus."""
    _start_forkserver(out)
    payload["scforge"] = [best(lambda w=w: run_scforge(out, w, args.epochs)) for w in (0, 1, 2)]
    payload["backed"] = [best(lambda w=w: run_backed(args.h5ad, w, args.baseline_batches))
                         for w in (0, 2)]
    payload["scdataset"] = [best(lambda w=w: _try_scdataset(args.h5ad, w,
                                                            args.baseline_batches))
                            for w in (0, 2)]
    payload["annbatch"] = _annbatch_status()
    if corpus is not None and big is not None:
        payload["corpus"] = str(corpus.relative_to(REPO) if corpus.is_relative_to(REPO)
                                else corpus)
        payload["corpus_note"] = (f"first {args.corpus_cells:,} cells of an epoch per run, "
                                  "shards of 50,000 cells")
        payload["corpus_runs"] = [best(lambda w=w: run_scforge(big, w, 1, args.corpus_cells))
                                  for w in (0, 1, 2)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--h5ad", type=Path, default=PBMC)
    ap.add_argument("--repeat", type=int, default=8,
                    help="shard the input this many times over (steady state needs > 1 epoch "
                         "of 10k cells per worker)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--baseline-batches", type=int, default=60)
    ap.add_argument("--scdataset-path", type=Path, default=DEPS if DEPS.is_dir() else None,
                    help="a `pip install --no-deps --target DIR scdataset` directory "
                         f"(default {DEPS.relative_to(REPO)} when present)")
    ap.add_argument("--corpus", type=Path, default=None,
                    help="large h5ad to shard and stream (or a shard directory)")
    ap.add_argument("--synthetic", type=int, default=1_000_000 if BIG.is_file() else 0,
                    help="use the synthetic corpus of this many cells under benchmarks/data "
                         "(scforge.testing.corpus; made if missing; default 1000000 when "
                         f"{BIG.relative_to(REPO)} exists, else 0; 0 = none)")
    ap.add_argument("--corpus-cells", type=int, default=400_000,
                    help="cells measured per large-corpus run (the first ones of an epoch)")
    ap.add_argument("--trials", type=int, default=2,
                    help="repeat each measurement; the best trial is reported (shared machines)")
    ap.add_argument("--quick", action="store_true",
                    help="about 2 minutes: pbmc only, 1 trial, fewer epochs, small baselines")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the .json/.md go")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--ab-against", type=Path, default=None,
                    help="source tree of another revision (git archive REV | tar -x -C DIR): "
                         "adds an interleaved before/after section (pbmc 0/2 workers and, with "
                         "a corpus, 2 workers on it)")
    ap.add_argument("--ab-rev", default=None, help="label of that revision (e.g. a git hash)")
    ap.add_argument("--ab-rounds", type=int, default=2)
    ap.add_argument("--ab-only", action="store_true",
                    help="run only the before/after section (needs --ab-against)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.epochs, args.trials = min(args.repeat, 2), 1, 1
        args.baseline_batches = min(args.baseline_batches, 15)
        args.corpus, args.synthetic = None, 0
    if args.scdataset_path is not None:
        sys.path.insert(0, str(args.scdataset_path))
    payload: dict[str, Any] = {"machine": machine(), "load_average": os.getloadavg()[0],
                               "quick": args.quick,
                               "config": {"batch_size": BATCH, "max_len": MAX_LEN,
                                          "masking": "bert 0.15 80/10/10", "epochs": args.epochs,
                                          "trials": args.trials,
                                          "baseline_batches": args.baseline_batches}}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shards"
        if not args.ab_only:
            t0 = time.perf_counter()
            job = shard([args.h5ad] * args.repeat, out, cells_per_shard=2000)
            secs = time.perf_counter() - t0
            payload["input"] = (f"{args.h5ad.name} x {args.repeat} = {job['cells']:,} real "
                                f"cells; best of {args.trials} trials")
            payload["sharding"] = {"seconds": round(secs, 1),
                                   "cells_per_s": round(job["cells"] / secs)}

        def best(fn: Callable[[], dict]) -> dict:
            runs = [fn() for _ in range(args.trials)]
            top = max(runs, key=lambda r: r.get("steady_cells_per_s", 0))
            return {**top, "trials_steady": [r.get("steady_cells_per_s") for r in runs]}

        corpus = args.corpus
        if corpus is None and args.synthetic:
            from scforge.testing.corpus import ensure_corpus

            corpus = Path(ensure_corpus(REPO / "benchmarks" / "data", args.synthetic)["h5ad"])
        big = _corpus_shards(corpus, Path(tmp), payload) if corpus is not None else None
        if not args.ab_only:
            _measure_all(payload, args, out, best, corpus, big)
        if args.ab_against is not None:
            ab_shards = Path(tmp) / "ab_shards"
            n_ab = shard([args.h5ad] * 4, ab_shards, cells_per_shard=2000)["cells"]
            inputs: list[tuple[str, Path, int, int | None]] = [
                (f"{args.h5ad.stem} x 4 ({n_ab:,} cells, 2 epochs)", ab_shards, 2, None)]
            if corpus is not None:
                inputs.append((f"1M synthetic (first {args.corpus_cells:,} cells)", big, 1,
                               args.corpus_cells))
            payload["ab"] = run_ab(args.ab_against.resolve(), inputs, args.ab_rounds)
            payload["ab"]["before_rev"] = args.ab_rev or str(args.ab_against)
    payload["load_average_end"] = os.getloadavg()[0]
    if args.ab_only:
        return _write_ab(payload, args)
    payload["ratios"], payload["cpu_bound"] = _ratios(payload)
    print(json.dumps(payload, indent=1, default=str))
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"loader_{dt.date.today().isoformat()}{'_quick' if args.quick else ''}"
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
        stem.with_suffix(".md").write_text(markdown(payload))
        print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return payload


def _write_ab(payload: dict, args: argparse.Namespace) -> dict:
    print(json.dumps(payload, indent=1, default=str))
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"loader_{dt.date.today().isoformat()}_ab"
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
        stem.with_suffix(".md").write_text("\n".join(_ab_markdown(payload["ab"])) + "\n")
        print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return payload


def _ratios(payload: dict) -> tuple[dict[str, float], dict[str, int]]:
    """Steady-rate ratios of scforge with 2 workers against the baselines (same run), and the
    CPU-bound rate each scforge configuration would reach on idle cores (cores / CPU per cell)."""
    two = max(r["steady_cells_per_s"] for r in payload["scforge"] if r["workers"] == 2)
    ratios = {"scforge 2 workers / (a) best": round(two / max(
        r["steady_cells_per_s"] for r in payload["backed"]), 1)}
    scd = [r["steady_cells_per_s"] for r in payload["scdataset"] if "error" not in r]
    if scd:
        ratios["scforge 2 workers / (b) best"] = round(two / max(scd), 1)
    cores = payload["machine"]["cores"] or 1
    bound: dict[str, int] = {}
    for label, runs in (("pbmc", payload["scforge"]), ("1M", payload.get("corpus_runs", []))):
        for r in runs:
            w, main, total = (r["workers"], r.get("main_cpu_us_per_cell"),
                              r.get("total_cpu_us_per_cell"))
            if not w or not total or not main or not r.get("worker_cpu_us_per_cell"):
                continue
            # Limited by all cores, by the workers (one core each) and by the main process.
            cap = min(cores * 1e6 / total, w * 1e6 / r["worker_cpu_us_per_cell"], 1e6 / main)
            bound[f"CPU-bound ceiling on {cores} idle cores, {label}, {w} workers"] = round(cap)
    return ratios, bound


if __name__ == "__main__":
    main()
