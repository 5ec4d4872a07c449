"""Tokenizer base class and the tokenized-chunk contract."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from scforge.config.schema import TokenizerConfig
from scforge.data.sources.base import CSRChunk
from scforge.data.vocab import GeneVocab
from scforge.kernels import GeneMap
from scforge.registry import Registry


@dataclass
class TokenizedChunk:
    """Token sequences of a chunk of cells: cell ``i`` is ``tokens[offsets[i]:offsets[i+1]]``."""

    tokens: np.ndarray
    offsets: np.ndarray
    values: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        return len(self.offsets) - 1


class Tokenizer:
    """Base class: subclasses set ``name``/``value_dtype`` and implement ``_run``."""

    name: str = ""
    value_dtype: np.dtype | None = None

    def __init__(self, cfg: TokenizerConfig, vocab: GeneVocab) -> None:
        self.cfg = cfg
        self.vocab = vocab
        use = cfg.special_tokens
        self.cls_id = vocab.special("<cls>") if use else -1
        self.eos_id = vocab.special("<eos>") if use else -1
        self.max_genes = cfg.max_length - int(self.cls_id >= 0) - int(self.eos_id >= 0)
        if self.max_genes < 1:
            raise ValueError(f"tokenizer.max_length={cfg.max_length} leaves no room for genes")

    @property
    def has_values(self) -> bool:
        return self.value_dtype is not None

    def tokenize(self, chunk: CSRChunk, gene_map: GeneMap, row_ids: np.ndarray) -> TokenizedChunk:
        """Tokenizes a chunk; ``row_ids`` are the cells' global ids (seed tie-breaks)."""
        out = self._run(chunk, gene_map, row_ids)
        out.tokens = out.tokens.astype(self.vocab.token_dtype, copy=False)
        if out.values is not None and self.value_dtype is not None:
            out.values = out.values.astype(self.value_dtype, copy=False)
        return out

    def _run(self, chunk: CSRChunk, gene_map: GeneMap, row_ids: np.ndarray) -> TokenizedChunk:
        raise NotImplementedError

    def options(self) -> dict:
        """The options of this strategy only (stored in the manifest)."""
        return asdict(getattr(self.cfg, self.name))

    def describe(self) -> dict:
        """Full description: what a reader needs to know and what must match on resume."""
        return {
            "strategy": self.name,
            "max_length": self.cfg.max_length,
            "special_tokens": self.cfg.special_tokens,
            "cls_id": self.cls_id,
            "eos_id": self.eos_id,
            "options": self.options(),
            "token_dtype": str(self.vocab.token_dtype),
            "value_dtype": None if self.value_dtype is None else str(np.dtype(self.value_dtype)),
            "extra": self._extra_fingerprint(),
        }

    def _extra_fingerprint(self) -> dict:
        return {}


def array_hash(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]


TOKENIZERS: Registry[type[Tokenizer]] = Registry("tokenizer")
