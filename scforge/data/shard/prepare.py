"""What every output format shares: opened sources, gene maps, QC, HVGs, and the cell stream.

``iter_unit`` turns one unit (a row range of one input) into tokenized pieces of QC-passing cells.
Filtering happens inside units, so units stay plain row ranges: the output is still a pure
function of (inputs, config), resumable unit by unit; a unit just holds fewer cells when some are
dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from scforge.config.schema import ShardJobConfig
from scforge.data.sources import CSRChunk, Source, SourceError, dataset_name, open_source
from scforge.data.sources.soma import SomaSpec
from scforge.data.stats.qc import CellFilter, add_counts, raw_count_problem, select_rows
from scforge.data.tokenizers import TokenizedChunk, Tokenizer, get_tokenizer
from scforge.data.vocab import GeneVocab, MappingReport, VocabError, build_vocab, looks_like_ensembl
from scforge.kernels import GeneMap


class ShardError(ValueError):
    """The job cannot run as asked; the message says what to change."""


def soma_spec(cfg: ShardJobConfig) -> SomaSpec:
    s = cfg.source.soma
    return SomaSpec(
        uri=s.uri,
        census_version=s.census_version,
        organism=s.organism,
        measurement=s.measurement,
        layer=s.layer,
        obs_value_filter=s.obs_value_filter,
        obs_columns=tuple(s.obs_columns),
    )


def config_inputs(cfg: ShardJobConfig) -> list[str]:
    """The ``source.soma`` block as an input URL (when it names a Census or an experiment)."""
    spec = soma_spec(cfg)
    if spec.census_version or spec.uri:
        return [spec.url()]
    return []


def chunk_rows(cfg: ShardJobConfig) -> int:
    """Chunk size rounded up to whole blocks, so blocks never depend on the chunk size."""
    b = cfg.shard.block_cells
    return max(b, -(-cfg.source.chunk_cells // b) * b)


@dataclass
class Piece:
    """Tokenized QC-passing cells of one chunk."""

    rows: np.ndarray
    """Row of each kept cell in its input."""
    tok: TokenizedChunk
    dropped: dict[str, int] = field(default_factory=dict)
    total_counts: float = 0.0
    mapped_counts: float = 0.0


class Prepared:
    """Sources, gene maps, QC filters and tokenizer of a job (rebuilt in each worker process).

    Args:
        inputs: input spellings (paths or URLs).
        cfg: the job config.
        hvg_genes: restrict tokens to these genes (corpus gene keys, see ``scforge.data.stats``).
    """

    def __init__(
        self, inputs: list[str], cfg: ShardJobConfig, *, hvg_genes: list[str] | None = None
    ) -> None:
        self.cfg = cfg
        self.vocab: GeneVocab = build_vocab(
            cfg.vocab.kind,
            token_dictionary=cfg.vocab.token_dictionary,
            gene_medians=cfg.vocab.gene_medians,
            id_mapping=cfg.vocab.id_mapping,
        )
        self.tokenizer: Tokenizer = get_tokenizer(cfg.tokenizer.strategy)(cfg.tokenizer, self.vocab)
        self.sources: list[Source] = []
        for path in inputs:
            self.sources.append(
                open_source(
                    path,
                    layer=cfg.source.layer,
                    gene_column=cfg.source.gene_column,
                    soma=soma_spec(cfg),
                    zarr_backend=cfg.source.zarr_backend,
                )
            )
        self.maps, self.reports = self._map_genes()
        self.filters = [CellFilter(cfg.source.qc, s) for s in self.sources]
        self.obs_fields = _ordered_union(
            list(cfg.source.obs_fields),
            # Several inputs make one corpus: every cell says which input it came from.
            ["dataset"] if len(self.sources) > 1 else [],
            *[getattr(s, "extra_obs_fields", []) for s in self.sources],
        )
        self.hvg_genes: list[str] | None = None
        self.hvg_cols: list[np.ndarray | None] = [None] * len(self.sources)
        if hvg_genes:
            self.set_hvg(hvg_genes)
        self._obs_cache: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}

    def _map_genes(self) -> tuple[list[GeneMap], list[MappingReport]]:
        kinds = [
            "ensembl" if looks_like_ensembl(list(s.gene_ids()[:5000])) else "symbols"
            for s in self.sources
        ]
        maps, reports = [], []
        for src, kind in zip(self.sources, kinds, strict=True):
            try:
                gmap, rep = self.vocab.map_genes(
                    src.gene_ids(),
                    var_symbols=src.gene_symbols(),
                    symbol_mapping=self.cfg.vocab.symbol_mapping,
                    min_overlap=self.cfg.vocab.min_overlap,
                )
            except VocabError as e:
                if len(set(kinds)) > 1:
                    other = self.sources[kinds.index("ensembl" if kind != "ensembl" else "symbols")]
                    raise ShardError(
                        f"inputs mix gene-id types that cannot be mapped: {src.path} has {kind} "
                        f"but {other.path} has {'symbols' if kind == 'ensembl' else 'ensembl'} "
                        f"ids, and {e}"
                    ) from None
                raise ShardError(f"{src.path}: {e}") from None
            maps.append(gmap)
            reports.append(rep)
        return maps, reports

    def set_hvg(self, genes: list[str]) -> None:
        """Restricts tokens to ``genes``: other columns get token -1 (and, for binned
        expression, are left out of the bin edges, as scGPT bins after subsetting to HVGs)."""
        from scforge.data.stats.genes import input_gene_keys

        wanted = set(genes)
        self.hvg_genes = sorted(wanted)
        for i, src in enumerate(self.sources):
            keys = input_gene_keys(src, symbol_mapping=self.cfg.vocab.symbol_mapping).keys
            cols = np.array([k in wanted for k in keys], dtype=bool)
            self.hvg_cols[i] = cols
            col_token = np.where(cols, self.maps[i].col_token, -1).astype(np.int32)
            self.maps[i] = GeneMap.from_col_token(col_token)

    def obs(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Cell ids and stored obs fields of input ``i`` (``dataset`` filled when absent)."""
        if i not in self._obs_cache:
            src = self.sources[i]
            df = src.obs_columns(list(self.obs_fields))
            cols = {c: df[c].to_numpy() for c in df.columns}
            if "dataset" in self.obs_fields and "dataset" not in cols:
                cols["dataset"] = np.full(src.n_cells, dataset_name(src), dtype=object)
            cols = {f: cols[f] for f in self.obs_fields if f in cols}
            self._obs_cache[i] = (src.obs_names(), cols)
        return self._obs_cache[i]

    def check_counts(self, i: int, chunk: CSRChunk) -> None:
        if not self.cfg.source.require_raw_counts:
            return
        problem = raw_count_problem(self.sources[i].path, self.cfg.source.layer, chunk)
        if problem:
            raise ShardError(problem)

    def describe_source(self, i: int) -> dict:
        d = self.sources[i].describe()
        d["dataset"] = dataset_name(self.sources[i])
        d["mapping"] = self.reports[i].as_dict()
        return d


