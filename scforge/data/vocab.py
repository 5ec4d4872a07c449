"""Gene vocabulary: token ids, special tokens, normalisation medians, and input-gene mapping.

A vocabulary is keyed either by Ensembl ids (Geneformer) or by gene symbols (scGPT). Mapping an
input's genes onto it follows Geneformer V2: ids are upper-cased and sent through the Ensembl
mapping dictionary (retired ids and aliases become canonical ids; only targets inside the
vocabulary are kept), and columns landing on the same token have their counts summed. Symbols are
first translated to Ensembl ids (or ids to symbols, for a symbol vocabulary).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scforge.kernels import GeneMap
from scforge.resources import load_json

ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
SPECIAL_NAMES = ("<pad>", "<mask>", "<cls>", "<eos>")

_BUNDLED = {
    "geneformer_v2": (
        "geneformer_v2_token_dictionary.json.gz",
        "geneformer_v2_gene_medians.json.gz",
        "geneformer_v2_ensembl_mapping.json.gz",
    ),
    "geneformer_v1": (
        "geneformer_v1_token_dictionary.json.gz",
        "geneformer_v1_gene_medians.json.gz",
        "",
    ),
    "scgpt": ("scgpt_census_vocab.json.gz", "", ""),
}
SYMBOL_TO_ID = "geneformer_v2_gene_name_id.json.gz"
ID_TO_SYMBOL = "gencode_v44_id2name.json.gz"


class VocabError(ValueError):
    """Input genes cannot be mapped onto the vocabulary (message says why and what to do)."""


def looks_like_ensembl(ids: list[str], *, frac: float = 0.9) -> bool:
    """True if at least ``frac`` of ``ids`` look like Ensembl gene ids."""
    if not ids:
        return False
    return sum(bool(ENSEMBL_RE.match(str(g))) for g in ids) >= frac * len(ids)


@dataclass(frozen=True)
class MappingReport:
    """How an input's genes mapped onto the vocabulary."""

    n_input_genes: int
    n_mapped_genes: int
    n_tokens_hit: int
    n_remapped: int
    """Columns whose id changed through the mapping dictionary (alias/retired -> canonical)."""
    n_collapse_groups: int
    """Tokens receiving the summed counts of several columns."""
    via: str
    examples_unmapped: list[str] = field(default_factory=list)

    @property
    def fraction_mapped(self) -> float:
        return self.n_mapped_genes / max(self.n_input_genes, 1)

    def as_dict(self) -> dict:
        return {
            "n_input_genes": self.n_input_genes,
            "n_mapped_genes": self.n_mapped_genes,
            "fraction_genes_mapped": round(self.fraction_mapped, 6),
            "n_tokens_hit": self.n_tokens_hit,
            "n_remapped": self.n_remapped,
            "n_collapse_groups": self.n_collapse_groups,
            "via": self.via,
        }


