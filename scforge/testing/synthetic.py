"""Realistic synthetic raw-count single-cell data, in memory or streamed to ``.h5ad``.

The generative model (all randomness keyed on ``seed``):

* **Genes.** Relative abundance ``base_g`` is log-normal (heavy tailed: a few hundred genes carry
  most UMIs, most genes are rarely detected). Each gene has a negative-binomial dispersion
  ``phi_g`` that falls with abundance (noisy, ~1 for rare genes, ~0.1-0.2 for the highest).
* **Cell types.** Each type perturbs a random ~5% of genes by a normal log-fold change and
  up-regulates a handful of marker genes strongly; it also shifts library size a little. Type
  frequencies are unbalanced (Dirichlet draw), so ``cell_type`` is learnable from expression.
* **Batches.** Each batch multiplies every gene's mean by a mild log-normal factor and shifts
  library size a little.
* **Cells.** Library size (expected total UMIs) is log-normal around a value calibrated so that
  the expected number of detected genes per cell equals ``mean_nnz`` (typically 1,000-3,000 for
  the default 1,500). The count of gene ``g`` in cell ``c`` is
  ``NB(mean = L_c * w_{type,batch,g}, dispersion = phi_g)``, i.e. gamma-Poisson.

The counts follow that negative binomial exactly (up to 2**-32-level rounding in the sampling
tables), without touching every (cell, gene) pair. Genes with a high mean in a cell's group are
drawn one by one (CDF inversion; gamma-Poisson above a mean of 40). For the long tail of rarely
expressed genes, the sampler uses that a gamma-Poisson variable is a compound Poisson sum,
``X = Y_1 + ... + Y_K`` with ``K ~ Poisson(r * log1p(mu / r))`` clusters of logarithmic size
``Y_i ~ Log(mu / (mu + r))`` (``r = 1 / phi``): cluster candidates are drawn at rate ``mu`` from a
per-(type, batch) alias table and thinned to rate ``r * log1p(mu / r)``, so a cell costs time in
proportion to its UMIs in tail genes, not to ``n_genes``. About 40 us of one core per cell at the
defaults (1,500 detected genes, ~3,000 UMIs).

Determinism: the global parameters depend only on (seed, n_genes, n_cell_types, n_batches,
mean_nnz, params); every cell's metadata and counts come from a counter-based generator keyed on
(seed, global cell index). Rows are therefore identical whatever the chunking or the number of
threads, and the first rows of a 1M-cell file equal ``synthetic_counts`` for a few cells.
"""

from __future__ import annotations

import csv
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from numba import get_num_threads, njit, prange, set_num_threads
from scipy.optimize import brentq

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

__all__ = [
    "SyntheticParams",
    "default_gene_ids",
    "gene_symbols_for",
    "synthetic_anndata",
    "synthetic_counts",
    "write_synthetic_h5ad",
]

# --------------------------------------------------------------------------------------------
# Gene identifiers
# --------------------------------------------------------------------------------------------

_REPO_ROOT = Path(__file__).resolve().parents[2]
_SHARED_DATA = _REPO_ROOT.parent / "shared" / "data"
_TOKEN_DICT_RESOURCE = "geneformer_v2_token_dictionary.json"
_TOKEN_DICT_SHARED = _SHARED_DATA / "geneformer" / "v2" / "token_dictionary.json"
_SYMBOLS_RESOURCE = "gencode_v44_id2name.json.gz"
_SYMBOLS_SHARED = _SHARED_DATA / "genes" / "gencode_v44_id2name.csv"


def _read_text(path: Any) -> str:
    """Text of a (possibly gzip-compressed) file or importlib Traversable."""
    import gzip

    raw = path.read_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


def _token_dictionary_text() -> tuple[str, str] | None:
    """Returns (json text, where it came from) of the Geneformer V2 token dictionary, or None."""
    for name in (_TOKEN_DICT_RESOURCE, _TOKEN_DICT_RESOURCE + ".gz"):
        try:
            res = resources.files("scforge").joinpath("resources", name)
            if res.is_file():
                return _read_text(res), f"scforge/resources/{name}"
        except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
            pass
    if _TOKEN_DICT_SHARED.is_file():
        return _read_text(_TOKEN_DICT_SHARED), str(_TOKEN_DICT_SHARED)
    return None


@lru_cache(maxsize=1)
def _reference_gene_ids() -> tuple[tuple[str, ...], str | None]:
    """Real Ensembl IDs of the Geneformer V2 vocabulary in token order (special tokens skipped)."""
    import json

    found = _token_dictionary_text()
    if found is None:
        return (), None
    text, source = found
    vocab: dict[str, int] = json.loads(text)
    ids = tuple(k for k, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if not k.startswith("<"))
    return ids, source


def default_gene_ids(n_genes: int) -> list[str]:
    """The default gene IDs of synthetic data: real Ensembl IDs, padded with synthetic ones.

    The first ``min(n_genes, 20_271)`` IDs are the Geneformer V2 token dictionary's genes in token
    order, special tokens skipped. The dictionary is the package resource
    ``scforge/resources/geneformer_v2_token_dictionary.json`` (or ``.json.gz``), else
    ``../shared/data/geneformer/v2/token_dictionary.json`` next to the repository. Further genes
    get synthetic IDs ``ENSG9`` + 10 digits (15 characters like real ones, never real). If no
    dictionary is found, all IDs are synthetic and a warning is issued.

    Args:
        n_genes: number of IDs wanted (>= 1).

    Returns:
        ``n_genes`` unique ID strings.

    Raises:
        ValueError: if ``n_genes`` is not a positive integer.
    """
    n_genes = _check_int("n_genes", n_genes, 1)
    ref, source = _reference_gene_ids()
    if source is None:
        warnings.warn(
            "Geneformer V2 token dictionary not found; using synthetic ENSG9... gene ids only",
            RuntimeWarning,
            stacklevel=2,
        )
    ids = list(ref[:n_genes])
    ids.extend(f"ENSG9{i:010d}" for i in range(n_genes - len(ids)))
    return ids


@lru_cache(maxsize=1)
def _symbol_map() -> dict[str, str]:
    """GENCODE v44 Ensembl ID -> gene symbol (bundled gzip JSON, else the shared CSV; may be {})."""
    import json

    try:
        res = resources.files("scforge").joinpath("resources", _SYMBOLS_RESOURCE)
        if res.is_file():
            table = json.loads(_read_text(res))
            if isinstance(table, dict):
                return {str(k): str(v) for k, v in table.items() if v}
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, ValueError):
        pass
    if not _SYMBOLS_SHARED.is_file():
        return {}
    with open(_SYMBOLS_SHARED, newline="", encoding="utf-8") as fh:
        return {row[0]: row[1] for row in csv.reader(fh) if len(row) >= 2 and row[1]}


