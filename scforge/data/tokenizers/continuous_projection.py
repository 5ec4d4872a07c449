"""``continuous_projection``: genes with float expression values (TranscriptFormer-style)."""

from __future__ import annotations

import numpy as np

from scforge.config.schema import TokenizerConfig
from scforge.data.sources.base import CSRChunk
from scforge.data.tokenizers.base import TOKENIZERS, TokenizedChunk, Tokenizer
from scforge.data.vocab import GeneVocab
from scforge.kernels import GeneMap, continuous_tokenize


@TOKENIZERS.register("continuous_projection")
class ContinuousProjectionTokenizer(Tokenizer):
    """Raw or log1p-normalised values kept as floats (float16 by default), optionally clipped."""

    name = "continuous_projection"

    def __init__(self, cfg: TokenizerConfig, vocab: GeneVocab) -> None:
        super().__init__(cfg, vocab)
        self.value_dtype = np.dtype(cfg.continuous_projection.value_dtype)

    def _run(self, chunk: CSRChunk, gene_map: GeneMap, row_ids: np.ndarray) -> TokenizedChunk:
        opt = self.cfg.continuous_projection
        tokens, values, offsets = continuous_tokenize(
            chunk.indptr,
            chunk.indices,
            chunk.data,
            gene_map,
            max_genes=self.max_genes,
            transform=opt.transform,
            target_sum=opt.target_sum,
            clip=opt.clip,
            order=opt.order,
            cls_id=self.cls_id,
            eos_id=self.eos_id,
        )
        return TokenizedChunk(tokens, offsets, values)