class GeneVocab:
    """Token dictionary plus what is needed to map genes onto it.

    Args:
        tokens: gene (Ensembl id or symbol) or special token -> id.
        name: short description stored in manifests.
        keyed_by: ``"ensembl"`` or ``"symbol"``.
        medians: optional gene -> normalisation median (rank-value tokenization).
        id_mapping: optional upper-cased id/alias -> canonical id (targets not in ``tokens`` are
            ignored, as in Geneformer).
    """

    def __init__(
        self,
        tokens: dict[str, int],
        *,
        name: str,
        keyed_by: str,
        medians: dict[str, float] | None = None,
        id_mapping: dict[str, str] | None = None,
    ) -> None:
        if keyed_by not in ("ensembl", "symbol"):
            raise ValueError(f"keyed_by={keyed_by!r}; use 'ensembl' or 'symbol'")
        ids = list(tokens.values())
        if len(set(ids)) != len(ids):
            raise ValueError(f"vocabulary {name!r} assigns the same id to several genes")
        if min(ids, default=0) < 0:
            raise ValueError(f"vocabulary {name!r} has negative token ids")
        self.tokens = dict(tokens)
        self.name = name
        self.keyed_by = keyed_by
        self.medians = medians
        self.id_mapping = (
            {k: v for k, v in id_mapping.items() if v in self.tokens} if id_mapping else None
        )
        self.specials = {s: self.tokens[s] for s in SPECIAL_NAMES if s in self.tokens}

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_geneformer(
        cls,
        version: str = "v2",
        *,
        token_dictionary: str = "",
        gene_medians: str = "",
        id_mapping: str = "auto",
    ) -> GeneVocab:
        """Geneformer V1 or V2 dictionaries (bundled, or JSON paths overriding them)."""
        if version not in ("v1", "v2"):
            raise ValueError(f"Geneformer version {version!r}; use 'v1' or 'v2'")
        kind = f"geneformer_{version}"
        tok_res, med_res, map_res = _BUNDLED[kind]
        tokens = load_json(token_dictionary or tok_res)
        medians = load_json(gene_medians or med_res)
        if id_mapping == "auto":
            id_mapping = map_res
        mapping = load_json(id_mapping) if id_mapping and id_mapping != "none" else None
        return cls(tokens, name=kind, keyed_by="ensembl", medians=medians, id_mapping=mapping)

    @classmethod
    def from_scgpt(cls, path: str = "") -> GeneVocab:
        """scGPT's gene-symbol vocabulary; ``<pad>``, ``<cls>``, ``<eoc>`` are appended as in its
        pretraining (``<eoc>`` doubles as end token) plus a ``<mask>`` for MLM."""
        base = dict(load_json(path or _BUNDLED["scgpt"][0]))
        nxt = max(base.values()) + 1
        for special in ("<pad>", "<cls>", "<eoc>", "<mask>"):
            if special not in base:
                base[special] = nxt
                nxt += 1
        vocab = cls(base, name="scgpt", keyed_by="symbol")
        vocab.specials["<eos>"] = base["<eoc>"]
        return vocab

    @classmethod
    def from_json(cls, path: str, *, medians: str = "", id_mapping: str = "none") -> GeneVocab:
        """Any gene -> id JSON; keyed_by is inferred from the keys."""
        tokens = load_json(path)
        genes = [g for g in tokens if not g.startswith("<")]
        keyed_by = "ensembl" if looks_like_ensembl(genes[:2000]) else "symbol"
        med = load_json(medians) if medians else None
        mapping = load_json(id_mapping) if id_mapping not in ("", "none", "auto") else None
        return cls(tokens, name=Path(path).name, keyed_by=keyed_by, medians=med, id_mapping=mapping)

    @classmethod
    def from_corpus(cls, genes: list[str], *, name: str = "corpus") -> GeneVocab:
        """Specials ``<pad> <mask> <cls> <eos>`` = 0..3, then ``genes`` in sorted order."""
        uniq = sorted(set(genes))
        tokens = {s: i for i, s in enumerate(SPECIAL_NAMES)}
        tokens.update({g: i + len(SPECIAL_NAMES) for i, g in enumerate(uniq)})
        keyed_by = "ensembl" if looks_like_ensembl(uniq[:2000]) else "symbol"
        return cls(tokens, name=name, keyed_by=keyed_by)

    # ----------------------------------------------------------------- properties
    @property
    def size(self) -> int:
        """Embedding table size needed: max id + 1."""
        return max(self.tokens.values()) + 1

    @property
    def token_dtype(self) -> np.dtype:
        return np.dtype(np.uint16) if self.size <= 65536 else np.dtype(np.uint32)

    def special(self, name: str) -> int:
        """Id of a special token, or -1 if the vocabulary has none."""
        return self.specials.get(name, -1)

    @property
    def hash(self) -> str:
        """sha256 of the token dictionary (sorted JSON); shards record it, readers check it."""
        raw = json.dumps(self.tokens, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()

    def median_array(self) -> np.ndarray:
        """float64 [size] medians by token id (1.0 for specials / genes without a median)."""
        if self.medians is None:
            raise VocabError(
                f"vocabulary {self.name!r} has no gene medians; rank_value needs "
                "them (set vocab.gene_medians=<median JSON>)"
            )
        arr = np.ones(self.size, dtype=np.float64)
        for g, t in self.tokens.items():
            m = self.medians.get(g)
            if m is not None:
                if not m > 0:
                    raise VocabError(f"gene median of {g} is {m}; medians must be positive")
                arr[t] = m
        return arr

    def id_to_gene(self) -> list[str]:
        """Token id -> gene key (empty string for unused ids)."""
        out = [""] * self.size
        for g, t in self.tokens.items():
            out[t] = g
        return out

    def describe(self) -> dict:
        return {
            "name": self.name,
            "keyed_by": self.keyed_by,
            "size": self.size,
            "n_genes": sum(not g.startswith("<") for g in self.tokens),
            "specials": self.specials,
            "hash": self.hash,
            "id_mapping": self.id_mapping is not None,
        }

    # ----------------------------------------------------------------- mapping
    def map_genes(
        self,
        var_ids: list[str],
        *,
        var_symbols: list[str] | None = None,
        symbol_mapping: str = "auto",
        min_overlap: float = 0.0,
    ) -> tuple[GeneMap, MappingReport]:
        """Maps an input's genes (columns) onto token ids.

        Args:
            var_ids: gene id of each column (Ensembl ids or symbols).
            var_symbols: optional symbols of each column (used for a symbol vocabulary).
            symbol_mapping: symbol -> Ensembl JSON for symbol inputs with an Ensembl vocabulary.
            min_overlap: raise VocabError if fewer than this fraction of columns map.

        Raises:
            VocabError: duplicated ids, or too little overlap (the message reports the overlap).
        """
        dup = [g for g, c in Counter(var_ids).items() if c > 1]
        if dup:
            raise VocabError(
                f"input gene ids are not unique ({len(dup)} duplicated, e.g. {dup[0]!r}); make "
                "them unique (anndata: adata.var_names_make_unique()) or pick another id column "
                "with source.gene_column=<var column>"
            )
        ids_are_ensembl = looks_like_ensembl(list(var_ids[:5000]))
        keys, via = self._keys_for(var_ids, var_symbols, ids_are_ensembl, symbol_mapping)
        col_token = np.full(len(var_ids), -1, dtype=np.int32)
        n_remapped = 0
        for i, k in enumerate(keys):
            if k is None:
                continue
            if self.id_mapping is not None:
                canon = self.id_mapping.get(k.upper())
                if canon is not None and canon != k:
                    n_remapped += 1
                t = self.tokens.get(canon, -1) if canon is not None else -1
            else:
                t = self.tokens.get(k, -1)
            if t >= 0 and not str(k).startswith("<"):
                col_token[i] = t
        gene_map = GeneMap.from_col_token(col_token)
        unmapped = [str(var_ids[i]) for i in np.flatnonzero(col_token < 0)[:5]]
        report = MappingReport(
            n_input_genes=len(var_ids),
            n_mapped_genes=int((col_token >= 0).sum()),
            n_tokens_hit=len(np.unique(col_token[col_token >= 0])),
            n_remapped=n_remapped,
            n_collapse_groups=gene_map.n_groups,
            via=via,
            examples_unmapped=unmapped,
        )
        if report.fraction_mapped < min_overlap or report.n_mapped_genes == 0:
            raise VocabError(
                f"only {report.n_mapped_genes} of {report.n_input_genes} input genes "
                f"({100 * report.fraction_mapped:.1f}%) are in vocabulary {self.name!r} "
                f"(mapped via {via}; unmapped e.g. {unmapped[:3]}); check the organism and gene "
                "id column (source.gene_column), or use a vocabulary built for this data"
            )
        return gene_map, report

    def _keys_for(self, var_ids, var_symbols, ids_are_ensembl, symbol_mapping):
        if self.keyed_by == "ensembl":
            if ids_are_ensembl:
                return [str(g).split(".")[0] for g in var_ids], "ensembl ids"
            sym = load_json(SYMBOL_TO_ID if symbol_mapping in ("auto", "") else symbol_mapping)
            return [sym.get(str(g)) or sym.get(str(g).upper()) for g in var_ids], "symbol map"
        # symbol vocabulary
        if not ids_are_ensembl:
            return [str(g) for g in var_ids], "symbols"
        if var_symbols is not None:
            return [str(s) for s in var_symbols], "var symbols column"
        id2name = load_json(ID_TO_SYMBOL)
        return [id2name.get(str(g).split(".")[0]) for g in var_ids], "GENCODE id->symbol"


def build_vocab(
    kind: str, *, token_dictionary: str = "", gene_medians: str = "", id_mapping: str = "auto"
) -> GeneVocab:
    """Vocabulary from a config ``vocab.kind`` (see :class:`scforge.config.VocabConfig`)."""
    if kind in ("geneformer_v2", "geneformer_v1"):
        return GeneVocab.from_geneformer(
            kind[-2:],
            token_dictionary=token_dictionary,
            gene_medians=gene_medians,
            id_mapping=id_mapping,
        )
    if kind == "scgpt":
        return GeneVocab.from_scgpt(token_dictionary)
    if kind == "json":
        return GeneVocab.from_json(
            token_dictionary,
            medians=gene_medians,
            id_mapping="none" if id_mapping == "auto" else id_mapping,
        )
    raise VocabError(f"vocab.kind={kind!r}; choose geneformer_v2, geneformer_v1, scgpt or json")