def gene_symbols_for(gene_ids: Sequence[str]) -> list[str]:
    """Gene symbols for Ensembl IDs (GENCODE v44 names where known, else ``'SYM_' + id``).

    Args:
        gene_ids: Ensembl gene IDs.

    Returns:
        One symbol per ID (symbols need not be unique, as in real data).
    """
    table = _symbol_map()
    return [table.get(g, "SYM_" + g) for g in gene_ids]


# --------------------------------------------------------------------------------------------
# Model parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticParams:
    """Shape parameters of the generative model (defaults give 10x-like data).

    Attributes:
        gene_log_sd: s.d. of log relative gene abundance (heavy tail of expression).
        lib_log_sd: s.d. of per-cell log library size (spread of UMIs and detected genes).
        disp_floor: NB dispersion of the most abundant genes.
        disp_scale: extra dispersion of rare genes (``phi = floor + scale / sqrt(1 + cp10k)``).
        disp_log_sd: gene-to-gene log-normal noise on the dispersion.
        type_dirichlet: concentration of the Dirichlet draw of cell-type frequencies (lower is
            more unbalanced).
        de_frac: fraction of genes each cell type perturbs.
        de_log_sd: s.d. of those perturbations' natural-log fold changes.
        n_markers: marker genes per cell type, up-regulated by about ``exp(marker_lfc)``.
        marker_lfc: mean natural-log fold change of marker genes.
        type_lib_log_sd: s.d. of the per-type log library-size factor.
        batch_log_sd: s.d. of the per-(batch, gene) log multiplicative effect.
        batch_lib_log_sd: s.d. of the per-batch log library-size factor.
    """

    gene_log_sd: float = 2.0
    lib_log_sd: float = 0.3
    disp_floor: float = 0.1
    disp_scale: float = 1.0
    disp_log_sd: float = 0.3
    type_dirichlet: float = 3.0
    de_frac: float = 0.05
    de_log_sd: float = 1.0
    n_markers: int = 40
    marker_lfc: float = 2.5
    type_lib_log_sd: float = 0.2
    batch_log_sd: float = 0.2
    batch_lib_log_sd: float = 0.15

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name == "n_markers":
                _check_int(name, value, 0)
            elif not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"SyntheticParams.{name} must be a finite number >= 0, got {value!r}")
        if self.type_dirichlet <= 0:
            raise ValueError(f"SyntheticParams.type_dirichlet must be > 0, got {self.type_dirichlet!r}")


# Genes whose typical per-cell mean exceeds this are drawn gene by gene; rarer genes through the
# thinned alias sampler (whose cost grows with the mean). Only affects speed, not the output law.
_HEAD_MEAN = 3.5
# Gauss-Hermite nodes used to integrate the library-size distribution during calibration.
_N_QUAD = 12
# Cells per parallel work block, and the block buffer's slack over the expected nonzeros.
_BLOCK_CELLS = 128
_BLOCK_SLACK = 1.3
_TAIL_DTYPE = np.dtype(
    [("thr", "<u4"), ("alias", "<i4"), ("x_own", "<f4"), ("x_alias", "<f4")], align=True
)
# Tail candidates whose cluster size is not settled by the one-comparison fast path are queued
# (branch-free) and finished in a second loop; this is the queue's length.
_SLOW_QUEUE = 1024
_MAX_LIB = 1e8
_H5_CHUNK = 1 << 18  # elements per HDF5 chunk of X/data and X/indices
_WRITE_PIECE = 16 * _H5_CHUNK  # elements per h5py write call (whole chunks)
_H5_CACHE = 4 << 20


@dataclass(frozen=True)
class _Model:
    """Everything the per-cell kernels need (arrays are C-contiguous)."""

    n_genes: int
    n_types: int
    n_batches: int
    seed: int
    mean_nnz: float
    lib0: float
    type_cdf: np.ndarray  # float64 [T]
    batch_cdf: np.ndarray  # float64 [B]
    type_lib: np.ndarray  # float64 [T]
    batch_lib: np.ndarray  # float64 [B]
    lib_log_sd: float
    # w[grp, g]: relative mean of gene g in group grp = type * n_batches + batch (rows sum to 1);
    # a cell's NB mean is lib0 * size * w, its NB size parameter r[g] = 1 / phi[g].
    head_ptr: np.ndarray  # int64 [G + 1]; group grp's head genes are head_*[ptr[grp]:ptr[grp+1]]
    head_gene: np.ndarray  # int32 [sum H]; ascending within a group
    head_x: np.ndarray  # float64 [sum H]; w / r
    head_r: np.ndarray  # float64 [sum H]
    tail_mass: np.ndarray  # float64 [G]; sum of tail genes' w
    # tail_tab[grp, i]: alias-table slot over the group's tail genes' w (the group's head genes
    # have weight 0), holding everything a candidate needs in one 16-byte record: keep gene i
    # if 32 random bits are < thr (= its alias probability * 2**32), else take gene alias;
    # x_* = w / r of either.
    tail_tab: np.ndarray  # structured [G, n_genes] (thr u4, alias i4, x_own f4, x_alias f4)
    group_nnz: np.ndarray  # float64 [G]; expected detected genes of a cell of the group
    key_meta: int
    key_counts: int


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_common(n_cells: int, n_genes: int, seed: int, mean_nnz: float, n_cell_types: int,
                  n_batches: int) -> tuple[int, int, int, float, int, int]:
    n_cells = _check_int("n_cells", n_cells, 1)
    n_genes = _check_int("n_genes", n_genes, 1)
    seed = _check_int("seed", seed, 0)
    if seed >= 2**63:
        raise ValueError(f"seed must be < 2**63, got {seed!r}")
    n_cell_types = _check_int("n_cell_types", n_cell_types, 1)
    n_batches = _check_int("n_batches", n_batches, 1)
    if isinstance(mean_nnz, bool) or not isinstance(mean_nnz, (int, float, np.integer, np.floating)):
        raise ValueError(f"mean_nnz must be a number, got {mean_nnz!r}")
    mean_nnz = float(mean_nnz)
    if not (math.isfinite(mean_nnz) and mean_nnz > 0):
        raise ValueError(f"mean_nnz must be > 0, got {mean_nnz!r}")
    if mean_nnz > 0.5 * n_genes:
        raise ValueError(
            f"mean_nnz={mean_nnz:g} is too large for n_genes={n_genes}: at most half the genes "
            f"can be detected per cell on average (mean_nnz <= {0.5 * n_genes:g})"
        )
    table_bytes = n_cell_types * n_batches * n_genes * 48  # tables + build temporaries
    if table_bytes > 4 * 2**30:
        raise ValueError(
            f"n_cell_types * n_batches * n_genes = {n_cell_types}*{n_batches}*{n_genes} needs "
            f"{table_bytes / 2**30:.1f} GiB of sampling tables; use fewer types or batches"
        )
    return n_cells, n_genes, seed, mean_nnz, n_cell_types, n_batches


