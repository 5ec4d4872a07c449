"""Test and benchmark helpers: realistic synthetic single-cell raw-count data."""

from __future__ import annotations

from scforge.testing.corpus import PRESETS, ensure_corpus, write_soma
from scforge.testing.synthetic import (
    SyntheticParams,
    default_gene_ids,
    gene_symbols_for,
    synthetic_anndata,
    synthetic_counts,
    write_synthetic_h5ad,
)

__all__ = [
    "PRESETS",
    "ensure_corpus",
    "write_soma",
    "SyntheticParams",
    "default_gene_ids",
    "gene_symbols_for",
    "synthetic_anndata",
    "synthetic_counts",
    "write_synthetic_h5ad",
]
