"""10x Genomics outputs: Matrix Market directories and feature-barcode ``.h5`` files.

A Cell Ranger ``.h5`` stores genes x cells in CSC form, which is cells x genes CSR: rows are read
lazily by chunk exactly like an ``.h5ad``. A ``matrix.mtx(.gz)`` directory is a text COO file with
no row index and no guaranteed entry order, so it is converted once, in bounded memory, to CSR
arrays in a temporary directory: pass 1 streams the entries in chunks of ``MTX_CHUNK_ENTRIES`` and
counts them per cell, pass 2 streams them again and scatters each chunk into memory-mapped
``indices``/``data`` files at its cell's offset. Memory is one chunk plus 8 bytes per cell; the
temporary files (8 bytes per entry) are removed on ``close()`` or at exit. Only ``Gene
Expression`` features are kept (antibody or CRISPR counts would distort per-cell totals).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scforge.data.sources.base import (
    CSRChunk,
    SourceError,
    as_str_array,
    check_range,
    csr_chunk,
    frame_of,
)

GENE_EXPRESSION = "Gene Expression"
MTX_CHUNK_ENTRIES = 2_000_000
"""Matrix Market entries parsed at a time (about 50 MB of parser memory)."""
_FIX = "point at a Cell Ranger filtered_feature_bc_matrix/ directory (or its .h5)"


def _find(root: Path, *names: str) -> Path | None:
    for n in names:
        for cand in (root / n, root / f"{n}.gz"):
            if cand.is_file():
                return cand
    return None


def is_tenx_dir(path: str | os.PathLike) -> bool:
    """A directory with any of the three 10x files (so a broken one gets a 10x error)."""
    p = Path(path)
    return p.is_dir() and any(
        _find(p, n) is not None for n in ("matrix.mtx", "barcodes.tsv", "features.tsv", "genes.tsv")
    )


def is_tenx_h5(path: str | os.PathLike) -> bool:
    """A Cell Ranger feature-barcode HDF5 (v3 ``/matrix`` or v2 ``/<genome>``), not an h5ad."""
    try:
        with h5py.File(path, "r") as f:
            if "obs" in f and "var" in f:
                return False
            if "matrix" in f and "indptr" in f["matrix"]:
                return True
            return any(
                isinstance(f[k], h5py.Group) and {"indptr", "barcodes", "genes"} <= set(f[k])
                for k in f
            )
    except OSError:
        return False


class _GeneMask:
    """Keeps Gene Expression columns of a feature table (all columns when types are absent)."""

    def __init__(self, ids, names, types) -> None:
        keep = (
            np.ones(len(ids), dtype=bool) if types is None else np.asarray(types) == GENE_EXPRESSION
        )
        if types is not None and not keep.any():
            keep[:] = True  # no Gene Expression rows at all: keep what there is
        self.keep = keep
        self.n_features = len(ids)
        self.ids = [str(g) for g in np.asarray(ids)[keep]]
        self.names = [str(g) for g in np.asarray(names)[keep]] if names is not None else None

    def select(self, m: sp.csr_matrix) -> sp.csr_matrix:
        """Columns of ``m`` (all features) restricted to the kept ones."""
        return m if self.keep.all() else m[:, self.keep]


class _MtxError(ValueError):
    pass


def _mtx_header(path: Path) -> tuple[int, int, int, int, bool]:
    """(n_rows, n_cols, n_entries, lines before the entries, has a value column)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        banner = fh.readline()
        if not banner.startswith("%%MatrixMarket"):
            raise _MtxError("no %%MatrixMarket banner")
        fields = banner.lower().split()
        if "coordinate" not in fields:
            raise _MtxError(f"a dense ('array') Matrix Market file ({banner.strip()!r})")
        skip = 1
        line = fh.readline()
        while line.startswith("%"):
            skip += 1
            line = fh.readline()
        try:
            n_rows, n_cols, n_entries = (int(v) for v in line.split())
        except ValueError:
            raise _MtxError(f"bad size line {line.strip()!r}") from None
    return n_rows, n_cols, n_entries, skip + 1, "pattern" not in fields


def _mtx_chunks(path: Path, skip: int, has_values: bool, usecols: list[int]):
    """The entries as DataFrames of at most MTX_CHUNK_ENTRIES rows (1-based ids)."""
    names = ["gene", "cell", "value"][: 3 if has_values else 2]
    dtypes = {"gene": np.int64, "cell": np.int64, "value": np.float64}
    reader = pd.read_csv(
        path,
        sep=r"\s+",
        header=None,
        skiprows=skip,
        names=names,
        usecols=[names[i] for i in usecols if i < len(names)],
        dtype={k: v for k, v in dtypes.items() if k in names},
        chunksize=MTX_CHUNK_ENTRIES,
        engine="c",
    )
    yield from reader