def _ordered_union(*lists: list[str]) -> list[str]:
    out: list[str] = []
    for lst in lists:
        out += [x for x in lst if x not in out]
    return out


def _restrict_columns(chunk: CSRChunk, cols: np.ndarray) -> CSRChunk:
    keep = cols[chunk.indices]
    if keep.all():
        return chunk
    row = np.repeat(np.arange(chunk.n_rows), np.diff(chunk.indptr))[keep]
    indptr = np.zeros(chunk.n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=chunk.n_rows), out=indptr[1:])
    return CSRChunk(chunk.start, indptr, chunk.indices[keep], chunk.data[keep])


def process_chunk(prep: Prepared, input_index: int, corpus_offset: int, chunk: CSRChunk) -> Piece:
    """Checks, filters and tokenizes one chunk of input ``input_index``."""
    prep.check_counts(input_index, chunk)
    keep, dropped = prep.filters[input_index].apply(chunk)
    kept = select_rows(chunk, keep)
    rows = chunk.start + np.flatnonzero(keep)
    gmap = prep.maps[input_index]
    total = float(np.asarray(kept.data).sum(dtype=np.float64))
    hvg = prep.hvg_cols[input_index]
    if hvg is not None and prep.tokenizer.name == "binned_expression":
        kept = _restrict_columns(kept, hvg)
    tok = prep.tokenizer.tokenize(kept, gmap, corpus_offset + rows)
    mapped = float(kept.data[gmap.col_token[kept.indices] >= 0].sum(dtype=np.float64))
    return Piece(rows.astype(np.int64), tok, dropped, total, mapped)


