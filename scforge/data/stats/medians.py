"""Per-gene median of the nonzero normalised values, streamed in bounded memory.

Exact while the values fit in ``max_exact_values`` (8 bytes each): every (gene, value) pair is
packed into one uint64 (gene in the high 32 bits, the float32 bit pattern, which orders like the
value for positive floats, in the low 32) so one in-place NumPy sort groups and orders them all.
Past the budget the buffered values are folded into a per-gene log-bucket histogram (the DDSketch
mapping: bucket ``ceil(log_gamma(v))`` with ``gamma = (1 + a) / (1 - a)``), which returns a value
within relative error ``a`` of the exact median for every gene (each of the two middle order
statistics is within ``a`` of its bucket's representative, so their mean is too), whatever the
corpus size.
Normalised values lie in ``[target_sum * 1e-7, target_sum]`` (a count of 1 in a cell of <= 10M
counts, up to the whole target sum), which bounds the histogram to ``ceil(ln(1e7) / ln(gamma))``
buckets per gene (1,612 for ``a = 0.005``; uint32 counts, so 6.4 KB per gene).

Memory: the exact buffer peaks at 16 bytes per value while ``result()`` sorts it (the chunks and
their concatenation); the sketch holds ``n_genes * buckets_per_gene * 4`` bytes, nothing per value.
Exact medians are of the float32-rounded values (relative error <= 6e-8).
"""

from __future__ import annotations

import numpy as np

DYNAMIC_RANGE = 1e7
"""Ratio of the largest to the smallest value the sketch resolves (1 count in a 10M-count cell)."""


class NonzeroMedians:
    """Accumulates (gene, value) pairs; ``result()`` gives medians (NaN for genes never seen).

    Args:
        n_genes: size of the gene space.
        max_exact_values: values buffered for an exact answer before switching to the sketch.
        relative_error: accuracy ``a`` of the sketch.
        max_value: the largest value that can occur (the normalisation's target sum); the
            sketch resolves ``[max_value / DYNAMIC_RANGE, max_value]``.
    """

    def __init__(
        self,
        n_genes: int,
        *,
        max_exact_values: int,
        relative_error: float,
        max_value: float = 10_000.0,
    ) -> None:
        if not 0.0 < relative_error < 0.5:
            raise ValueError(f"relative_error={relative_error} must be in (0, 0.5)")
        self.n_genes = n_genes
        self.v_max = float(max_value)
        self.v_min = self.v_max / DYNAMIC_RANGE
        self.max_exact = int(max_exact_values)
        self.alpha = float(relative_error)
        self.gamma = (1 + self.alpha) / (1 - self.alpha)
        self._log_gamma = np.log(self.gamma)
        self._k0 = int(np.ceil(np.log(self.v_min) / self._log_gamma))
        self.n_buckets = int(np.ceil(np.log(self.v_max) / self._log_gamma)) - self._k0 + 1
        self._buf: list[np.ndarray] = []
        self._n_buf = 0
        self._hist: np.ndarray | None = None
        self.n_values = 0

    @property
    def exact(self) -> bool:
        return self._hist is None

    def add(self, genes: np.ndarray, values: np.ndarray) -> None:
        """Adds positive ``values`` of ``genes`` (parallel arrays)."""
        if len(values) == 0:
            return
        self.n_values += len(values)
        if self._hist is None and self._n_buf + len(values) <= self.max_exact:
            v32 = np.asarray(values, dtype=np.float32)
            packed = (np.asarray(genes, dtype=np.uint64) << np.uint64(32)) | v32.view(
                np.uint32
            ).astype(np.uint64)
            self._buf.append(packed)
            self._n_buf += len(packed)
            return
        if self._hist is None:
            self._to_sketch()
        self._add_hist(np.asarray(genes, dtype=np.int64), np.asarray(values, dtype=np.float64))

    def _to_sketch(self) -> None:
        self._hist = np.zeros((self.n_genes, self.n_buckets), dtype=np.uint32)
        for packed in self._buf:
            g = (packed >> np.uint64(32)).astype(np.int64)
            v = (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
            self._add_hist(g, v.astype(np.float64))
        self._buf, self._n_buf = [], 0

    def _bucket(self, v: np.ndarray) -> np.ndarray:
        k = np.ceil(np.log(np.clip(v, self.v_min, self.v_max)) / self._log_gamma).astype(np.int64)
        return np.clip(k - self._k0, 0, self.n_buckets - 1)

    def _add_hist(self, genes: np.ndarray, values: np.ndarray) -> None:
        flat = genes * self.n_buckets + self._bucket(values)
        np.add.at(self._hist.reshape(-1), flat, 1)

    def result(self) -> np.ndarray:
        """float64 [n_genes]: each gene's median nonzero value (NaN where it has none)."""
        return self._exact_result() if self._hist is None else self._sketch_result()

    def _exact_result(self) -> np.ndarray:
        out = np.full(self.n_genes, np.nan)
        if not self._buf:
            return out
        allv = np.concatenate(self._buf)
        self._buf = [allv]  # drop the chunks now: the peak is the chunks + one copy
        allv.sort()
        # Gene g's values start where the packed keys reach g << 32: no per-value gene array.
        bounds = np.searchsorted(
            allv, np.arange(self.n_genes + 1, dtype=np.uint64) << np.uint64(32)
        )
        starts, counts = bounds[:-1], np.diff(bounds)
        has = counts > 0
        lo = starts[has] + (counts[has] - 1) // 2
        hi = starts[has] + counts[has] // 2

        def value(i: np.ndarray) -> np.ndarray:
            bits = (allv[i] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
            return bits.view(np.float32).astype(np.float64)

        out[has] = 0.5 * (value(lo) + value(hi))
        return out

    def _sketch_result(self, block: int = 4096) -> np.ndarray:
        out = np.full(self.n_genes, np.nan)
        for g0 in range(0, self.n_genes, block):  # blocks bound the int64 cumsum's memory
            hist = self._hist[g0 : g0 + block]
            cum = np.cumsum(hist, axis=1, dtype=np.int64)
            counts = cum[:, -1]
            has = counts > 0
            reps = []
            for rank in ((counts - 1) // 2, counts // 2):  # the two middle order statistics
                b = (cum <= rank[:, None]).sum(axis=1)
                reps.append(2.0 * self.gamma ** (b + self._k0) / (self.gamma + 1.0))
            out[g0 : g0 + block][has] = (0.5 * (reps[0] + reps[1]))[has]
        return out

    def describe(self) -> dict:
        if self._hist is None:
            return {
                "method": "exact",
                "n_values": self.n_values,
                "max_exact_values": self.max_exact,
            }
        return {
            "method": "log-histogram sketch",
            "relative_error": self.alpha,
            "n_values": self.n_values,
            "buckets_per_gene": self.n_buckets,
            "value_range": [self.v_min, self.v_max],
        }
