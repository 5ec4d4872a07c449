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

The counts are drawn *exactly* from that negative binomial, but without touching every
(cell, gene) pair: a gamma-Poisson variable is in distribution a compound Poisson sum,
``X = Y_1 + ... + Y_K`` with ``K ~ Poisson(r * log1p(mu / r))`` clusters and logarithmic
``Y_i ~ Log(mu / (mu + r))`` (``r = 1 / phi``). Highly expressed genes are drawn gene by gene;
for the long tail of rarely expressed genes, cluster candidates are drawn at rate ``mu`` from a
per-(type, batch) alias table and thinned to rate ``r * log1p(mu / r)``, so the cost per cell is
proportional to its detected genes, not to ``n_genes``.

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
from typing import Any

import numpy as np
import scipy.sparse as sp
from numba import get_num_threads, njit, prange, set_num_threads
from scipy.optimize import brentq

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
_SYMBOLS_SHARED = _SHARED_DATA / "genes" / "gencode_v44_id2name.csv"


def _token_dictionary_text() -> tuple[str, str] | None:
    """Returns (json text, where it came from) of the Geneformer V2 token dictionary, or None."""
    try:
        res = resources.files("scforge").joinpath("resources", _TOKEN_DICT_RESOURCE)
        if res.is_file():
            return res.read_text(encoding="utf-8"), f"scforge/resources/{_TOKEN_DICT_RESOURCE}"
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    if _TOKEN_DICT_SHARED.is_file():
        return _TOKEN_DICT_SHARED.read_text(encoding="utf-8"), str(_TOKEN_DICT_SHARED)
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
    order (looked up as the package resource ``scforge/resources/geneformer_v2_token_dictionary.json``,
    else ``../shared/data/geneformer/v2/token_dictionary.json`` next to the repository). Further
    genes get synthetic IDs ``ENSG9`` + 10 digits (15 characters like real ones, never real).
    If no dictionary is found, all IDs are synthetic and a warning is issued.

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
    lib_log_sd: float = 0.4
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
_HEAD_MEAN = 1.5
# Gauss-Hermite nodes used to integrate the library-size distribution during calibration.
_N_QUAD = 12
# Cells per parallel work block, and the block buffer's slack over the expected nonzeros.
_BLOCK_CELLS = 128
_BLOCK_SLACK = 1.5
_MAX_LIB = 1e8


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
    tail_x: np.ndarray  # float64 [G, n_genes]; w / r of tail genes (0 for the group's head genes)
    tail_mass: np.ndarray  # float64 [G]; sum of tail genes' w
    alias_prob: np.ndarray  # float64 [G, n_genes]; alias table over tail genes' w
    alias_idx: np.ndarray  # int32 [G, n_genes]
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
    table_bytes = n_cell_types * n_batches * n_genes * 20
    if table_bytes > 4 * 2**30:
        raise ValueError(
            f"n_cell_types * n_batches * n_genes = {n_cell_types}*{n_batches}*{n_genes} needs "
            f"{table_bytes / 2**30:.1f} GiB of sampling tables; use fewer types or batches"
        )
    return n_cells, n_genes, seed, mean_nnz, n_cell_types, n_batches