def iter_unit(prep: Prepared, unit, *, delay: float = 0.0) -> Iterator[Piece]:
    """Pieces of a unit in row order; the next chunk is read while this one is tokenized."""
    src = prep.sources[unit.input_index]
    step = chunk_rows(prep.cfg)
    starts = list(range(unit.start, unit.stop, step))
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(src.read_rows, starts[0], min(starts[0] + step, unit.stop))
        for i in range(len(starts)):
            chunk = nxt.result()
            if i + 1 < len(starts):
                b = starts[i + 1]
                nxt = pool.submit(src.read_rows, b, min(b + step, unit.stop))
            yield process_chunk(prep, unit.input_index, unit.corpus_offset, chunk)
            if delay:
                import time

                time.sleep(delay)


class CellPacker:
    """Cuts a stream of tokenized cells into runs of exactly ``size`` cells (the last shorter).

    Each run is ``(rows, lengths, tokens, values)``: rows in the input, tokens per cell, and the
    flat token and value arrays.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._rows: list[np.ndarray] = []
        self._lens: list[np.ndarray] = []
        self._toks: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._n = 0

    def add(self, piece: Piece) -> list[tuple]:
        """Adds a piece; returns the full runs it completes."""
        tok = piece.tok
        self._rows.append(piece.rows)
        self._lens.append(np.diff(tok.offsets))
        self._toks.append(tok.tokens)
        if tok.values is not None:
            self._vals.append(tok.values)
        self._n += len(piece.rows)
        out = []
        if self._n >= self.size:
            rows, lens, toks, vals = self._take()
            offs = np.concatenate([[0], np.cumsum(lens)])
            full = (len(rows) // self.size) * self.size
            for a in range(0, full, self.size):
                b = a + self.size
                t0, t1 = int(offs[a]), int(offs[b])
                out.append(
                    (rows[a:b], lens[a:b], toks[t0:t1], None if vals is None else vals[t0:t1])
                )
            t = int(offs[full])
            self._put(rows[full:], lens[full:], toks[t:], None if vals is None else vals[t:])
        return out

    def rest(self) -> list[tuple]:
        """The last, short run (if any cells are left)."""
        if self._n == 0:
            return []
        return [self._take()]

    def _take(self):
        rows = np.concatenate(self._rows)
        lens = np.concatenate(self._lens)
        toks = np.concatenate(self._toks)
        vals = np.concatenate(self._vals) if self._vals else None
        self._rows, self._lens, self._toks, self._vals, self._n = [], [], [], [], 0
        return rows, lens, toks, vals

    def _put(self, rows, lens, toks, vals) -> None:
        if len(rows):
            self._rows, self._lens, self._toks = [rows], [lens], [toks]
            self._vals = [vals] if vals is not None else []
            self._n = len(rows)


class UnitTally:
    """Counts a unit's cells, drops and counts as its pieces stream by."""

    def __init__(self) -> None:
        self.cells = 0
        self.dropped: dict[str, int] = {}
        self.total_counts = 0.0
        self.mapped_counts = 0.0

    def add(self, piece: Piece) -> None:
        self.cells += len(piece.rows)
        add_counts(self.dropped, piece.dropped)
        self.total_counts += piece.total_counts
        self.mapped_counts += piece.mapped_counts

    def entry(self, unit) -> dict:
        return {
            "cells": self.cells,
            "input": unit.input_index,
            "rows": [unit.start, unit.stop],
            "dropped": self.dropped,
            "total_counts": self.total_counts,
            "mapped_counts": self.mapped_counts,
        }


def input_label(path: str) -> str:
    """How an input is recorded in ``inputs.json``: URLs as given, files as absolute paths."""
    from scforge.data.sources.soma import is_soma_url

    return path if is_soma_url(path) else os.path.abspath(path)


__all__ = [
    "CellPacker",
    "Piece",
    "Prepared",
    "ShardError",
    "SourceError",
    "UnitTally",
    "chunk_rows",
    "config_inputs",
    "input_label",
    "iter_unit",
    "process_chunk",
    "soma_spec",
]
