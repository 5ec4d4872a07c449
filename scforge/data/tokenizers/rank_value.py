"""``rank_value``: Geneformer's rank-value encoding (exact Geneformer tokens)."""

from __future__ import annotations

import numpy as np

from scforge.config.schema import TokenizerConfig
from scforge.data.sources.base import CSRChunk
from scforge.data.tokenizers.base import TOKENIZERS, TokenizedChunk, Tokenizer, array_hash
from scforge.data.vocab import GeneVocab
from scforge.kernels import GeneMap, rank_value_tokenize


@TOKENIZERS.register("rank_value")
class RankValueTokenizer(Tokenizer):
    """Genes ranked by count / cell total * target_sum / corpus median, highest first."""

    name = "rank_value"
    value_dtype = None

    def __init__(self, cfg: TokenizerConfig, vocab: GeneVocab) -> None:
        super().__init__(cfg, vocab)
        self.medians = vocab.median_array()

    def _run(self, chunk: CSRChunk, gene_map: GeneMap, row_ids: np.ndarray) -> TokenizedChunk:
        tokens, offsets = rank_value_tokenize(
            chunk.indptr,
            chunk.indices,
            chunk.data,
            gene_map,
            self.medians,
            max_genes=self.max_genes,
            target_sum=self.cfg.rank_value.target_sum,
            cls_id=self.cls_id,
            eos_id=self.eos_id,
        )
        return TokenizedChunk(tokens, offsets)

    def _extra_fingerprint(self) -> dict:
        return {"medians_sha256": array_hash(self.medians)}