def _expected_nnz(lib0: float, w: np.ndarray, r: np.ndarray, group_p: np.ndarray,
                  group_lib: np.ndarray, z: np.ndarray, zw: np.ndarray, lib_log_sd: float,
                  per_group: bool = False) -> Any:
    """E[detected genes per cell] for library scale ``lib0`` (NB zero probability, integrated).

    With ``per_group``, returns the float64 array of each group's expectation instead.
    """
    out = np.empty(w.shape[0])
    lib_nodes = np.exp(lib_log_sd * z)
    for grp in range(w.shape[0]):
        mu = (lib0 * group_lib[grp] * lib_nodes)[:, None] * w[grp][None, :]
        p_zero = np.exp(-r[None, :] * np.log1p(mu / r[None, :]))
        out[grp] = float(zw @ (w.shape[1] - p_zero.sum(axis=1)))
    return out if per_group else float(group_p @ out)


@njit(cache=True, nogil=True)
def _build_alias(w, prob, alias):
    """Vose alias table for sampling index i with probability w[i] / sum(w)."""
    n = w.shape[0]
    scaled = w * (n / w.sum())
    small = np.empty(n, np.int64)
    large = np.empty(n, np.int64)
    ns = 0
    nl = 0
    for i in range(n):
        if scaled[i] < 1.0:
            small[ns] = i
            ns += 1
        else:
            large[nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        nl -= 1
        lg = large[nl]
        prob[s] = scaled[s]
        alias[s] = lg
        scaled[lg] = (scaled[lg] + scaled[s]) - 1.0
        if scaled[lg] < 1.0:
            small[ns] = lg
            ns += 1
        else:
            large[nl] = lg
            nl += 1
    while nl > 0:
        nl -= 1
        prob[large[nl]] = 1.0
        alias[large[nl]] = large[nl]
    while ns > 0:
        ns -= 1
        prob[small[ns]] = 1.0
        alias[small[ns]] = small[ns]


@lru_cache(maxsize=8)
def _build_model(n_genes: int, seed: int, mean_nnz: float, n_types: int, n_batches: int,
                 params: SyntheticParams, head_mean: float = _HEAD_MEAN) -> _Model:
    """Draws the global parameters and calibrates the library scale to ``mean_nnz``.

    ``head_mean`` only splits genes between the two exact samplers (a speed knob): genes whose
    mean in a median-sized cell of a group reaches it are drawn one by one in that group.
    """
    p = params
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CF0, 0x51]))
    base = np.exp(rng.normal(0.0, p.gene_log_sd, n_genes))
    base /= base.sum()
    phi = (p.disp_floor + p.disp_scale / np.sqrt(1.0 + base * 1e4)) * np.exp(
        rng.normal(0.0, p.disp_log_sd, n_genes)
    )
    r = 1.0 / np.maximum(phi, 1e-3)

    type_p = rng.dirichlet(np.full(n_types, p.type_dirichlet)) if n_types > 1 else np.ones(1)
    type_lfc = np.zeros((n_types, n_genes))
    n_markers = min(p.n_markers, n_genes)
    for t in range(n_types):
        de = rng.random(n_genes) < p.de_frac
        type_lfc[t, de] = rng.normal(0.0, p.de_log_sd, int(de.sum()))
        markers = rng.choice(n_genes, n_markers, replace=False)
        type_lfc[t, markers] += rng.normal(p.marker_lfc, 0.5, n_markers)
    type_lib = np.exp(rng.normal(0.0, p.type_lib_log_sd, n_types))
    batch_lfc = rng.normal(0.0, p.batch_log_sd, (n_batches, n_genes))
    batch_lib = np.exp(rng.normal(0.0, p.batch_lib_log_sd, n_batches))
    batch_p = np.full(n_batches, 1.0 / n_batches)

    n_groups = n_types * n_batches
    w = np.empty((n_groups, n_genes))
    for t in range(n_types):
        for b in range(n_batches):
            row = base * np.exp(type_lfc[t] + batch_lfc[b])
            w[t * n_batches + b] = row / row.sum()
    group_p = (type_p[:, None] * batch_p[None, :]).ravel()
    group_lib = (type_lib[:, None] * batch_lib[None, :]).ravel()

    z, zw = np.polynomial.hermite_e.hermegauss(_N_QUAD)
    zw = zw / zw.sum()

    def gap(log_lib: float) -> float:
        return _expected_nnz(math.exp(log_lib), w, r, group_p, group_lib, z, zw, p.lib_log_sd) - mean_nnz

    if gap(math.log(_MAX_LIB)) < 0:
        raise ValueError(
            f"mean_nnz={mean_nnz:g} is not reachable with n_genes={n_genes} under these parameters"
        )
    lo = math.log(1e-3)
    lib0 = math.exp(brentq(gap, lo, math.log(_MAX_LIB), xtol=1e-6, rtol=1e-10)) if gap(lo) < 0 else 1e-3

    is_head = (lib0 * group_lib)[:, None] * w >= head_mean
    head_ptr = np.zeros(n_groups + 1, np.int64)
    np.cumsum(is_head.sum(axis=1), out=head_ptr[1:])
    grp_idx, head_gene = np.nonzero(is_head)  # row-major: grouped by grp, genes ascending
    x_all = w / r[None, :]
    tail_w = np.where(is_head, 0.0, w)
    tail_mass = tail_w.sum(axis=1)
    tail_tab = np.zeros((n_groups, n_genes), _TAIL_DTYPE)
    prob = np.empty(n_genes)
    alias = np.empty(n_genes, np.int32)
    for grp in range(n_groups):
        prob[:] = 1.0
        alias[:] = np.arange(n_genes)
        if tail_mass[grp] > 0:
            _build_alias(tail_w[grp], prob, alias)
        tab = tail_tab[grp]
        tab["thr"] = np.minimum(np.floor(prob * 2.0**32), 2.0**32 - 1).astype(np.uint32)
        tab["alias"] = alias
        tab["x_own"] = np.where(is_head[grp], 0.0, x_all[grp])
        tab["x_alias"] = tab["x_own"][alias]
    group_nnz = _expected_nnz(lib0, w, r, group_p, group_lib, z, zw, p.lib_log_sd, per_group=True)

    return _Model(
        n_genes=n_genes, n_types=n_types, n_batches=n_batches, seed=seed, mean_nnz=mean_nnz,
        lib0=lib0, type_cdf=np.cumsum(type_p), batch_cdf=np.cumsum(batch_p), type_lib=type_lib,
        batch_lib=batch_lib, lib_log_sd=p.lib_log_sd,
        head_ptr=head_ptr, head_gene=head_gene.astype(np.int32),
        head_x=x_all[grp_idx, head_gene], head_r=r[head_gene],
        tail_mass=tail_mass, tail_tab=tail_tab, group_nnz=group_nnz,
        key_meta=int(_stream_key(seed, 1)), key_counts=int(_stream_key(seed, 2)),
    )


