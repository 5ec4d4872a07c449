"""Numba kernels (``scforge.kernels``): tokenization, and the sparse dropout
corrections of CPU attention (``attention``).

Leaf layer: NumPy arrays in, NumPy arrays out. Every kernel works on a whole CSR chunk of cells
(parallel across cells, compiled once and cached on disk) and has a plain-NumPy reference twin
(``*_reference``) that defines its semantics; tests check the two agree on random inputs.

Ragged outputs use the same convention everywhere: ``tokens[offsets[i]:offsets[i + 1]]`` is cell
``i``.
"""

from __future__ import annotations

from scforge.kernels.binning import binned_reference, binned_tokenize, quantile_edges_reference
from scforge.kernels.common import GeneMap
from scforge.kernels.continuous import continuous_reference, continuous_tokenize
from scforge.kernels.rank_value import rank_value_reference, rank_value_tokenize
from scforge.kernels.validate import check_raw_counts

__all__ = [
    "GeneMap",
    "binned_reference",
    "binned_tokenize",
    "check_raw_counts",
    "continuous_reference",
    "continuous_tokenize",
    "quantile_edges_reference",
    "rank_value_reference",
    "rank_value_tokenize",
]
