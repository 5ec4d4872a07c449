"""10x Genomics outputs: Matrix Market directories and feature-barcode ``.h5`` files.

A Cell Ranger ``.h5`` stores genes x cells in CSC form, which is cells x genes CSR: rows are read
lazily by chunk exactly like an ``.h5ad``. A ``matrix.mtx(.gz)`` directory is a text COO file with
no row index, so it is parsed once into memory (O(nnz), the size of the sparse matrix) and served
by row chunks from there. Only ``Gene Expression`` features are kept (antibody or CRISPR counts
would distort per-cell totals).
"""

from __future__ import annotations

import os
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
        try:
            ftab = pd.read_csv(feats, sep="\t", header=None, dtype=str)
            self._barcodes = as_str_array(
                pd.read_csv(bcs, sep="\t", header=None, dtype=str)[0].to_numpy()
            )
            import scipy.io

            m = scipy.io.mmread(str(mtx))  # reads .gz itself
        except (OSError, EOFError, ValueError, IndexError, pd.errors.ParserError) as e:
            raise SourceError(
                f"10x directory {self.path!r} is unreadable ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else 'corrupt file'}); {_FIX}"
            ) from None
        m = sp.csr_matrix(m.T)  # genes x cells -> cells x genes
        if m.shape != (len(self._barcodes), len(ftab)):
            raise SourceError(
                f"10x directory {self.path!r} is unreadable: matrix is {m.shape[1]} genes x "
                f"{m.shape[0]} cells but there are {len(ftab)} features and "
                f"{len(self._barcodes)} barcodes; {_FIX}"
            )
        types = ftab[2].to_numpy() if ftab.shape[1] > 2 else None
        self._genes = _GeneMask(
            ftab[0].to_numpy(), ftab[1].to_numpy() if ftab.shape[1] > 1 else None, types
        )
        self._m = self._genes.select(m)
        self._m.sort_indices()
        self.n_cells, self.n_genes = self._m.shape
        self._files = [mtx, feats, bcs]

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
        return csr_chunk(start, self._m[start:stop])

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