# --------------------------------------------------------------------------------------------
# Counter-based random numbers and samplers (Numba)
# --------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_CELL_MUL = np.uint64(0xD1B54A32D192ED03)
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_ONE = np.uint64(1)
_LOW32 = np.uint64(0xFFFFFFFF)
_INV53 = 1.0 / 9007199254740992.0
_N_RECIP = 256
_RECIP = 1.0 / np.maximum(np.arange(_N_RECIP, dtype=np.float64), 1.0)  # 1 / k


def _debruijn_table() -> np.ndarray:
    table = np.zeros(64, np.int64)
    for i in range(64):
        table[(((1 << i) * 0x03F79D71B4CB0A89) & 0xFFFFFFFFFFFFFFFF) >> 58] = i
    return table


_BIT_INDEX = _debruijn_table()


@njit(cache=True, nogil=True)
def _mix64(z):
    """splitmix64 finaliser."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _stream_key(seed: int, stream: int) -> int:
    """Key of one random stream (cell metadata or counts) of ``seed``."""
    z = (seed * int(_GOLDEN) + stream) & 0xFFFFFFFFFFFFFFFF
    return int(_mix64(np.uint64(z)))


@njit(cache=True, nogil=True)
def _cell_state(key, cell):
    return _mix64(np.uint64(key) ^ (np.uint64(cell) * _CELL_MUL))


@njit(cache=True, nogil=True)
def _next(st):
    s = st[0] + _GOLDEN
    st[0] = s
    return _mix64(s)


@njit(cache=True, nogil=True)
def _unif(st):
    """Uniform on [0, 1)."""
    return np.float64(_next(st) >> np.uint64(11)) * _INV53


@njit(cache=True, nogil=True)
def _unif_pos(st):
    """Uniform on (0, 1)."""
    return (np.float64(_next(st) >> np.uint64(11)) + 0.5) * _INV53


@njit(cache=True, nogil=True)
def _normal(st):
    return math.sqrt(-2.0 * math.log(_unif_pos(st))) * math.cos(2.0 * math.pi * _unif(st))


@njit(cache=True, nogil=True)
def _poisson(st, lam):
    """Poisson draw: multiplication method below 10, Hormann's PTRS above (as NumPy)."""
    if lam <= 0.0:
        return 0
    if lam < 10.0:
        enlam = math.exp(-lam)
        x = 0
        prod = 1.0
        while True:
            prod *= _unif(st)
            if prod > enlam:
                x += 1
            else:
                return x
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u = _unif(st) - 0.5
        v = _unif(st)
        us = 0.5 - abs(u)
        k = int(math.floor((2.0 * a / us + b) * u + lam + 0.43)) if us > 0.0 else -1
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if (math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b)) <= (
            -lam + k * loglam - math.lgamma(k + 1.0)
        ):
            return k


@njit(cache=True, nogil=True)
def _thinned_cluster(v, x):
    """Cluster size contributed by one rate-``mu`` candidate of an NB(mu, r) gene (0: none).

    With ``x = mu / r``, clusters occur at rate ``r * log1p(x)`` and have Log(p) sizes,
    ``p = x / (1 + x)``. Thinning candidates at rate ``mu`` gives
    ``P(size k) = p**k / (k * x)`` per candidate (and none with the remaining probability), which
    is inverted here from a single uniform ``v``: size 1 iff ``v < 1 / (1 + x)``, the common case.
    """
    if v * (1.0 + x) < 1.0:
        return 1
    # no cluster iff v * x >= log1p(x); 2x/(2+x) <= log1p(x) <= x(6+x)/(6+4x) settle most cases
    if (x > 1.0 and v * (2.0 + x) >= 2.0
            and (v * (6.0 + 4.0 * x) >= 6.0 + x or v * x >= math.log(1.0 + x))):
        return 0
    p = x / (1.0 + x)
    term = 1.0 / (1.0 + x)
    c = term
    k = 1
    while True:
        k += 1
        term *= p * (k - 1) * _RECIP[k] if k < _N_RECIP else p * (k - 1) / k
        c += term
        if v < c:
            return k
        # the sizes beyond k carry at most term * x: past that, no cluster
        if v >= c + term * x or term <= c * 1e-17:
            return 0


@njit(cache=True, nogil=True)
def _gamma(st, shape):
    """Gamma(shape, 1) draw (Marsaglia-Tsang; boosted below shape 1)."""
    if shape < 1.0:
        return _gamma(st, shape + 1.0) * math.pow(_unif_pos(st), 1.0 / shape)
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        z = _normal(st)
        v = 1.0 + c * z
        if v <= 0.0:
            continue
        v = v * v * v
        u = _unif_pos(st)
        if u < 1.0 - 0.0331 * z * z * z * z:
            return d * v
        if math.log(u) < 0.5 * z * z + d * (1.0 - v + math.log(v)):
            return d * v


@njit(cache=True, nogil=True)
def _neg_binomial(st, x, r):
    """NB(mean x * r, size r): CDF inversion for moderate means, gamma-Poisson for large ones."""
    if x <= 0.0:
        return 0
    if x * r > 40.0:
        return _poisson(st, _gamma(st, r) * x)
    onepx = 1.0 + x
    p = x / onepx
    # P(0) = (1 + x)^-r; glibc's log is much faster than log1p and exact enough for x >= 0.01
    pk = math.exp(-r * (math.log(onepx) if x >= 0.01 else math.log1p(x)))
    u = _unif(st)
    k = 0
    while u >= pk:
        u -= pk
        pk *= (k + r) * p * _RECIP[k + 1] if k + 1 < _N_RECIP else (k + r) / (k + 1.0) * p
        k += 1
        if pk <= 0.0:
            break
    return k


@njit(parallel=True, cache=True, nogil=True)
def _cell_meta(start, n, key, type_cdf, batch_cdf, type_lib, batch_lib, lib_log_sd, n_batches,
               out_type, out_batch, out_size):
    """Cell type, batch and relative library size of cells ``start .. start + n - 1``."""
    n_blocks = (n + 1023) // 1024
    for blk in prange(n_blocks):
        st = np.empty(1, np.uint64)
        for c in range(blk * 1024, min(n, (blk + 1) * 1024)):
            st[0] = _cell_state(key, start + c)
            u = _unif(st)
            t = 0
            while t < type_cdf.shape[0] - 1 and u >= type_cdf[t]:
                t += 1
            b = min(int(_unif(st) * n_batches), n_batches - 1)
            out_type[c] = t
            out_batch[c] = b
            out_size[c] = type_lib[t] * batch_lib[b] * math.exp(lib_log_sd * _normal(st))


