"""Corpus statistics: QC filters, nonzero gene medians, cell counts and highly variable genes.

Everything streams over inputs in row chunks (bounded memory) and works in one gene space for the
whole corpus (:mod:`scforge.data.stats.genes`). The sharder uses the QC filter and the HVG
selection; ``scforge-shard stats`` writes medians usable by ``rank_value``.
"""

from __future__ import annotations

from scforge.data.stats.corpus import CorpusStats, compute_corpus_stats, load_hvg_genes
from scforge.data.stats.genes import CorpusGenes, input_gene_keys
from scforge.data.stats.qc import CellFilter, select_rows

__all__ = [
    "CellFilter",
    "CorpusGenes",
    "CorpusStats",
    "compute_corpus_stats",
    "input_gene_keys",
    "load_hvg_genes",
    "select_rows",
]
