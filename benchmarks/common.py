"""Shared benchmark helpers: machine description, peak-RSS sampling, result files."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import psutil

RESULTS = Path(__file__).resolve().parent / "results"

#: Packages whose versions every result file records (read from metadata: nothing is imported).
VERSION_PACKAGES = (
    "numpy",
    "scipy",
    "numba",
    "h5py",
    "anndata",
    "zstandard",
    "torch",
    "scforge",
    "pandas",
    "webdataset",
    "zarr",
    "tensorstore",
    "tiledbsoma",
    "deepspeed",
    "transformers",
    "scib-metrics",
    "jax",
    "scanpy",
    "scdataset",
    "annbatch",
    "scgpt",
    "matplotlib",
)


def loadavg() -> float | None:
    """The 1-minute load average (None where the OS does not report it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def package_versions(names: tuple[str, ...] = VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (missing ones left out), without importing them."""
    from importlib import metadata

    out = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _git(*args: str) -> str:
    """Output of a git command in this checkout ("" when git or the repository is missing)."""
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        return ""


def machine() -> dict:
    """CPU, cores, RAM, GPU (if any), load average, Python and package versions, git revision.

    ``versions`` keeps the imported modules' ``__version__`` (as before); ``packages`` adds the
    installed versions of :data:`VERSION_PACKAGES` from package metadata.
    """
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "numba", "h5py", "anndata", "zstandard", "torch", "scforge"):
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anndata deprecates __version__
            versions[mod] = __import__(mod).__version__  # a missing package is not reported
    rev = _git("rev-parse", "--short", "HEAD")
    if rev and _git("status", "--porcelain", "--untracked-files=no"):
        rev += "+dirty"
    gpu = None
    gpu_count = 0
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
            gpu_count = torch.cuda.device_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "gpu_count": gpu_count,
        "host": platform.node().split(".")[0] or "machine",
        "platform": platform.platform(),
        "load_avg_1m": loadavg(),
        "python": sys.version.split()[0],
        "versions": versions,
        "packages": package_versions(),
        "git": rev,
        "date": _dt.date.today().isoformat(),
    }


class PeakRSS:
    """Samples the summed RSS of a process and its children every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Runs ``cmd``; returns wall seconds, peak RSS (GiB) of its process tree, stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    with PeakRSS(proc.pid) as rss:
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
    return {"wall_s": wall, "peak_rss_gib": rss.peak / 2**30, "stdout": out, "stderr": err}


def write_results(
    stem: str, payload: dict, markdown: str, out_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """Writes ``<stem>_<date>_<cores>core.json`` and ``.md`` into ``out_dir`` (default results/).

    Returns the two paths. The suite (``python -m benchmarks``) passes each stage an ``--out``
    directory and reads the single JSON it finds there.
    """
    root = Path(out_dir) if out_dir is not None else RESULTS
    root.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count()
    base = root / f"{stem}_{payload['machine']['date']}_{cores}core"
    js = base.with_suffix(".json")
    md = base.with_suffix(".md")
    js.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    md.write_text(markdown)
    return js, md


def geneformer_inputs(prep) -> tuple:
    """(collapse, factor, toks) for :func:`geneformer_per_cell` from a prepared sharding job.

    ``collapse`` sums input columns that map to one token (Geneformer V2's ID collapsing),
    ``factor`` is ``10_000 / median`` per token and ``toks`` the token ids of those columns.
    """
    import numpy as np
    import scipy.sparse as sp

    src, gmap = prep.sources[0], prep.maps[0]
    med = prep.vocab.median_array()
    cols = np.flatnonzero(gmap.col_token >= 0)
    toks, inv = np.unique(gmap.col_token[cols], return_inverse=True)
    collapse = sp.csr_matrix((np.ones(len(cols)), (cols, inv)), shape=(src.n_genes, len(toks)))
    return collapse, 10_000.0 / med[toks], toks


def geneformer_per_cell(c, n_genes: int, collapse, factor, toks, max_genes: int = 4094) -> int:
    """Geneformer's algorithm, one cell at a time: normalise, argsort descending, cls/eos.

    The peer baseline of the tokenize and shard benchmarks; returns the tokens produced.
    """
    import numpy as np
    import scipy.sparse as sp

    x = sp.csr_matrix((c.data, c.indices, c.indptr - c.indptr[0]), shape=(c.n_rows, n_genes))
    n_counts = np.asarray(x.sum(axis=1, dtype=np.float64)).ravel()
    xv = (x.astype(np.float64) @ collapse).tocsr()
    n_tok = 0
    for r in range(xv.shape[0]):
        lo, hi = xv.indptr[r], xv.indptr[r + 1]
        v = xv.data[lo:hi] / n_counts[r] * factor[xv.indices[lo:hi]]
        order = np.argsort(-v)[:max_genes]
        seq = np.concatenate(([2], toks[xv.indices[lo:hi][order]], [3]))
        n_tok += len(seq)
    return n_tok
