"""Delimited text matrices (``.csv``/``.tsv``/``.txt``, optionally ``.gz``): cells x genes.

The first row holds gene ids, the first column cell ids. One streaming pass at open records the
byte offset of every line (8 bytes per cell) and the cell ids; a chunk then seeks to its first line
and parses only its own lines, so memory stays bounded by the chunk whatever the file size (for
``.gz`` the seek decompresses forward, which is cheap because the sharder reads chunks in order).

A genes x cells file (what many tools write) is refused with the fix, not silently transposed:
when the first column looks like genes and the header does not, the orientation is wrong.
"""

from __future__ import annotations

import gzip
import io
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scforge.data.sources.base import CSRChunk, SourceError, check_range, csr_chunk, frame_of

SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")


def is_text_matrix(path: str) -> bool:
    return str(path).lower().endswith(SUFFIXES)


def _gene_like_fraction(names: list[str]) -> float:
    """Fraction of ``names`` that are Ensembl ids or known gene symbols."""
    from scforge.data.vocab import ENSEMBL_RE, SYMBOL_TO_ID
    from scforge.resources import load_json

    sample = [n.strip().strip('"') for n in names[:2000] if n.strip()]
    if not sample:
        return 0.0
    symbols = load_json(SYMBOL_TO_ID)
    hits = sum(bool(ENSEMBL_RE.match(n)) or n in symbols or n.upper() in symbols for n in sample)
    return hits / len(sample)


class TextSource:
    """A delimited cells x genes count table read by line ranges.

    Args:
        path: ``.csv``/``.tsv``/``.txt`` file, optionally gzip-compressed (``.gz``).
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise SourceError(f"input {self.path!r} does not exist")
        self._gz = self.path.lower().endswith(".gz")
        try:
            self._index()
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise SourceError(
                f"{self.path!r} is not a readable text matrix ({e}); write it with "
                "pandas df.to_csv() (cells as rows, genes as columns)"
            ) from None
        self._check_orientation()
        self._fh = None
        self._lock = threading.Lock()
        self.n_genes = len(self._genes)

    def _open(self):
        return gzip.open(self.path, "rb") if self._gz else open(self.path, "rb")  # noqa: SIM115

    def _index(self) -> None:
        with self._open() as fh:
            header = fh.readline().decode().rstrip("\r\n")
            if not header:
                raise SourceError(f"{self.path!r} is empty; expected a header row of gene ids")
            is_csv = self.path.lower().removesuffix(".gz").endswith(".csv")
            self.sep = "," if is_csv or "\t" not in header else "\t"
            offsets, cells, width = [], [], None
            pos = fh.tell()
            sep = self.sep.encode()
            for line in fh:
                if line.strip():
                    offsets.append(pos)
                    cut = line.find(sep)
                    cells.append(line[: cut if cut >= 0 else None].decode().strip().strip('"'))
                    if width is None:
                        width = line.count(sep) + 1
                pos += len(line)
            offsets.append(pos)
        fields = [h.strip().strip('"') for h in header.split(self.sep)]
        # pandas writes an index-name field first; some tools omit it.
        self._genes = fields[1:] if width is None or len(fields) == width else fields
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._cells = np.asarray(cells, dtype=object)
        self.n_cells = len(cells)
        if width is not None and width != len(self._genes) + 1:
            raise SourceError(
                f"{self.path!r}: rows have {width - 1} values but the header names "
                f"{len(self._genes)} genes; expected a header of gene ids and one cell per row"
            )

    def _check_orientation(self) -> None:
        header_genes = _gene_like_fraction(self._genes)
        column_genes = _gene_like_fraction(list(self._cells))
        if column_genes >= 0.5 and header_genes < 0.1:
            raise SourceError(
                f"{self.path!r} looks transposed (genes x cells): {100 * column_genes:.0f}% of "
                f"the first column are gene ids (e.g. {self._cells[0]!r}) but only "
                f"{100 * header_genes:.0f}% of the header; write cells as rows and genes as "
                "columns (pandas: df.T.to_csv(path))"
            )

    # ----------------------------------------------------------------- Source API
    def gene_ids(self) -> list[str]:
        return list(self._genes)

    def gene_symbols(self) -> list[str] | None:
        return None

    def obs_names(self) -> np.ndarray:
        return self._cells

    def obs_columns(self, names: list[str]) -> pd.DataFrame:
        """Text matrices carry no obs columns."""
        return frame_of({})

    def read_rows(self, start: int, stop: int) -> CSRChunk:
        """Lines of cells ``[start, stop)``, parsed into CSR."""
        check_range(self, start, stop)
        if start == stop:
            return csr_chunk(start, sp.csr_matrix((0, self.n_genes), dtype=np.float32))
        a, b = int(self._offsets[start]), int(self._offsets[stop])
        try:
            with self._lock:
                if self._fh is None:
                    self._fh = self._open()
                self._fh.seek(a)
                buf = self._fh.read(b - a)
            df = pd.read_csv(io.BytesIO(buf), sep=self.sep, header=None, index_col=0)
            x = df.to_numpy(dtype=np.float32)
        except (OSError, EOFError, ValueError, pd.errors.ParserError) as e:
            raise SourceError(
                f"{self.path!r}: lines of cells {start}-{stop} are not numeric counts "
                f"({str(e).splitlines()[0]}); expected one cell per row, counts only"
            ) from None
        if x.shape != (stop - start, self.n_genes):
            raise SourceError(
                f"{self.path!r}: cells {start}-{stop} have {x.shape[1]} values, expected "
                f"{self.n_genes}; the file is ragged or truncated"
            )
        return csr_chunk(start, x)

    def describe(self) -> dict:
        return {
            "path": os.path.abspath(self.path),
            "format": "text-gz" if self._gz else "text",
            "separator": self.sep,
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
            "bytes": Path(self.path).stat().st_size,
            "gene_ids_from": "header row",
        }

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
