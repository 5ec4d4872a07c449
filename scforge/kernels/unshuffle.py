"""Byte un-shuffling of shard arrays (the loader's decode step).

Shards store multi-byte arrays byte-shuffled: all first bytes, then all second bytes, ... (see
``scforge.data.shard.format``). Un-shuffling is the inverse transpose. NumPy does it as a strided
copy per byte plane (~1 us per cell of 1.2k uint16 tokens here); this kernel reads the planes once
and writes each element once, vectorised (~0.25 us per cell), and returns the largest element so
that the loader's range check needs no second pass.

``unshuffle_reference`` is the plain-NumPy twin that defines the semantics.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def unshuffle_reference(planes: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """``planes``: uint8 [itemsize * count] byte planes -> the little-endian array they hold."""
    dt = np.dtype(dtype).newbyteorder("<")
    count = len(planes) // dt.itemsize
    return np.ascontiguousarray(planes.reshape(dt.itemsize, count).T).view(dt).reshape(-1)


@njit(cache=True, nogil=True)
def _un2(planes, out):  # pragma: no cover (compiled)
    n = len(out)
    m = np.uint16(0)
    for i in range(n):
        v = np.uint16(planes[i]) | (np.uint16(planes[n + i]) << np.uint16(8))
        out[i] = v
        m = max(m, v)
    return np.uint64(m)


@njit(cache=True, nogil=True)
def _un4(planes, out):  # pragma: no cover (compiled)
    n = len(out)
    m = np.uint32(0)
    for i in range(n):
        v = (np.uint32(planes[i]) | (np.uint32(planes[n + i]) << np.uint32(8))
             | (np.uint32(planes[2 * n + i]) << np.uint32(16))
             | (np.uint32(planes[3 * n + i]) << np.uint32(24)))
        out[i] = v
        m = max(m, v)
    return np.uint64(m)


@njit(cache=True, nogil=True)
def _un8(planes, out):  # pragma: no cover (compiled)
    n = len(out)
    m = np.uint64(0)
    for i in range(n):
        v = np.uint64(0)
        for k in range(8):
            v |= np.uint64(planes[k * n + i]) << np.uint64(8 * k)
        out[i] = v
        m = max(m, v)
    return m


_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_KERNELS = {2: _un2, 4: _un4, 8: _un8}


def unshuffle(planes: np.ndarray, dtype: np.dtype | str, out: np.ndarray | None = None
              ) -> tuple[np.ndarray, int]:
    """Un-shuffles byte planes into ``out`` (or a new array); returns it and its largest value
    read as an unsigned integer of the dtype's width (meaningful for unsigned integer dtypes).

    Args:
        planes: uint8 [itemsize * count], C-contiguous.
        dtype: the array's dtype (itemsize 2, 4 or 8; byte order little-endian).
        out: a C-contiguous array of ``dtype`` and ``count`` elements to fill.
    """
    dt = np.dtype(dtype).newbyteorder("<")
    size = dt.itemsize
    if size not in _KERNELS:
        raise ValueError(f"unshuffle handles itemsize 2, 4 or 8, not {size} ({dt})")
    if len(planes) % size:
        raise ValueError(f"{len(planes)} plane bytes are not a multiple of itemsize {size}")
    count = len(planes) // size
    if out is None:
        out = np.empty(count, dtype=dt)
    if len(out) != count or out.dtype.itemsize != size:
        raise ValueError(f"out holds {len(out)} x {out.dtype}, need {count} x {dt}")
    peak = _KERNELS[size](planes, out.view(_UINT[size])) if count else 0
    return out, int(peak)


def warm() -> None:
    """Loads (or compiles) the kernels for every itemsize."""
    for size in _KERNELS:
        unshuffle(np.zeros(2 * size, dtype=np.uint8), _UINT[size])
