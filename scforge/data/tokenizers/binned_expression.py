"""``binned_expression``: scGPT's per-cell quantile bins (values stored as uint8)."""

from __future__ import annotations

import numpy as np

from scforge.data.sources.base import CSRChunk
from scforge.data.tokenizers.base import TOKENIZERS, TokenizedChunk, Tokenizer
from scforge.kernels import GeneMap, binned_tokenize


@TOKENIZERS.register("binned_expression")
class BinnedExpressionTokenizer(Tokenizer):
    """Nonzero genes with their expression bin (1..n_bins-1); edges from all nonzero counts."""

    name = "binned_expression"
    value_dtype = np.dtype(np.uint8)

    def _run(self, chunk: CSRChunk, gene_map: GeneMap, row_ids: np.ndarray) -> TokenizedChunk:
        opt = self.cfg.binned_expression
        tokens, bins, offsets = binned_tokenize(
            chunk.indptr,
            chunk.indices,
            chunk.data,
            gene_map,
            row_ids=row_ids,
            n_bins=opt.n_bins,
            seed=opt.seed,
            max_genes=self.max_genes,
            order=opt.order,
            cls_id=self.cls_id,
            eos_id=self.eos_id,
        )
        return TokenizedChunk(tokens, offsets, bins)