@njit(parallel=True, cache=True, nogil=True)
def _gen_blocks(start, order, key, group, size, lib0, n_genes, head_ptr, head_gene, head_x,
                head_r, tail_tab, tail_mass, bit_index, block_cells, block_base, block_cap,
                out_idx, out_val, cell_nnz, cell_total, block_nnz):
    """Counts of local cells ``order[i]`` (global index ``start + order[i]``), in that order.

    Cells are processed in blocks of ``block_cells`` consecutive entries of ``order`` (callers
    sort cells by group so that a block's sampling tables stay in cache). Block ``b`` writes
    its rows' sorted (gene, count) pairs contiguously from ``block_base[b]`` and records how many
    it produced in ``block_nnz[b]``; entries past ``block_cap[b]`` are dropped (the caller re-runs
    the block). Row lengths go to ``cell_nnz`` and row sums to ``cell_total`` (by local cell).
    """
    n = order.shape[0]
    n_blocks = (n + block_cells - 1) // block_cells
    n_words = (n_genes + 63) // 64
    n_genes_u = np.uint64(n_genes)
    for blk in prange(n_blocks):
        cnt = np.zeros(n_genes, np.int32)
        bits = np.zeros(n_words, np.uint64)
        st = np.empty(1, np.uint64)
        q_gene = np.empty(_SLOW_QUEUE, np.int64)
        q_v = np.empty(_SLOW_QUEUE, np.float64)
        q_x = np.empty(_SLOW_QUEUE, np.float64)
        base = block_base[blk]
        cap = block_cap[blk]
        pos = 0
        for i in range(blk * block_cells, min(n, (blk + 1) * block_cells)):
            c = order[i]
            st[0] = _cell_state(key, start + c)
            grp = group[c]
            lib = lib0 * size[c]
            # genes with high means: one NB draw each
            for j in range(head_ptr[grp], head_ptr[grp + 1]):
                y = _neg_binomial(st, lib * head_x[j], head_r[j])
                if y > 0:
                    g = head_gene[j]
                    cnt[g] += y
                    bits[g >> 6] |= _ONE << np.uint64(g & 63)
            # the rest: NB as Poisson(r log1p(mu/r)) clusters of Log(mu/(mu+r)) size, the
            # clusters thinned from candidates at rate mu drawn from the alias table. The loop
            # is branch-free (RNG state in a register, integer alias test, fast path of
            # _thinned_cluster inlined); unsettled candidates are queued and finished below.
            if tail_mass[grp] > 0.0:
                k = _poisson(st, lib * tail_mass[grp])
                s = st[0]
                done = 0
                while done < k:
                    nb = min(_SLOW_QUEUE, k - done)
                    ns = 0
                    for _ in range(nb):
                        s += _GOLDEN
                        rnd = _mix64(s)
                        g = np.int64(((rnd >> np.uint64(32)) * n_genes_u) >> np.uint64(32))
                        rec = tail_tab[grp, g]
                        keep = (rnd & _LOW32) < np.uint64(rec.thr)
                        x_own = rec.x_own
                        x_alias = rec.x_alias
                        alias = rec.alias
                        g = g if keep else alias
                        x = lib * (x_own if keep else x_alias)
                        s += _GOLDEN
                        v = np.float64(_mix64(s) >> np.uint64(11)) * _INV53
                        one = np.int32(v * (1.0 + x) < 1.0)
                        cnt[g] += one
                        bits[g >> 6] |= np.uint64(one) << np.uint64(g & 63)
                        q_gene[ns] = g
                        q_v[ns] = v
                        q_x[ns] = x
                        ns += 1 - one
                    for i in range(ns):
                        y = _thinned_cluster(q_v[i], q_x[i])
                        if y > 0:
                            g = q_gene[i]
                            cnt[g] += y
                            bits[g >> 6] |= _ONE << np.uint64(g & 63)
                    done += nb
                st[0] = s
            m = 0
            tot = 0
            for wd in range(n_words):
                word = bits[wd]
                if word != 0:
                    bits[wd] = 0
                    while word != 0:
                        low = word & (~word + _ONE)
                        g = wd * 64 + bit_index[(low * _DEBRUIJN) >> np.uint64(58)]
                        word ^= low
                        val = cnt[g]
                        cnt[g] = 0
                        if pos < cap:
                            out_idx[base + pos] = g
                            out_val[base + pos] = val
                        pos += 1
                        m += 1
                        tot += val
            cell_nnz[c] = m
            cell_total[c] = tot
        block_nnz[blk] = pos


@njit(parallel=True, cache=True, nogil=True)
def _scatter_rows(order, block_cells, blocks, block_base, src_idx, src_val, indptr, dst_idx,
                  dst_val):
    """Copies the rows of the listed blocks from processing order to cell order."""
    for bi in prange(blocks.shape[0]):
        blk = blocks[bi]
        src = block_base[blk]
        for i in range(blk * block_cells, min(order.shape[0], (blk + 1) * block_cells)):
            c = order[i]
            d0 = indptr[c]
            m = indptr[c + 1] - d0
            for k in range(m):
                dst_idx[d0 + k] = src_idx[src + k]
                dst_val[d0 + k] = src_val[src + k]
            src += m


# --------------------------------------------------------------------------------------------
# Chunk generation
# --------------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    start: int
    indptr: np.ndarray  # int64 [n + 1], local (starts at 0)
    indices: np.ndarray  # int32 [nnz] (a view into a reused buffer)
    data: np.ndarray  # float32 [nnz] (a view into a reused buffer)
    totals: np.ndarray  # int64 [n]
    cell_type: np.ndarray  # int32 [n]
    batch: np.ndarray  # int32 [n]