class TenxMtxSource:
    """A 10x ``matrix.mtx(.gz)`` + ``features.tsv(.gz)``/``genes.tsv`` + ``barcodes.tsv(.gz)`` dir."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        root = Path(self.path)
        mtx = _find(root, "matrix.mtx")
        feats = _find(root, "features.tsv", "genes.tsv")
        bcs = _find(root, "barcodes.tsv")
        missing = [
            n
            for n, p in (
                ("matrix.mtx(.gz)", mtx),
                ("features.tsv(.gz) or genes.tsv", feats),
                ("barcodes.tsv(.gz)", bcs),
            )
            if p is None
        ]
        if missing:
            have = sorted(p.name for p in root.iterdir())[:8]
            raise SourceError(
                f"10x directory {self.path!r} is unreadable: missing {', '.join(missing)} "
                f"(found {have}); {_FIX}"
            )
        self._tmp: str | None = None
        try:
            ftab = pd.read_csv(feats, sep="\t", header=None, dtype=str)
            self._barcodes = as_str_array(
                pd.read_csv(bcs, sep="\t", header=None, dtype=str)[0].to_numpy()
            )
            n_rows, n_cols, n_entries, skip, has_values = _mtx_header(mtx)
            if (n_rows, n_cols) != (len(ftab), len(self._barcodes)):
                raise SourceError(
                    f"10x directory {self.path!r} is unreadable: matrix is {n_rows} genes x "
                    f"{n_cols} cells but there are {len(ftab)} features and "
                    f"{len(self._barcodes)} barcodes; {_FIX}"
                )
            types = ftab[2].to_numpy() if ftab.shape[1] > 2 else None
            self._genes = _GeneMask(
                ftab[0].to_numpy(), ftab[1].to_numpy() if ftab.shape[1] > 1 else None, types
            )
            self._to_csr(mtx, n_rows, n_cols, n_entries, skip, has_values)
        except SourceError:
            self.close()
            raise
        except (OSError, EOFError, ValueError, IndexError, pd.errors.ParserError) as e:
            self.close()
            kind = "" if isinstance(e, _MtxError) else f"{type(e).__name__}: "
            raise SourceError(
                f"10x directory {self.path!r} is unreadable ({kind}"
                f"{str(e).splitlines()[0] if str(e) else 'corrupt file'}); {_FIX}"
            ) from None
        self.n_cells, self.n_genes = n_cols, len(self._genes.ids)
        self._n_features = n_rows
        self._files = [mtx, feats, bcs]

    def _to_csr(self, mtx: Path, n_rows: int, n_cols: int, n_entries: int, skip: int, vals: bool):
        """Two streaming passes: entries per cell, then scatter into memory-mapped CSR arrays."""
        counts = np.zeros(n_cols, dtype=np.int64)
        seen = 0
        for df in _mtx_chunks(mtx, skip, vals, [1]):
            cell = df["cell"].to_numpy() - 1
            if len(cell) and (cell.min() < 0 or cell.max() >= n_cols):
                raise _MtxError(f"a cell index outside 1..{n_cols}")
            counts += np.bincount(cell, minlength=n_cols)
            seen += len(cell)
        if seen != n_entries:
            raise _MtxError(f"{seen:,} entries but the header says {n_entries:,} (truncated?)")
        self._indptr = np.zeros(n_cols + 1, dtype=np.int64)
        np.cumsum(counts, out=self._indptr[1:])
        self._tmp = tempfile.mkdtemp(prefix="scforge-mtx-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmp, True)
        size = max(n_entries, 1)
        self._indices = np.lib.format.open_memmap(
            os.path.join(self._tmp, "indices.npy"), mode="w+", dtype=np.int32, shape=(size,)
        )
        self._data = np.lib.format.open_memmap(
            os.path.join(self._tmp, "data.npy"), mode="w+", dtype=np.float32, shape=(size,)
        )
        fill = self._indptr[:-1].copy()
        for df in _mtx_chunks(mtx, skip, vals, [0, 1, 2]):
            gene = df["gene"].to_numpy() - 1
            cell = df["cell"].to_numpy() - 1
            if len(gene) and (gene.min() < 0 or gene.max() >= n_rows):
                raise _MtxError(f"a gene index outside 1..{n_rows}")
            value = df["value"].to_numpy() if vals else np.ones(len(gene))
            # Stable sort by cell: each cell's entries land in file order at its fill pointer.
            order = np.argsort(cell, kind="stable")
            cell_s = cell[order]
            first = np.searchsorted(cell_s, cell_s, side="left")
            pos = fill[cell_s] + (np.arange(len(cell_s)) - first)
            self._indices[pos] = gene[order]
            self._data[pos] = value[order]
            fill += np.bincount(cell, minlength=n_cols)

    def gene_ids(self) -> list[str]:
        return self._genes.ids

    def gene_symbols(self) -> list[str] | None:
        return self._genes.names

    def obs_names(self) -> np.ndarray:
        return self._barcodes

    def obs_columns(self, names: list[str]) -> pd.DataFrame:
        """10x directories carry no obs columns."""
        return frame_of({})

    def read_rows(self, start: int, stop: int) -> CSRChunk:
        check_range(self, start, stop)
        a, b = int(self._indptr[start]), int(self._indptr[stop])
        m = sp.csr_matrix(
            (
                np.array(self._data[a:b]),
                np.array(self._indices[a:b]),
                self._indptr[start : stop + 1] - a,
            ),
            shape=(stop - start, self._n_features),
        )
        return csr_chunk(start, self._genes.select(m))

    def describe(self) -> dict:
        return {
            "path": os.path.abspath(self.path),
            "format": "10x-mtx",
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
            "n_features_dropped": int(self._genes.n_features - self.n_genes),
            "bytes": sum(p.stat().st_size for p in self._files),
            "gene_ids_from": "features.tsv column 1",
        }

    def close(self) -> None:
        """Removes the temporary CSR files."""
        for name in ("_indices", "_data"):
            if hasattr(self, name):
                delattr(self, name)
        if getattr(self, "_cleanup", None) is not None:
            self._cleanup()


class TenxH5Source:
    """A Cell Ranger feature-barcode matrix ``.h5`` (v3 ``/matrix``; v2 ``/<genome>``)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        try:
            self._f = h5py.File(self.path, "r")
            g = self._f["matrix"] if "matrix" in self._f else self._f[next(iter(self._f))]
            if "features" in g:
                fg = g["features"]
                ids, names = fg["id"][:], fg["name"][:]
                types = as_str_array(fg["feature_type"][:]) if "feature_type" in fg else None
            else:
                ids, names, types = g["genes"][:], g["gene_names"][:], None
            self._genes = _GeneMask(as_str_array(ids), as_str_array(names), types)
            self._barcodes = as_str_array(g["barcodes"][:])
            self._indptr = g["indptr"][:].astype(np.int64)
            self._data, self._indices = g["data"], g["indices"]
        except (OSError, KeyError, StopIteration) as e:
            raise SourceError(f"{self.path!r} is not a readable 10x .h5 ({e}); {_FIX}") from None
        self.n_cells, self.n_genes = len(self._barcodes), len(self._genes.ids)
        if len(self._indptr) != self.n_cells + 1:
            raise SourceError(f"{self.path!r}: indptr does not match the barcodes (corrupt file)")

    def gene_ids(self) -> list[str]:
        return self._genes.ids

    def gene_symbols(self) -> list[str] | None:
        return self._genes.names

    def obs_names(self) -> np.ndarray:
        return self._barcodes

    def obs_columns(self, names: list[str]) -> pd.DataFrame:
        """10x files carry no obs columns."""
        return frame_of({})

    def read_rows(self, start: int, stop: int) -> CSRChunk:
        check_range(self, start, stop)
        a, b = int(self._indptr[start]), int(self._indptr[stop])
        try:
            indices, data = self._indices[a:b], self._data[a:b]
        except OSError as e:
            raise SourceError(f"{self.path!r}: reading rows {start}-{stop} failed ({e})") from None
        indptr = self._indptr[start : stop + 1] - a
        m = sp.csr_matrix((data, indices, indptr), shape=(stop - start, self._genes.n_features))
        return csr_chunk(start, self._genes.select(m))

    def describe(self) -> dict:
        return {
            "path": os.path.abspath(self.path),
            "format": "10x-h5",
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
            "n_features_dropped": int(self._genes.n_features - self.n_genes),
            "bytes": os.path.getsize(self.path),
            "gene_ids_from": "features/id",
        }

    def close(self) -> None:
        self._f.close()
