"""Tokenizer recipes of the published models, recorded in imported exports.

An scforge export carries the vocabulary and the full tokenizer description of its training
shards; ``scforge embed``, ``evaluate`` and ``finetune`` re-tokenize new cells with exactly that
(:func:`scforge.eval.tokenize.checkpoint_tokenizer`). An imported checkpoint gets the recipe its
authors tokenized with, the same settings as ``configs/shard/<recipe>.yaml``:

=================  ==========================================================================
``geneformer_v2``  rank values, Geneformer V2 dictionaries (Ensembl-id collapsing), ``<cls>`` +
                   4,094 genes + ``<eos>`` (4,096 tokens)
``geneformer_v1``  rank values, Geneformer V1 dictionaries, 2,048 genes, no special tokens
``scgpt``          scGPT's 51 per-cell quantile bins over the scGPT census vocabulary, genes in
                   input order, ``<cls>`` first (``max_seq_len`` of ``args.json``)
=================  ==========================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scforge.config.schema import BinnedConfig, TokenizerConfig
from scforge.data.tokenizers import Tokenizer, get_tokenizer
from scforge.data.vocab import GeneVocab, build_vocab

GENEFORMER_VOCAB_SIZES = {20_275: "geneformer_v2", 25_426: "geneformer_v1"}
"""Embedding rows of Geneformer's published models -> the dictionary they were trained with."""
PICKLE_SUFFIXES = (".pkl", ".pickle")


@dataclass(frozen=True)
class Recipe:
    """How a published model tokenizes: vocabulary kind, strategy and lengths."""

    name: str
    vocab_kind: str
    id_mapping: str
    strategy: str
    max_length: int
    special_tokens: bool


RECIPES = {
    "geneformer_v2": Recipe("geneformer_v2", "geneformer_v2", "auto", "rank_value", 4096, True),
    "geneformer_v1": Recipe("geneformer_v1", "geneformer_v1", "none", "rank_value", 2048, False),
    "scgpt": Recipe("scgpt", "scgpt", "none", "binned_expression", 1200, True),
}


def check_not_pickle(path: str | Path, what: str) -> None:
    """Refuses pickled dictionaries (scforge never unpickles) with the conversion to do."""
    if Path(path).suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{what} {path} is a pickle; scforge never unpickles files: convert it "
                         "to JSON once (json.dump(pickle.load(f), out)) in an environment you "
                         "trust, or use the bundled dictionaries (--vocab geneformer_v1|v2)")


def geneformer_recipe(vocab_size: int, vocab: str = "auto") -> str:
    """``geneformer_v1`` / ``geneformer_v2``: given, or chosen by the embedding table's size.

    Raises:
        ValueError: ``auto`` and the size matches no Geneformer dictionary.
    """
    if vocab in ("geneformer_v1", "geneformer_v2"):
        return vocab
    if vocab not in ("auto", ""):
        raise ValueError(f"--vocab {vocab!r}; use auto, geneformer_v1 or geneformer_v2 (or "
                         "--token-dictionary for another dictionary)")
    if vocab_size not in GENEFORMER_VOCAB_SIZES:
        sizes = ", ".join(f"{v}: {k:,}" for k, v in GENEFORMER_VOCAB_SIZES.items())
        raise ValueError(f"vocab_size={vocab_size:,} matches no Geneformer token dictionary "
                         f"({sizes}); pass the model's dictionary with --token-dictionary "
                         "(JSON) and --gene-medians")
    return GENEFORMER_VOCAB_SIZES[vocab_size]


def build_recipe(name: str, *, max_length: int = 0, token_dictionary: str = "",
                 gene_medians: str = "", n_bins: int = 51) -> Tokenizer:
    """The tokenizer (with its vocabulary) of recipe ``name``.

    Args:
        name: a key of :data:`RECIPES`.
        max_length: tokens per cell, special tokens included (0 = the recipe's).
        token_dictionary: a JSON dictionary replacing the bundled one. When its content equals
            a bundled dictionary, the bundled kind is recorded (nothing to pass again later).
        gene_medians: JSON medians replacing the bundled ones (rank-value recipes).
        n_bins: bins of the scGPT recipe.
    """
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r}; use one of {sorted(RECIPES)}")
    r = RECIPES[name]
    for path, what in ((token_dictionary, "token dictionary"), (gene_medians, "gene medians")):
        if path:
            check_not_pickle(path, what)
            if not Path(path).is_file():
                raise FileNotFoundError(f"{what} {path} does not exist")
    kind = r.vocab_kind
    vocab = build_vocab(kind, gene_medians=gene_medians, id_mapping=r.id_mapping)
    if token_dictionary:
        given = (GeneVocab.from_scgpt(token_dictionary) if kind == "scgpt" else
                 build_vocab(kind, token_dictionary=token_dictionary,
                             gene_medians=gene_medians, id_mapping=r.id_mapping))
        if given.hash != vocab.hash:  # another dictionary: recorded as a JSON vocabulary
            vocab = (given if kind == "scgpt" else
                     build_vocab("json", token_dictionary=token_dictionary,
                                 gene_medians=gene_medians, id_mapping="none"))
            if kind != "scgpt" and vocab.medians is None:
                raise ValueError(f"token dictionary {token_dictionary} is not Geneformer's; "
                                 "rank-value tokenization needs its gene medians too: pass "
                                 "--gene-medians <JSON>")
    tcfg = TokenizerConfig(strategy=r.strategy, max_length=max_length or r.max_length,
                           special_tokens=r.special_tokens)
    if r.strategy == "binned_expression":
        tcfg.binned_expression = BinnedConfig(n_bins=n_bins, seed=0, order="input")
    return get_tokenizer(r.strategy)(tcfg, vocab)


def manifest_of(tokenizer: Tokenizer, recipe: str) -> dict[str, Any]:
    """The manifest fields an export records about its tokens (see ``export_pretrained``)."""
    return {
        "vocab": tokenizer.vocab.describe(),
        "vocab_hash": tokenizer.vocab.hash,
        "tokenizer": {**tokenizer.describe()},
        "recipe": recipe,
    }


def write_token_dictionary(vocab: GeneVocab, out: str | Path) -> Path:
    """``token_dictionary.json`` (gene -> id, specials included), Geneformer's content as JSON."""
    file = Path(out) / "token_dictionary.json"
    file.write_text(json.dumps(dict(sorted(vocab.tokens.items(), key=lambda kv: kv[1]))) + "\n")
    return file
