"""Re-tokenizing cells exactly like a checkpoint's training data, and padding them into batches.

An export's ``config.json`` records the shards' vocabulary (name, hash) and the tokenizer's full
description (strategy, options, special ids, median hash). :func:`checkpoint_tokenizer` rebuilds
both and refuses anything that does not reproduce that description bit for bit, so a model never
sees tokens it was not trained on. Cells come from an h5ad file, an in-memory AnnData or a shard
directory (whose manifest must match the checkpoint's vocabulary and tokenizer).

Shape legend: B = cells in a batch, L = padded length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from scforge.config.schema import TokenizerConfig
from scforge.contracts import Batch
from scforge.data.sources.base import CSRChunk, csr_chunk, pick_gene_ids
from scforge.data.tokenizers import Tokenizer, get_tokenizer
from scforge.data.vocab import build_vocab
from scforge.kernels import check_raw_counts


class CheckpointMismatchError(ValueError):
    """Input tokens or vocabulary differ from what the checkpoint was trained on."""


# ---------------------------------------------------------------------------- the tokenizer
def checkpoint_tokenizer(info: dict[str, Any], *, token_dictionary: str = "",
                         gene_medians: str = "") -> Tokenizer:
    """The tokenizer (with its vocabulary) an export's training shards were made with.

    Args:
        info: the export's ``config.json`` (:func:`scforge.training.export.read_pretrained_info`)
            or a shard manifest (both carry ``vocab``, ``vocab_hash`` and ``tokenizer``).
        token_dictionary: JSON path of a custom vocabulary (``vocab.kind=json`` exports record
            only the file's name, so its path must be given again).
        gene_medians: JSON path of custom medians, when the shards used them.

    Raises:
        CheckpointMismatchError: the rebuilt vocabulary or tokenizer differs from the recorded one.
    """
    vocab_d, tok_d = info.get("vocab") or {}, info.get("tokenizer") or {}
    if not vocab_d or not tok_d:
        raise CheckpointMismatchError(
            "the export records no vocabulary/tokenizer (exported without the shards' manifest); "
            "re-export with export_pretrained(..., manifest=load_manifest(shards))")
    name = str(vocab_d.get("name", ""))
    id_mapping = "auto" if vocab_d.get("id_mapping") else "none"
    if name in ("geneformer_v2", "geneformer_v1", "scgpt"):
        vocab = build_vocab(name, token_dictionary=token_dictionary, gene_medians=gene_medians,
                            id_mapping=id_mapping)
    elif token_dictionary:
        vocab = build_vocab("json", token_dictionary=token_dictionary, gene_medians=gene_medians,
                            id_mapping="none")
    else:
        raise CheckpointMismatchError(
            f"the checkpoint's vocabulary {name!r} is a custom JSON; pass its path "
            "(token_dictionary=..., --token-dictionary)")
    want = info.get("vocab_hash") or vocab_d.get("hash")
    if vocab.hash != want:
        raise CheckpointMismatchError(
            f"rebuilt vocabulary {vocab.name!r} has hash {vocab.hash[:12]}, the checkpoint was "
            f"trained on {str(want)[:12]}; pass the original token dictionary")
    tcfg = TokenizerConfig(strategy=str(tok_d["strategy"]), max_length=int(tok_d["max_length"]),
                           special_tokens=bool(tok_d["special_tokens"]))
    sub = getattr(tcfg, tcfg.strategy)
    setattr(tcfg, tcfg.strategy, dataclasses.replace(sub, **tok_d.get("options", {})))
    tokenizer = get_tokenizer(tcfg.strategy)(tcfg, vocab)
    check_same_tokenizer(tokenizer.describe(), tok_d, where="the rebuilt tokenizer")
    return tokenizer


def check_same_tokenizer(got: dict[str, Any], want: dict[str, Any], *, where: str) -> None:
    """Raises CheckpointMismatchError naming the fields where two tokenizer descriptions differ."""
    got_j = {k: _jsonish(v) for k, v in got.items()}
    want_j = {k: _jsonish(v) for k, v in want.items()}
    diff = sorted(k for k in set(got_j) | set(want_j) if got_j.get(k) != want_j.get(k))
    if diff:
        detail = ", ".join(f"{k}: {got_j.get(k)!r} vs {want_j.get(k)!r}" for k in diff[:4])
        raise CheckpointMismatchError(
            f"{where} differs from the checkpoint's tokenizer ({detail}); re-tokenize the data "
            "with the checkpoint's settings (or pass the h5ad instead of shards)")


def _jsonish(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonish(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_jsonish(x) for x in v]
    return v


def seq_len_of(info: dict[str, Any], model_max_len: int) -> int:
    """Longest sequence fed to the model: what the training loader delivered (and fits it)."""
    tok_len = int((info.get("tokenizer") or {}).get("max_length") or model_max_len)
    stream = ((info.get("train_config") or {}).get("data") or {}).get("stream") or {}
    loader_len = int(stream.get("max_len") or tok_len)
    return max(1, min(tok_len, loader_len, model_max_len))


# ---------------------------------------------------------------------------- cells
@dataclass
class TokenizedCells:
    """Token sequences of many cells (cell ``i`` is ``tokens[i]``), with their metadata."""

    tokens: list[np.ndarray]
    values: list[np.ndarray] | None
    cell_ids: list[str]
    obs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, idx: np.ndarray) -> TokenizedCells:
        idx = np.asarray(idx)
        vals = None if self.values is None else [self.values[i] for i in idx]
        return TokenizedCells([self.tokens[i] for i in idx], vals,
                              [self.cell_ids[i] for i in idx],
                              self.obs.iloc[idx].reset_index(drop=True))


class AnnDataRows:
    """Row chunks of an in-memory AnnData (the part of the Source protocol embedding needs)."""

    def __init__(self, adata: Any, *, layer: str = "X", gene_column: str = "") -> None:
        self.adata = adata
        self.path = "<AnnData>"
        if layer == "X":
            self.matrix = adata.X
        elif layer == "raw/X":
            self.matrix = adata.raw.X
        elif layer.startswith("layers/"):
            self.matrix = adata.layers[layer.split("/", 1)[1]]
        else:
            raise ValueError(f"layer={layer!r}; use X, raw/X or layers/<name>")
        var = adata.raw.var if layer == "raw/X" else adata.var
        self.n_cells, self.n_genes = int(adata.n_obs), int(self.matrix.shape[1])
        self._ids, self._symbols, _ = pick_gene_ids(
            self.path, [str(v) for v in var.index], list(var.columns),
            lambda c: [str(x) for x in var[c]], gene_column, self.n_genes)

    def gene_ids(self) -> list[str]:
        return self._ids

    def gene_symbols(self) -> list[str] | None:
        return self._symbols

    def read_rows(self, start: int, stop: int) -> CSRChunk:
        return csr_chunk(start, self.matrix[start:stop])


def tokenize_source(src: Any, tokenizer: Tokenizer, *, chunk_cells: int = 4096,
                    symbol_mapping: str = "auto", min_overlap: float = 0.05,
                    require_raw_counts: bool = True) -> Iterator[TokenizedCells]:
    """Tokenized chunks of a source's cells, in row order (no obs: callers attach it).

    Row ids for seeded tie-breaks are the rows' indices, as in a one-input shard job, so the
    tokens equal those ``scforge-shard`` writes for the same file.
    """
    gmap, _ = tokenizer.vocab.map_genes(src.gene_ids(), var_symbols=src.gene_symbols(),
                                        symbol_mapping=symbol_mapping, min_overlap=min_overlap)
    for start in range(0, src.n_cells, chunk_cells):
        chunk = src.read_rows(start, min(start + chunk_cells, src.n_cells))
        if require_raw_counts and (bad := check_raw_counts(chunk.data)) is not None:
            raise ValueError(f"{src.path}: the matrix holds {bad[1]} values but the tokenizer "
                             "expects raw counts; pass the raw-count layer (layer=...)")
        tok = tokenizer.tokenize(chunk, gmap, np.arange(start, start + chunk.n_rows))
        off = tok.offsets
        tokens = [tok.tokens[off[i]:off[i + 1]] for i in range(tok.n_cells)]
        values = (None if tok.values is None
                  else [tok.values[off[i]:off[i + 1]] for i in range(tok.n_cells)])
        yield TokenizedCells(tokens, values, [], pd.DataFrame())


def tokenize_adata(adata: Any, tokenizer: Tokenizer, *, layer: str = "X", gene_column: str = "",
                   **kw: Any) -> TokenizedCells:
    """All cells of an in-memory AnnData, tokenized, with its obs attached."""
    parts = list(tokenize_source(AnnDataRows(adata, layer=layer, gene_column=gene_column),
                                 tokenizer, **kw))
    tokens = [t for p in parts for t in p.tokens]
    values = None if tokenizer.value_dtype is None else [v for p in parts for v in p.values or []]
    return TokenizedCells(tokens, values, [str(n) for n in adata.obs_names],
                          adata.obs.reset_index(drop=True))


def read_shard_cells(path: str | Path, info: dict[str, Any]) -> TokenizedCells:
    """Every cell of a shard directory, refusing shards tokenized unlike the checkpoint."""
    from scforge.data.shard import load_manifest, read_shards

    man = load_manifest(path)
    check_same_tokenizer(man.get("tokenizer", {}), info.get("tokenizer", {}),
                         where=f"the tokenizer of the shards in {str(path)!r}")
    tokens, values, ids, obs = [], [], [], []
    fields = list(man.get("obs_fields", []))
    want = info.get("vocab_hash") or (info.get("vocab") or {}).get("hash")
    try:
        for cell in read_shards(path, expected_vocab_hash=want):
            tokens.append(cell["input_ids"])
            if "values" in cell:
                values.append(cell["values"])
            ids.append(str(cell["cell_id"]))
            obs.append({f: cell[f] for f in fields if f in cell})
    except ValueError as e:
        raise CheckpointMismatchError(str(e)) from None
    return TokenizedCells(tokens, values or None, ids, pd.DataFrame(obs))


# ---------------------------------------------------------------------------- batches
def pad_batch(tokens: list[np.ndarray], values: list[np.ndarray] | None, *, max_len: int,
              pad_id: int, eos_id: int, keep_eos: bool = True) -> Batch:
    """An unmasked :class:`Batch` of cells, truncated like the training collator.

    Truncation keeps the first ``max_len`` tokens; with ``keep_eos`` a truncated cell that ended
    in ``<eos>`` keeps it as its last token (the collator's rule), so inputs match training.
    """
    lens = [min(len(t), max_len) for t in tokens]
    width = max(lens)
    ids = np.full((len(tokens), width), pad_id, dtype=np.int64)
    vals = None if values is None else np.zeros((len(tokens), width), dtype=np.float32)
    for r, (t, n) in enumerate(zip(tokens, lens, strict=True)):
        ids[r, :n] = t[:n]
        if vals is not None and values is not None:
            vals[r, :n] = values[r][:n]
        if keep_eos and eos_id >= 0 and len(t) > n and int(t[-1]) == eos_id:
            ids[r, n - 1] = eos_id
            if vals is not None and values is not None:
                vals[r, n - 1] = values[r][-1]
    mask = np.arange(width)[None, :] < np.asarray(lens)[:, None]
    return Batch(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 values=None if vals is None else torch.from_numpy(vals))
