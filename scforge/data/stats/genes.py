"""One gene space for a corpus of inputs that name genes differently.

Statistics (medians, cell counts, HVGs) are keyed by gene, not by vocabulary token, so they can
build a vocabulary as well as serve one. Each input column gets a key: its Ensembl id (version
suffix dropped, upper case) when the input has Ensembl ids, else its symbol translated to an
Ensembl id through the symbol map (Geneformer's, or ``vocab.symbol_mapping``), else the symbol
itself. Columns of one input sharing a key are summed, as the tokenizers do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scforge.data.sources import Source, SourceError
from scforge.data.vocab import SYMBOL_TO_ID, looks_like_ensembl
from scforge.resources import load_json

MIN_SYMBOL_TRANSLATION = 0.5
"""A symbol input joining an Ensembl corpus must have at least this fraction translated."""


@dataclass(frozen=True)
class InputGenes:
    """Keys of one input's columns."""

    kind: str
    """``ensembl`` or ``symbol`` (what the input's gene ids are)."""
    keys: list[str]
    fraction_translated: float
    """For symbol inputs: fraction of symbols with an Ensembl id in the symbol map."""


def input_gene_keys(src: Source, *, symbol_mapping: str = "auto") -> InputGenes:
    """The corpus key of each column of ``src``."""
    ids = [str(g) for g in src.gene_ids()]
    if looks_like_ensembl(ids[:5000]):
        return InputGenes("ensembl", [g.split(".")[0].upper() for g in ids], 1.0)
    sym = load_json(SYMBOL_TO_ID if symbol_mapping in ("auto", "") else symbol_mapping)
    keys, hits = [], 0
    for g in ids:
        e = sym.get(g) or sym.get(g.upper())
        hits += e is not None
        keys.append(str(e).upper() if e is not None else g)
    return InputGenes("symbol", keys, hits / max(len(ids), 1))


class CorpusGenes:
    """The union gene space of several inputs and each input's column -> key index.

    Raises:
        SourceError: inputs mix Ensembl ids and symbols that mostly cannot be translated.
    """

    def __init__(self, sources: list[Source], *, symbol_mapping: str = "auto") -> None:
        per = [input_gene_keys(s, symbol_mapping=symbol_mapping) for s in sources]
        check_mixed_id_types(sources, per)
        keys = sorted({k for p in per for k in p.keys})
        index = {k: i for i, k in enumerate(keys)}
        self.keys = keys
        self.inputs = per
        self.col_key = [np.fromiter((index[k] for k in p.keys), np.int64, len(p.keys)) for p in per]
        self.has_duplicates = [len(np.unique(c)) != len(c) for c in self.col_key]

    @property
    def n_keys(self) -> int:
        return len(self.keys)


def check_mixed_id_types(sources: list[Source], per: list[InputGenes]) -> None:
    """Refuses a corpus whose inputs name genes in kinds that cannot be brought together."""
    kinds = {p.kind for p in per}
    if len(kinds) < 2:
        return
    ens = next(s.path for s, p in zip(sources, per, strict=True) if p.kind == "ensembl")
    for s, p in zip(sources, per, strict=True):
        if p.kind == "symbol" and p.fraction_translated < MIN_SYMBOL_TRANSLATION:
            raise SourceError(
                f"inputs mix gene-id types that cannot be mapped: {ens} has Ensembl ids but "
                f"{s.path} has gene names of which only {100 * p.fraction_translated:.0f}% "
                f"translate to Ensembl ids (e.g. {s.gene_ids()[0]!r}); give {s.path} an Ensembl "
                "id column (source.gene_column=<var column>), pass a symbol -> Ensembl JSON as "
                "vocab.symbol_mapping, or check the organism"
            )