def _cell_metadata(model: _Model, start: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    types = np.empty(n, np.int32)
    batches = np.empty(n, np.int32)
    size = np.empty(n, np.float64)
    _cell_meta(start, n, np.uint64(model.key_meta), model.type_cdf, model.batch_cdf,
               model.type_lib, model.batch_lib, model.lib_log_sd, model.n_batches,
               types, batches, size)
    return types, batches, size


class _ChunkGenerator:
    """Generates consecutive row ranges into reused buffers (memory ~ chunk_cells * mean_nnz)."""

    def __init__(self, model: _Model) -> None:
        self.model = model
        self.buf_idx = np.empty(0, np.int32)
        self.buf_val = np.empty(0, np.float32)
        self.out_idx = np.empty(0, np.int32)
        self.out_val = np.empty(0, np.float32)

    @staticmethod
    def _grow(arr: np.ndarray, size: int) -> np.ndarray:
        return arr if arr.shape[0] >= size else np.empty(int(size * 1.1) + 1024, arr.dtype)

    def _run(self, start: int, order: np.ndarray, group: np.ndarray, size: np.ndarray,
             block_cells: int, block_base: np.ndarray, block_cap: np.ndarray,
             out_idx: np.ndarray, out_val: np.ndarray, cell_nnz: np.ndarray,
             cell_total: np.ndarray) -> np.ndarray:
        m = self.model
        block_nnz = np.zeros(block_base.shape[0], np.int64)
        _gen_blocks(start, order, np.uint64(m.key_counts), group, size, m.lib0, m.n_genes,
                    m.head_ptr, m.head_gene, m.head_x, m.head_r, m.tail_tab, m.tail_mass,
                    _BIT_INDEX, block_cells, block_base, block_cap, out_idx, out_val,
                    cell_nnz, cell_total, block_nnz)
        return block_nnz

    def generate(self, start: int, n: int) -> _Chunk:
        """Rows ``start .. start + n - 1``; the views stay valid until the next call."""
        m = self.model
        types, batches, size = _cell_metadata(m, start, n)
        group = types * m.n_batches + batches
        order = np.argsort(group, kind="stable").astype(np.int64)
        bc = _BLOCK_CELLS
        n_blocks = -(-n // bc)
        expect = np.add.reduceat(m.group_nnz[group[order]], np.arange(0, n, bc))
        block_cap = (expect * _BLOCK_SLACK).astype(np.int64) + min(m.n_genes, 4096)
        block_base = np.zeros(n_blocks, np.int64)
        np.cumsum(block_cap[:-1], out=block_base[1:])
        self.buf_idx = self._grow(self.buf_idx, int(block_base[-1] + block_cap[-1]))
        self.buf_val = self._grow(self.buf_val, self.buf_idx.shape[0])
        cell_nnz = np.empty(n, np.int64)
        totals = np.empty(n, np.int64)
        block_nnz = self._run(start, order, group, size, bc, block_base, block_cap,
                              self.buf_idx, self.buf_val, cell_nnz, totals)
        over = block_nnz > block_cap
        redo = []
        for blk in np.flatnonzero(over):  # rare: re-run those blocks with an exact bound
            sub = order[blk * bc:(blk + 1) * bc]
            cap = np.array([sub.shape[0] * m.n_genes], np.int64)
            idx = np.empty(int(cap[0]), np.int32)
            val = np.empty(int(cap[0]), np.float32)
            self._run(start, sub, group, size, sub.shape[0], np.zeros(1, np.int64), cap,
                      idx, val, cell_nnz, totals)
            redo.append((sub, idx, val))
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(cell_nnz, out=indptr[1:])
        nnz = int(indptr[-1])
        self.out_idx = self._grow(self.out_idx, nnz)
        self.out_val = self._grow(self.out_val, nnz)
        _scatter_rows(order, bc, np.flatnonzero(~over), block_base, self.buf_idx, self.buf_val,
                      indptr, self.out_idx, self.out_val)
        for sub, idx, val in redo:
            _scatter_rows(sub, sub.shape[0], np.zeros(1, np.int64), np.zeros(1, np.int64),
                          idx, val, indptr, self.out_idx, self.out_val)
        return _Chunk(start, indptr, self.out_idx[:nnz], self.out_val[:nnz], totals, types,
                      batches)


def _iter_chunks(model: _Model, n_cells: int, chunk_cells: int, *, n_threads: int | None = None,
                 prefetch: bool = False) -> Iterator[_Chunk]:
    """Yields consecutive chunks of rows, generated with ``n_threads`` Numba threads.

    With ``prefetch``, the next chunk is generated in a background thread (the kernels release
    the GIL) while the caller consumes the current one; two buffer sets alternate, so a chunk's
    views stay valid until the following chunk has been consumed.
    """

    def work(gen: _ChunkGenerator, start: int) -> _Chunk:
        with _Threads(n_threads):
            return gen.generate(start, min(chunk_cells, n_cells - start))

    starts = list(range(0, n_cells, chunk_cells))
    if not prefetch or len(starts) < 2:
        gen = _ChunkGenerator(model)
        for start in starts:
            yield work(gen, start)
        return
    from concurrent.futures import ThreadPoolExecutor

    gens = (_ChunkGenerator(model), _ChunkGenerator(model))
    with ThreadPoolExecutor(1, thread_name_prefix="scforge-synthetic") as pool:
        fut = pool.submit(work, gens[0], 0)
        try:
            for i in range(len(starts)):
                chunk = fut.result()
                if i + 1 < len(starts):
                    fut = pool.submit(work, gens[(i + 1) % 2], starts[i + 1])
                yield chunk
        finally:
            fut.cancel()


def _check_threads(n_threads: int | None) -> int | None:
    """Validates ``n_threads`` and caps it at Numba's pool size (None: leave Numba's setting)."""
    if n_threads is None:
        return None
    import numba

    pool = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    return min(_check_int("n_threads", n_threads, 1), pool)


class _Threads:
    """Sets Numba's thread count for the current thread (a thread-local setting) while open."""

    def __init__(self, n_threads: int | None) -> None:
        self.n = n_threads
        self.prev = 0

    def __enter__(self) -> _Threads:
        self.prev = get_num_threads()
        if self.n is not None:
            set_num_threads(self.n)
        return self

    def __exit__(self, *exc: object) -> None:
        set_num_threads(self.prev)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _prepare(n_cells: int, n_genes: int, seed: int, mean_nnz: float, n_cell_types: int,
             n_batches: int, params: SyntheticParams | None,
             n_threads: int | None) -> tuple[_Model, int, int | None]:
    """Validates the common arguments; returns (model, n_cells, n_threads)."""
    n_cells, n_genes, seed, mean_nnz, n_cell_types, n_batches = _check_common(
        n_cells, n_genes, seed, mean_nnz, n_cell_types, n_batches)
    if params is None:
        params = SyntheticParams()
    elif not isinstance(params, SyntheticParams):
        raise ValueError(f"params must be a SyntheticParams, got {params!r}")
    n_threads = _check_threads(n_threads)
    return _build_model(n_genes, seed, mean_nnz, n_cell_types, n_batches, params), n_cells, n_threads


def _generate(model: _Model, n_cells: int,
              n_threads: int | None) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """The whole matrix in memory, with the cell-type and batch codes."""
    indptr = np.zeros(n_cells + 1, np.int64)
    idx_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    types = np.empty(n_cells, np.int32)
    batches = np.empty(n_cells, np.int32)
    offset = 0
    for ch in _iter_chunks(model, n_cells, 16384, n_threads=n_threads):
        n = ch.indptr.shape[0] - 1
        indptr[ch.start + 1:ch.start + n + 1] = ch.indptr[1:] + offset
        offset += int(ch.indptr[-1])
        idx_parts.append(ch.indices.copy())
        val_parts.append(ch.data.copy())
        types[ch.start:ch.start + n] = ch.cell_type
        batches[ch.start:ch.start + n] = ch.batch
    x = sp.csr_matrix((np.concatenate(val_parts), np.concatenate(idx_parts), indptr),
                      shape=(n_cells, model.n_genes))
    x.has_sorted_indices = True
    return x, types, batches


def synthetic_counts(n_cells: int, n_genes: int, *, seed: int, mean_nnz: float = 1500,
                     n_cell_types: int = 8, n_batches: int = 2,
                     params: SyntheticParams | None = None,
                     n_threads: int | None = None) -> sp.csr_matrix:
    """Realistic synthetic raw UMI counts, in memory.

    Row ``i`` is identical to row ``i`` of :func:`write_synthetic_h5ad` (and of
    :func:`synthetic_anndata`) called with the same ``n_genes``, ``seed``, ``mean_nnz``,
    ``n_cell_types``, ``n_batches`` and ``params``, whatever ``n_cells``.

    Args:
        n_cells: number of cells (rows), >= 1.
        n_genes: number of genes (columns), >= 1.
        seed: random seed (0 <= seed < 2**63); same arguments, same matrix.
        mean_nnz: expected number of detected (nonzero) genes per cell, at most ``n_genes / 2``.
        n_cell_types: number of cell types.
        n_batches: number of batches.
        params: generative-model shape parameters (default :class:`SyntheticParams`).
        n_threads: Numba threads to use (default: Numba's current setting); does not change the
            output.

    Returns:
        ``scipy.sparse.csr_matrix`` of shape (n_cells, n_genes): float32 integer-valued counts,
        sorted column indices, no explicit zeros (index arrays int32 while nnz < 2**31, as
        scipy chooses; the ``.h5ad`` writer always stores an int64 indptr).

    Raises:
        ValueError: on an invalid argument.
    """
    model, n_cells, n_threads = _prepare(n_cells, n_genes, seed, mean_nnz, n_cell_types,
                                         n_batches, params, n_threads)
    return _generate(model, n_cells, n_threads)[0]


def _make_var(gene_ids: Sequence[str] | None, n_genes: int) -> pd.DataFrame:
    import pandas as pd

    if gene_ids is None:
        ids = default_gene_ids(n_genes)
    else:
        if isinstance(gene_ids, (str, bytes)):
            raise ValueError(f"gene_ids must be a sequence of strings, got {gene_ids!r}")
        ids = [str(g) for g in gene_ids]
        if len(ids) != n_genes:
            raise ValueError(f"gene_ids has {len(ids)} entries but n_genes={n_genes}")
        if len(set(ids)) != len(ids):
            raise ValueError("gene_ids must be unique")
    return pd.DataFrame({"gene_ids": ids, "gene_symbols": gene_symbols_for(ids)},
                        index=pd.Index(ids))


def _make_obs(types: np.ndarray, batches: np.ndarray, totals: np.ndarray, nnz: np.ndarray,
              n_types: int, n_batches: int) -> pd.DataFrame:
    import pandas as pd

    n = types.shape[0]
    width = max(7, len(str(n - 1)))
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(types, [f"type_{t}" for t in range(n_types)]),
            "batch": pd.Categorical.from_codes(batches, [f"batch_{b}" for b in range(n_batches)]),
            "n_counts": totals.astype(np.float32),
            "n_genes": nnz.astype(np.int32),
        },
        index=pd.Index([f"syn_{i:0{width}d}" for i in range(n)]),
    )