def _expected_nnz(lib0: float, w: np.ndarray, r: np.ndarray, group_p: np.ndarray,
                  group_lib: np.ndarray, z: np.ndarray, zw: np.ndarray, lib_log_sd: float) -> float:
    """E[detected genes per cell] for library scale ``lib0`` (NB zero probability, integrated)."""
    total = 0.0
    lib_nodes = np.exp(lib_log_sd * z)
    for grp in range(w.shape[0]):
        mu = (lib0 * group_lib[grp] * lib_nodes)[:, None] * w[grp][None, :]
        p_zero = np.exp(-r[None, :] * np.log1p(mu / r[None, :]))
        total += group_p[grp] * float(zw @ (w.shape[1] - p_zero.sum(axis=1)))
    return total


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
    alias_prob = np.ones((n_groups, n_genes))
    alias_idx = np.broadcast_to(np.arange(n_genes, dtype=np.int32), (n_groups, n_genes)).copy()
    for grp in range(n_groups):
        if tail_mass[grp] > 0:
            _build_alias(tail_w[grp], alias_prob[grp], alias_idx[grp])

    return _Model(
        n_genes=n_genes, n_types=n_types, n_batches=n_batches, seed=seed, mean_nnz=mean_nnz,
        lib0=lib0, type_cdf=np.cumsum(type_p), batch_cdf=np.cumsum(batch_p), type_lib=type_lib,
        batch_lib=batch_lib, lib_log_sd=p.lib_log_sd,
        head_ptr=head_ptr, head_gene=head_gene.astype(np.int32),
        head_x=x_all[grp_idx, head_gene], head_r=r[head_gene],
        tail_x=np.where(is_head, 0.0, x_all), tail_mass=tail_mass,
        alias_prob=alias_prob, alias_idx=alias_idx,
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
_INV53 = 1.0 / 9007199254740992.0


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
def _logseries(st, x):
    """Logarithmic-series draw with parameter ``p = x / (1 + x)`` (Kemp's LK, as NumPy)."""
    p = x / (1.0 + x)
    v = _unif(st)
    if v >= p:
        return 1
    lq = -math.log1p(x)  # log(1 - p)
    while True:
        u = _unif(st)
        q = -math.expm1(lq * u)
        if v <= q * q:
            if v > 0.0 and q > 0.0:
                res = int(math.floor(1.0 + math.log(v) / math.log(q)))
                if res >= 1:
                    return res
        elif v >= q:
            return 1
        else:
            return 2
        v = _unif(st)
        if v >= p:
            return 1


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
    if v * x >= math.log1p(x):
        return 0
    p = x / (1.0 + x)
    term = 1.0 / (1.0 + x)
    c = term
    k = 1
    while True:
        k += 1
        term *= p * (k - 1) / k
        c += term
        if v < c or term <= c * 1e-17:
            return k


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
def _neg_binomial(st, mu, r):
    """NB(mean mu, size r): CDF inversion for moderate means, gamma-Poisson for large ones."""
    if mu <= 0.0:
        return 0
    if mu > 40.0:
        return _poisson(st, _gamma(st, r) * (mu / r))
    x = mu / r
    p = x / (1.0 + x)
    pk = math.exp(-r * math.log1p(x))
    u = _unif(st)
    k = 0
    while u >= pk:
        u -= pk
        pk *= (k + r) / (k + 1.0) * p
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
def _gen_blocks(start, n, key, group, size, lib0, n_genes, head_ptr, head_gene, head_x, head_r,
                tail_x, tail_mass, alias_prob, alias_idx, bit_index, block_cells, cap, out_idx,
                out_val, cell_nnz, cell_total, block_nnz):
    """Counts of cells ``start .. start + n - 1``; block ``b`` writes at ``b * cap``.

    Each block writes its rows' sorted (gene, count) pairs contiguously from ``b * cap`` and
    records its total in ``block_nnz[b]``; entries past ``cap`` are dropped (caller re-runs the
    block with a larger ``cap``). Row lengths go to ``cell_nnz`` and row sums to ``cell_total``.
    """
    n_blocks = (n + block_cells - 1) // block_cells
    n_words = (n_genes + 63) // 64
    for blk in prange(n_blocks):
        cnt = np.zeros(n_genes, np.int64)
        bits = np.zeros(n_words, np.uint64)
        st = np.empty(1, np.uint64)
        base = blk * cap
        pos = 0
        for c in range(blk * block_cells, min(n, (blk + 1) * block_cells)):
            st[0] = _cell_state(key, start + c)
            grp = group[c]
            lib = lib0 * size[c]
            # genes with high means: one NB draw each
            for j in range(head_ptr[grp], head_ptr[grp + 1]):
                r = head_r[j]
                y = _neg_binomial(st, lib * head_x[j] * r, r)
                if y > 0:
                    g = head_gene[j]
                    cnt[g] += y
                    bits[g >> 6] |= _ONE << np.uint64(g & 63)
            # the rest: NB as Poisson(r log1p(mu/r)) clusters of Log(mu/(mu+r)) size, the
            # clusters thinned from candidates at rate mu drawn from the alias table
            if tail_mass[grp] > 0.0:
                k = _poisson(st, lib * tail_mass[grp])
                for _ in range(k):
                    u = _unif(st) * n_genes
                    g = min(int(u), n_genes - 1)
                    if u - g >= alias_prob[grp, g]:
                        g = alias_idx[grp, g]
                    y = _thinned_cluster(_unif(st), lib * tail_x[grp, g])
                    if y > 0:
                        cnt[g] += y
                        bits[g >> 6] |= _ONE << np.uint64(g & 63)
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


@njit(cache=True, nogil=True)
def _compact(out_idx, out_val, cap, block_nnz):
    """Moves block b's entries from ``b * cap`` to follow block b-1's (in place)."""
    dst = 0
    for blk in range(block_nnz.shape[0]):
        src = blk * cap
        m = block_nnz[blk]
        if src != dst:
            for i in range(m):
                out_idx[dst + i] = out_idx[src + i]
                out_val[dst + i] = out_val[src + i]
        dst += m
    return dst


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

    def __init__(self, model: _Model, chunk_cells: int) -> None:
        self.model = model
        self.chunk_cells = chunk_cells
        self.cap = int(_BLOCK_CELLS * model.mean_nnz * _BLOCK_SLACK) + min(model.n_genes, 4096)
        n_blocks = -(-chunk_cells // _BLOCK_CELLS)
        self.out_idx = np.empty(n_blocks * self.cap, np.int32)
        self.out_val = np.empty(n_blocks * self.cap, np.float32)

    def _run(self, start: int, group: np.ndarray, size: np.ndarray, cap: int, out_idx: np.ndarray,
             out_val: np.ndarray, cell_nnz: np.ndarray, cell_total: np.ndarray,
             block_cells: int) -> np.ndarray:
        m = self.model
        n = group.shape[0]
        block_nnz = np.zeros(-(-n // block_cells), np.int64)
        _gen_blocks(start, n, np.uint64(m.key_counts), group, size, m.lib0, m.n_genes,
                    m.head_ptr, m.head_gene, m.head_x, m.head_r, m.tail_x, m.tail_mass,
                    m.alias_prob, m.alias_idx, _BIT_INDEX, block_cells, cap,
                    out_idx, out_val, cell_nnz, cell_total, block_nnz)
        return block_nnz

    def generate(self, start: int, n: int) -> _Chunk:
        """Rows ``start .. start + n - 1`` (``n <= chunk_cells``); views stay valid until next call."""
        m = self.model
        types, batches, size = _cell_metadata(m, start, n)
        group = types * m.n_batches + batches
        cell_nnz = np.empty(n, np.int64)
        totals = np.empty(n, np.int64)
        block_nnz = self._run(start, group, size, self.cap, self.out_idx, self.out_val,
                              cell_nnz, totals, _BLOCK_CELLS)
        for blk in np.flatnonzero(block_nnz > self.cap):  # rare: re-run with an exact bound
            c0, c1 = blk * _BLOCK_CELLS, min(n, (blk + 1) * _BLOCK_CELLS)
            big_cap = (c1 - c0) * m.n_genes
            idx = np.empty(big_cap, np.int32)
            val = np.empty(big_cap, np.float32)
            nnz_b = self._run(start + c0, group[c0:c1], size[c0:c1], big_cap, idx, val,
                              cell_nnz[c0:c1], totals[c0:c1], c1 - c0)
            # the block's entries no longer fit its slot: stitch the chunk through a new buffer
            self._grow_and_insert(blk, block_nnz, int(nnz_b[0]), idx, val)
        total = _compact(self.out_idx, self.out_val, self.cap, np.minimum(block_nnz, self.cap))
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(cell_nnz, out=indptr[1:])
        if int(indptr[-1]) != total:
            raise RuntimeError("internal error: row lengths do not add up to the chunk's nonzeros")
        return _Chunk(start, indptr, self.out_idx[:total], self.out_val[:total], totals, types,
                      batches)

    def _grow_and_insert(self, blk: int, block_nnz: np.ndarray, m: int, idx: np.ndarray,
                         val: np.ndarray) -> None:
        """Widens every block slot so that block ``blk`` (with ``m`` entries) fits, then fills it."""
        old_cap = self.cap
        new_cap = max(old_cap, m)
        if new_cap > old_cap:
            n_blocks = block_nnz.shape[0]
            n_slots = self.out_idx.shape[0] // old_cap
            new_idx = np.empty(n_slots * new_cap, np.int32)
            new_val = np.empty(n_slots * new_cap, np.float32)
            for b in range(n_blocks):
                k = min(int(block_nnz[b]), old_cap)
                new_idx[b * new_cap:b * new_cap + k] = self.out_idx[b * old_cap:b * old_cap + k]
                new_val[b * new_cap:b * new_cap + k] = self.out_val[b * old_cap:b * old_cap + k]
            self.out_idx, self.out_val, self.cap = new_idx, new_val, new_cap
        self.out_idx[blk * self.cap:blk * self.cap + m] = idx[:m]
        self.out_val[blk * self.cap:blk * self.cap + m] = val[:m]
        block_nnz[blk] = m


def _iter_chunks(model: _Model, n_cells: int, chunk_cells: int) -> Iterator[_Chunk]:
    gen = _ChunkGenerator(model, min(chunk_cells, n_cells))
    for start in range(0, n_cells, chunk_cells):
        yield gen.generate(start, min(chunk_cells, n_cells - start))


class _Threads:
    """Context manager setting Numba's thread count (None: leave as is)."""

    def __init__(self, n_threads: int | None) -> None:
        self.n = None if n_threads is None else _check_int("n_threads", n_threads, 1)
        self.prev = 0

    def __enter__(self) -> _Threads:
        self.prev = get_num_threads()
        if self.n is not None:
            from numba import config

            set_num_threads(min(self.n, config.NUMBA_NUM_THREADS))
        return self

    def __exit__(self, *exc: object) -> None:
        set_num_threads(self.prev)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def synthetic_counts(n_cells: int, n_genes: int, *, seed: int, mean_nnz: float = 1500,
                     n_cell_types: int = 8, n_batches: int = 2,
                     params: SyntheticParams | None = None, n_threads: int | None = None,
                     return_obs: bool = False) -> Any:
    """Realistic synthetic raw UMI counts, in memory.

    Row ``i`` is identical to row ``i`` of :func:`write_synthetic_h5ad` with the same ``seed``,
    ``n_genes``, ``mean_nnz``, ``n_cell_types``, ``n_batches`` and ``params``.

    Args:
        n_cells: number of cells (rows), >= 1.
        n_genes: number of genes (columns), >= 1.
        seed: random seed (0 <= seed < 2**63); same seed, same matrix.
        mean_nnz: expected number of detected (nonzero) genes per cell; at most ``n_genes / 2``.
        n_cell_types: number of cell types.
        n_batches: number of batches.
        params: generative-model shape parameters (default :class:`SyntheticParams`).
        n_threads: Numba threads to use (default: Numba's current setting).
        return_obs: also return per-cell labels.

    Returns:
        ``scipy.sparse.csr_matrix`` of shape (n_cells, n_genes), float32 integer-valued counts,
        sorted indices (int32), no explicit zeros. With ``return_obs``, a tuple
        ``(X, cell_type, batch)`` of the matrix and two int32 arrays of label codes.

    Raises:
        ValueError: on an invalid argument.
    """
    n_cells, n_genes, seed, mean_nnz, n_cell_types, n_batches = _check_common(
        n_cells, n_genes, seed, mean_nnz, n_cell_types, n_batches)
    model = _build_model(n_genes, seed, mean_nnz, n_cell_types, n_batches,
                         params or SyntheticParams())
    chunk_cells = 16384
    indptr = np.zeros(n_cells + 1, np.int64)
    idx_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    types = np.empty(n_cells, np.int32)
    batches = np.empty(n_cells, np.int32)
    offset = 0
    with _Threads(n_threads):
        for ch in _iter_chunks(model, n_cells, chunk_cells):
            n = ch.indptr.shape[0] - 1
            indptr[ch.start + 1:ch.start + n + 1] = ch.indptr[1:] + offset
            offset += int(ch.indptr[-1])
            idx_parts.append(ch.indices.copy())
            val_parts.append(ch.data.copy())
            types[ch.start:ch.start + n] = ch.cell_type
            batches[ch.start:ch.start + n] = ch.batch
    indices = np.concatenate(idx_parts) if idx_parts else np.empty(0, np.int32)
    data = np.concatenate(val_parts) if val_parts else np.empty(0, np.float32)
    x = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    x.has_sorted_indices = True
    if return_obs:
        return x, types, batches
    return x


def _make_var(gene_ids: Sequence[str] | None, n_genes: int) -> Any:
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
    var = pd.DataFrame(
        {"gene_ids": ids, "gene_symbols": gene_symbols_for(ids)},
        index=pd.Index(ids, name=None),
    )
    return var


def _make_obs(types: np.ndarray, batches: np.ndarray, totals: np.ndarray, nnz: np.ndarray,
              n_types: int, n_batches: int) -> Any:
    import pandas as pd

    n = types.shape[0]
    width = max(7, len(str(n - 1)))
    names = [f"syn_{i:0{width}d}" for i in range(n)]
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(types, [f"type_{t}" for t in range(n_types)]),
            "batch": pd.Categorical.from_codes(batches, [f"batch_{b}" for b in range(n_batches)]),
            "n_counts": totals.astype(np.float32),
            "n_genes": nnz.astype(np.int32),
        },
        index=pd.Index(names),
    )


def _uns(seed: int, mean_nnz: float, model: _Model, params: SyntheticParams) -> dict[str, Any]:
    return {"synthetic": {"generator": "scforge.testing.synthetic", "seed": seed,
                          "mean_nnz": mean_nnz, "library_scale": model.lib0,
                          **{k: v for k, v in asdict(params).items()}}}


def synthetic_anndata(n_cells: int, n_genes: int = 2000, *, seed: int = 0, mean_nnz: float = 500,
                      n_cell_types: int = 8, n_batches: int = 2,
                      gene_ids: Sequence[str] | None = None,
                      params: SyntheticParams | None = None,
                      n_threads: int | None = None) -> Any:
    """In-memory AnnData with the same X, obs and var as :func:`write_synthetic_h5ad`.

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
        ``cell_type``, ``batch`` (categorical), ``n_counts``, ``n_genes``, and ``var`` columns
        ``gene_ids``, ``gene_symbols``.

    Raises:
        ValueError: on an invalid argument.
    """
    import anndata as ad

    params = params or SyntheticParams()
    x, types, batches = synthetic_counts(
        n_cells, n_genes, seed=seed, mean_nnz=mean_nnz, n_cell_types=n_cell_types,
        n_batches=n_batches, params=params, n_threads=n_threads, return_obs=True)
    var = _make_var(gene_ids, n_genes)
    totals = np.asarray(x.sum(axis=1)).ravel()
    obs = _make_obs(types, batches, totals, np.diff(x.indptr), n_cell_types, n_batches)
    model = _build_model(n_genes, seed, float(mean_nnz), n_cell_types, n_batches, params)
    return ad.AnnData(X=x, obs=obs, var=var, uns=_uns(seed, float(mean_nnz), model, params))


def write_synthetic_h5ad(path: str | os.PathLike[str], n_cells: int, n_genes: int = 20000, *,
                         seed: int = 0, mean_nnz: float = 1500, chunk_cells: int = 10000,
                         n_cell_types: int = 8, n_batches: int = 2,
                         gene_ids: Sequence[str] | None = None,
                         compression: str | None = "lzf",
                         params: SyntheticParams | None = None, n_threads: int | None = None,
                         progress: bool | Callable[[int], None] = False) -> dict[str, Any]:
    """Streams a synthetic raw-count dataset to an ``.h5ad`` file in bounded memory.

    ``X`` is written chunk by chunk as a CSR matrix (float32 data, int32 indices, int64 indptr,
    resizable chunked HDF5 datasets) so that memory is bounded by ``chunk_cells`` (plus ~30 bytes
    per cell for the labels and ``obs``), not by the matrix. ``obs``/``var``/``uns`` are written
    with anndata's own writer. The file is written to ``path + '.tmp'`` and renamed when complete.

    Args:
        path: output file.
        n_cells: number of cells, >= 1.
        n_genes: number of genes, >= 1.
        seed: random seed (0 <= seed < 2**63); same arguments, identical ``X``.
        mean_nnz: expected detected genes per cell (<= n_genes / 2).
        chunk_cells: cells generated and written per step (memory ~ chunk_cells * mean_nnz *
            12 bytes); does not change the output.
        n_cell_types: number of cell types (``obs['cell_type']``: ``type_0`` ...).
        n_batches: number of batches (``obs['batch']``: ``batch_0`` ...).
        gene_ids: var names (default :func:`default_gene_ids`: Geneformer V2 Ensembl IDs).
        compression: HDF5 filter for ``X``: ``None``, ``"lzf"`` or ``"gzip"`` (level 1).
        params: generative-model shape parameters.
        n_threads: Numba threads to use (default: Numba's current setting).
        progress: True for a tqdm bar on stderr, or a callable receiving cells done per step.

    Returns:
        Summary dict: path, shape, nnz, nonzeros-per-cell and counts-per-cell statistics,
        cell-type counts, timing (``seconds``, ``cells_per_s``) and ``file_bytes``.

    Raises:
        ValueError: on an invalid argument.
    """
    import anndata as ad
    import h5py
    from anndata.io import write_elem

    t0 = time.perf_counter()
    n_cells, n_genes, seed, mean_nnz, n_cell_types, n_batches = _check_common(
        n_cells, n_genes, seed, mean_nnz, n_cell_types, n_batches)
    chunk_cells = _check_int("chunk_cells", chunk_cells, 1)
    if compression not in (None, "lzf", "gzip"):
        raise ValueError(f"compression must be None, 'lzf' or 'gzip', got {compression!r}")
    path = Path(os.fspath(path))
    if path.is_dir():
        raise ValueError(f"path is a directory: {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"parent directory of path does not exist: {str(path.parent)!r}")
    params = params or SyntheticParams()
    var = _make_var(gene_ids, n_genes)
    model = _build_model(n_genes, seed, mean_nnz, n_cell_types, n_batches, params)

    tmp = path.with_name(path.name + ".tmp")
    ad.AnnData(var=var, uns=_uns(seed, mean_nnz, model, params)).write_h5ad(tmp)

    types = np.empty(n_cells, np.int32)
    batches = np.empty(n_cells, np.int32)
    totals = np.empty(n_cells, np.int64)
    nnz_per_cell = np.empty(n_cells, np.int32)
    comp_kw: dict[str, Any] = {}
    if compression == "gzip":
        comp_kw = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    elif compression == "lzf":
        comp_kw = {"compression": "lzf", "shuffle": True}
    h5_chunk = 1 << 18

    bar = None
    callback: Callable[[int], None] | None = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_cells, unit="cell", unit_scale=True, desc=path.name)
        callback = bar.update
    elif callable(progress):
        callback = progress
    elif progress is not False:
        raise ValueError(f"progress must be a bool or a callable, got {progress!r}")

    try:
        with h5py.File(tmp, "r+") as f, _Threads(n_threads):
            if "X" in f:
                del f["X"]
            grp = f.create_group("X")
            grp.attrs["encoding-type"] = "csr_matrix"
            grp.attrs["encoding-version"] = "0.1.0"
            grp.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
            d_data = grp.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32,
                                        chunks=(h5_chunk,), **comp_kw)
            d_idx = grp.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32,
                                       chunks=(h5_chunk,), **comp_kw)
            d_ptr = grp.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64,
                                       chunks=(min(n_cells + 1, h5_chunk),), **comp_kw)
            d_ptr[0:1] = 0
            offset = 0
            for ch in _iter_chunks(model, n_cells, chunk_cells):
                n = ch.indptr.shape[0] - 1
                m = int(ch.indptr[-1])
                d_data.resize((offset + m,))
                d_idx.resize((offset + m,))
                d_data[offset:offset + m] = ch.data
                d_idx[offset:offset + m] = ch.indices
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
            obs = _make_obs(types, batches, totals, nnz_per_cell, n_cell_types, n_batches)
            write_elem(f, "obs", obs)
            del obs
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    finally:
        if bar is not None:
            bar.close()

    seconds = time.perf_counter() - t0
    q_nnz = np.percentile(nnz_per_cell, [5, 50, 95])
    q_cnt = np.percentile(totals, [5, 50, 95])
    gene_src = _reference_gene_ids()[1] if gene_ids is None else "user"
    return {
        "path": str(path),
        "n_cells": n_cells,
        "n_genes": n_genes,
        "nnz": int(offset),
        "seed": seed,
        "mean_nnz_target": mean_nnz,
        "nnz_per_cell_mean": float(nnz_per_cell.mean()),
        "nnz_per_cell_p5_p50_p95": [float(v) for v in q_nnz],
        "counts_per_cell_mean": float(totals.mean()),
        "counts_per_cell_p5_p50_p95": [float(v) for v in q_cnt],
        "cell_type_counts": np.bincount(types, minlength=n_cell_types).tolist(),
        "batch_counts": np.bincount(batches, minlength=n_batches).tolist(),
        "gene_ids_source": gene_src,
        "chunk_cells": chunk_cells,
        "compression": compression,
        "seconds": round(seconds, 3),
        "cells_per_s": round(n_cells / seconds, 1),
        "file_bytes": path.stat().st_size,
    }
