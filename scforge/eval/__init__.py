"""Evaluation: embeddings of exported models, and a harness of registered evaluation tasks.

scib-metrics (JAX) and scanpy are imported lazily inside the tasks that need them, so importing
this package (and the training core) never pulls JAX in.
"""

from __future__ import annotations

from scforge.eval.embed import embed, embed_cells, embed_main
from scforge.eval.tokenize import (
    CheckpointMismatchError,
    TokenizedCells,
    checkpoint_tokenizer,
    pad_batch,
    tokenize_adata,
)

__all__ = [
    "CheckpointMismatchError",
    "TokenizedCells",
    "checkpoint_tokenizer",
    "embed",
    "embed_cells",
    "embed_main",
    "pad_batch",
    "tokenize_adata",
]