def _uns(model: _Model, params: SyntheticParams) -> dict[str, Any]:
    return {"synthetic": {"generator": "scforge.testing.synthetic", "seed": model.seed,
                          "mean_nnz": model.mean_nnz, "library_scale": model.lib0,
                          **asdict(params)}}


def synthetic_anndata(n_cells: int, n_genes: int = 2000, *, seed: int = 0, mean_nnz: float = 500,
                      n_cell_types: int = 8, n_batches: int = 2,
                      gene_ids: Sequence[str] | None = None,
                      params: SyntheticParams | None = None,
                      n_threads: int | None = None) -> ad.AnnData:
    """In-memory AnnData with the same ``X``, ``obs`` and ``var`` as :func:`write_synthetic_h5ad`.

    Args:
        n_cells: number of cells, >= 1.
        n_genes: number of genes, >= 1.
        seed: random seed (0 <= seed < 2**63).
        mean_nnz: expected detected genes per cell (<= n_genes / 2).
        n_cell_types: number of cell types.
        n_batches: number of batches.
        gene_ids: var names (default :func:`default_gene_ids`).
        params: generative-model shape parameters.
        n_threads: Numba threads to use.

    Returns:
        ``anndata.AnnData`` with raw counts in ``X`` (float32 CSR), ``obs`` columns
        ``cell_type``, ``batch`` (categorical), ``n_counts``, ``n_genes``, ``var`` columns
        ``gene_ids``, ``gene_symbols``, and the generator's settings in ``uns['synthetic']``.

    Raises:
        ValueError: on an invalid argument.
    """
    import anndata as ad

    model, n_cells, n_threads = _prepare(n_cells, n_genes, seed, mean_nnz, n_cell_types,
                                         n_batches, params, n_threads)
    var = _make_var(gene_ids, model.n_genes)
    x, types, batches = _generate(model, n_cells, n_threads)
    totals = np.asarray(x.sum(axis=1, dtype=np.float64)).ravel()
    obs = _make_obs(types, batches, totals, np.diff(x.indptr), n_cell_types, n_batches)
    return ad.AnnData(X=x, obs=obs, var=var, uns=_uns(model, params or SyntheticParams()))


