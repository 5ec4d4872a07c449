"""1-D LOESS (local quadratic, tricube weights) as used by Seurat v3 highly-variable genes.

Scanpy fits ``log10(variance) ~ log10(mean)`` with ``skmisc.loess(span=0.3, degree=2)``, whose
default ``surface="interpolate"`` fits the local regression only at the vertices of a k-d tree
(cells split at the median until they hold at most ``floor(n * span * cell)`` points, ``cell=0.2``)
and blends between vertices with cubic Hermite polynomials built from the fitted value and slope at
each vertex. This module does the same in NumPy so HVG selection needs no compiled extension and
streams: only per-gene means and variances enter the fit. ``direct=True`` fits at every point.
"""

from __future__ import annotations

import numpy as np


def _local_fit(
    x: np.ndarray, y: np.ndarray, at: np.ndarray, q: int
) -> tuple[np.ndarray, np.ndarray]:
    """Value and slope at each ``at`` of the tricube-weighted quadratic fit on the q nearest x."""
    xs_order = np.argsort(x, kind="stable")
    xs, ys = x[xs_order], y[xs_order]
    n = len(xs)
    values = np.empty(len(at))
    slopes = np.empty(len(at))
    for j, v in enumerate(at):
        # q nearest neighbours of v in sorted xs form a contiguous window.
        right = int(np.searchsorted(xs, v))
        lo, hi = max(0, right - q), min(n, right + q)
        d = np.abs(xs[lo:hi] - v)
        kth = np.partition(d, q - 1)[q - 1] if len(d) > q else d.max()
        u = d / max(kth, 1e-300)
        w = np.where(u < 1.0, (1.0 - u**3) ** 3, 0.0)
        dx = xs[lo:hi] - v
        a = np.stack([np.ones_like(dx), dx, dx * dx], axis=1)
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(a * sw[:, None], ys[lo:hi] * sw, rcond=None)
        values[j], slopes[j] = coef[0], coef[1]
    return values, slopes


def _kd_vertices(xs: np.ndarray, fc: int) -> np.ndarray:
    """Vertices of loess's 1-D k-d tree over sorted ``xs`` (netlib ``ehg126``/``ehg124``).

    The box is the data range widened by 0.5% on each side; a cell with more than ``fc`` points is
    split at its median point, moved to the nearest end of a run of tied values (searching up, down,
    up, ... as loess does), unless the split lands on the cell's own bounds.
    """
    lo_v, hi_v = float(xs[0]), float(xs[-1])
    margin = 0.005 * max(hi_v - lo_v, 1e-10 * max(abs(lo_v), abs(hi_v)) + 1e-30)
    verts = {lo_v - margin, hi_v + margin}
    stack = [(0, len(xs) - 1, lo_v - margin, hi_v + margin)]
    while stack:
        lo, up, v_lo, v_up = stack.pop()
        if up - lo + 1 <= fc:
            continue
        m = (lo + up) // 2  # 0-based image of Fortran's (l+u)/2 on 1-based indices
        off = 0
        while lo <= m + off < up:
            if xs[m + off] != xs[m + off + 1]:
                m += off
                break
            off = -off
            if off >= 0:
                off += 1
        split = float(xs[m])
        if split in (v_lo, v_up):
            continue
        verts.add(split)
        stack.append((lo, m, v_lo, split))
        stack.append((m + 1, up, split, v_up))
    return np.array(sorted(verts))


def _hermite(x: np.ndarray, verts: np.ndarray, val: np.ndarray, slope: np.ndarray) -> np.ndarray:
    i = np.clip(np.searchsorted(verts, x, side="right") - 1, 0, len(verts) - 2)
    x0, x1 = verts[i], verts[i + 1]
    h = x1 - x0
    t = (x - x0) / h
    h00 = (1 + 2 * t) * (1 - t) ** 2
    h10 = t * (1 - t) ** 2
    h01 = t * t * (3 - 2 * t)
    h11 = t * t * (t - 1)
    return h00 * val[i] + h10 * h * slope[i] + h01 * val[i + 1] + h11 * h * slope[i + 1]


def loess_fit(
    x: np.ndarray, y: np.ndarray, *, span: float = 0.3, cell: float = 0.2, direct: bool = False
) -> np.ndarray:
    """Fitted values of a degree-2 LOESS of ``y`` on ``x`` at every ``x``.

    Args:
        x: predictor (1-D).
        y: response.
        span: fraction of points in each local neighbourhood.
        cell: k-d tree cell size as a fraction of ``span * n`` (interpolation accuracy).
        direct: fit at every point instead of interpolating between k-d tree vertices (slow:
            one least-squares solve per point; a reference for tests).

    Raises:
        ValueError: fewer than 3 points, or mismatched lengths.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length (got {x.shape} and {y.shape})")
    n = len(x)
    if n < 3:
        raise ValueError(f"loess needs at least 3 points (got {n})")
    q = max(3, min(n, int(np.floor(n * span))))
    if direct:
        return _local_fit(x, y, x, q)[0]
    xs = np.sort(x)
    fc = int(np.floor(n * span * cell))
    verts = _kd_vertices(xs, max(fc, 1))
    val, slope = _local_fit(x, y, verts, q)
    return _hermite(x, verts, val, slope)