def write_synthetic_h5ad(path: str | os.PathLike[str], n_cells: int, n_genes: int = 20000, *,
                         seed: int = 0, mean_nnz: float = 1500, chunk_cells: int = 10000,
                         n_cell_types: int = 8, n_batches: int = 2,
                         gene_ids: Sequence[str] | None = None,
                         compression: str | None = "lzf",
                         params: SyntheticParams | None = None, n_threads: int | None = None,
                         progress: bool | Callable[[int], object] = False) -> dict[str, Any]:
    """Streams a synthetic raw-count dataset to an ``.h5ad`` file in bounded memory.

    ``X`` is written chunk by chunk as CSR (float32 ``data``, int32 ``indices``, int64 ``indptr``;
    resizable, chunked HDF5 datasets) while the next chunk is generated in the background, so
    memory is bounded by ``chunk_cells`` (about 2 x 2.3 x ``chunk_cells`` x ``mean_nnz`` x 8
    bytes, plus ~100 bytes per cell for ``obs``), not by the matrix. ``obs``, ``var`` and ``uns``
    are written with anndata's own writer. The file appears at ``path`` only when complete (it
    is written to ``path + '.tmp'`` and renamed).

    Args:
        path: output ``.h5ad`` file (overwritten if it exists).
        n_cells: number of cells, >= 1.
        n_genes: number of genes, >= 1.
        seed: random seed (0 <= seed < 2**63); same arguments, identical ``X``.
        mean_nnz: expected detected genes per cell (<= n_genes / 2).
        chunk_cells: cells generated and written per step; does not change the output.
        n_cell_types: number of cell types (``obs['cell_type']``: ``type_0``, ...).
        n_batches: number of batches (``obs['batch']``: ``batch_0``, ...).
        gene_ids: var names (default :func:`default_gene_ids`: Geneformer V2 Ensembl IDs).
        compression: HDF5 filter for ``X``: ``None`` (8 bytes per nonzero; fastest where the
            disk keeps up), ``"lzf"`` (with shuffle; ~3.5x smaller) or ``"gzip"`` (level 1 with
            shuffle; ~4.9x smaller, slowest).
        params: generative-model shape parameters.
        n_threads: Numba threads to use (default: Numba's current setting).
        progress: True for a tqdm bar on stderr, or a callable receiving the cells done per step.

    Returns:
        Summary dict: ``path``, ``n_cells``, ``n_genes``, ``nnz``, ``seed``, nonzeros and counts
        per cell (mean and 5/50/95th percentiles), cell-type and batch counts, gene-id source,
        ``chunk_cells``, ``compression``, ``seconds``, ``cells_per_s`` and ``file_bytes``.

    Raises:
        ValueError: on an invalid argument.
    """
    import anndata as ad
    import h5py
    from anndata.io import write_elem

    t0 = time.perf_counter()
    model, n_cells, n_threads = _prepare(n_cells, n_genes, seed, mean_nnz, n_cell_types,
                                         n_batches, params, n_threads)
    chunk_cells = _check_int("chunk_cells", chunk_cells, 1)
    if compression not in (None, "lzf", "gzip"):
        raise ValueError(f"compression must be None, 'lzf' or 'gzip', got {compression!r}")
    callback: Callable[[int], object] | None
    if isinstance(progress, bool):
        callback = None
    elif callable(progress):
        callback = progress
    else:
        raise ValueError(f"progress must be a bool or a callable, got {progress!r}")
    path = Path(os.fspath(path))
    if path.is_dir():
        raise ValueError(f"path is a directory: {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"parent directory of path does not exist: {str(path.parent)!r}")
    var = _make_var(gene_ids, model.n_genes)

    comp_kw: dict[str, Any] = {}
    if compression == "gzip":
        comp_kw = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    elif compression == "lzf":
        comp_kw = {"compression": "lzf", "shuffle": True}
    types = np.empty(n_cells, np.int32)
    batches = np.empty(n_cells, np.int32)
    totals = np.empty(n_cells, np.int64)
    nnz_per_cell = np.empty(n_cells, np.int64)
    tmp = path.with_name(path.name + ".tmp")
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_cells, unit="cell", unit_scale=True, desc=path.name)
        callback = bar.update
    try:
        # skeleton (var, uns and empty groups) by anndata; obs and X are replaced below
        ad.AnnData(var=var, uns=_uns(model, params or SyntheticParams())).write_h5ad(tmp)
        with h5py.File(tmp, "r+", rdcc_nbytes=_H5_CACHE, rdcc_nslots=10007) as f:
            if "X" in f:
                del f["X"]
            grp = f.create_group("X")
            grp.attrs["encoding-type"] = "csr_matrix"
            grp.attrs["encoding-version"] = "0.1.0"
            grp.attrs["shape"] = np.array([n_cells, model.n_genes], dtype=np.int64)
            h5_chunk = _H5_CHUNK
            d_data = grp.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32,
                                        chunks=(h5_chunk,), **comp_kw)
            d_idx = grp.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32,
                                       chunks=(h5_chunk,), **comp_kw)
            d_ptr = grp.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64,
                                       chunks=(min(n_cells + 1, h5_chunk),), **comp_kw)
            d_ptr[0:1] = 0
            offset = 0
            for ch in _iter_chunks(model, n_cells, chunk_cells, n_threads=n_threads,
                                   prefetch=True):
                n = ch.indptr.shape[0] - 1
                m = int(ch.indptr[-1])
                d_data.resize((offset + m,))
                d_idx.resize((offset + m,))
                # h5py holds the GIL while it writes and compresses, and the prefetching
                # generator needs it between its kernels: write in small pieces that end on
                # HDF5 chunk boundaries (no partial chunk is compressed twice)
                a = 0
                while a < m:
                    b = min(m, (offset + a) // _WRITE_PIECE * _WRITE_PIECE + _WRITE_PIECE - offset)
                    d_data[offset + a:offset + b] = ch.data[a:b]
                    d_idx[offset + a:offset + b] = ch.indices[a:b]
                    a = b
                d_ptr[ch.start + 1:ch.start + n + 1] = ch.indptr[1:] + offset
                offset += m
                sl = slice(ch.start, ch.start + n)
                types[sl] = ch.cell_type
                batches[sl] = ch.batch
                totals[sl] = ch.totals
                nnz_per_cell[sl] = np.diff(ch.indptr)
                if callback is not None:
                    callback(n)
            del f["obs"]
            write_elem(f, "obs", _make_obs(types, batches, totals, nnz_per_cell, n_cell_types,
                                           n_batches))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()

    seconds = time.perf_counter() - t0
    q_nnz = np.percentile(nnz_per_cell, [5, 50, 95])
    q_cnt = np.percentile(totals, [5, 50, 95])
    return {
        "path": str(path),
        "n_cells": n_cells,
        "n_genes": model.n_genes,
        "nnz": offset,
        "seed": model.seed,
        "mean_nnz_target": model.mean_nnz,
        "nnz_per_cell_mean": round(float(nnz_per_cell.mean()), 2),
        "nnz_per_cell_p5_p50_p95": [float(v) for v in q_nnz],
        "counts_per_cell_mean": round(float(totals.mean()), 2),
        "counts_per_cell_p5_p50_p95": [float(v) for v in q_cnt],
        "cell_type_counts": np.bincount(types, minlength=n_cell_types).tolist(),
        "batch_counts": np.bincount(batches, minlength=n_batches).tolist(),
        "gene_ids_source": _reference_gene_ids()[1] if gene_ids is None else "user",
        "chunk_cells": chunk_cells,
        "compression": compression,
        "seconds": round(seconds, 3),
        "cells_per_s": round(n_cells / seconds, 1),
        "file_bytes": path.stat().st_size,
    }
