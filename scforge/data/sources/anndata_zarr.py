"""Row-chunked reader of AnnData ``.zarr`` stores (zarr format 2 and 3).

The layout is AnnData's (``X`` as a CSR group or a dense array, ``obs``/``var`` dataframes), so
the logic mirrors :mod:`scforge.data.sources.h5ad`: only ``indptr`` is held whole, each chunk reads
exactly the bytes of its rows. The ``data``/``indices`` slices are read with tensorstore by default:
on 4,096-row chunks of pbmc_2batch (``benchmarks/bench_store.py``, three runs on 2 shared cores)
it read 1.3-2.8x faster than zarr-python from anndata's zarr v2 (blosc-lz4) and 1.2-1.9x faster
from v3 (zstd, itself 2-4x slower to decode than v2); ``backend="zarr"`` switches.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from scforge.data.sources.base import (
    CSRChunk,
    SourceError,
    as_str_array,
    check_range,
    csr_chunk,
    frame_of,
    pick_gene_ids,
)

BACKENDS = ("tensorstore", "zarr")
DEFAULT_BACKEND = "tensorstore"


def is_zarr_store(path: str | os.PathLike) -> bool:
    """True for a directory holding zarr metadata (v2 ``.zgroup`` or v3 ``zarr.json``)."""
    p = Path(path)
    return p.is_dir() and ((p / "zarr.json").is_file() or (p / ".zgroup").is_file())


def zarr_format(path: str | os.PathLike) -> int:
    return 3 if (Path(path) / "zarr.json").is_file() else 2


class _TsArray:
    """A 1-D zarr array read through tensorstore (slices only)."""

    def __init__(self, path: Path, fmt: int) -> None:
        import tensorstore as ts

        spec = {
            "driver": "zarr3" if fmt == 3 else "zarr",
            "kvstore": {"driver": "file", "path": str(path.resolve())},
        }
        self._arr = ts.open(spec, read=True, open=True).result()
        self.shape = tuple(int(d) for d in self._arr.shape)
        self.dtype = np.dtype(self._arr.dtype.numpy_dtype)

    def __getitem__(self, sl) -> np.ndarray:
        if isinstance(sl, slice) and sl.start == sl.stop:
            return np.empty(0, dtype=self.dtype)
        return np.asarray(self._arr[sl].read().result())


def _attr(group, key: str, default: str = "") -> str:
    val = group.attrs.get(key, default)
    return val.decode() if isinstance(val, bytes) else str(val)


class AnnDataZarrSource:
    """An AnnData ``.zarr`` store opened for row-chunked reading.

    Args:
        path: the store directory.
        layer: ``X``, ``raw/X`` or ``layers/<name>``.
        gene_column: var column with gene ids ("" = auto).
        backend: ``tensorstore`` or ``zarr`` (zarr-python) for the CSR arrays.
    """

    def __init__(
        self, path: str, *, layer: str = "X", gene_column: str = "", backend: str = DEFAULT_BACKEND
    ) -> None:
        import zarr

        self.path = str(path)
        self.layer = layer
        if backend not in BACKENDS:
            raise SourceError(f"zarr backend {backend!r}; choose one of {list(BACKENDS)}")
        self.backend = backend
        if not is_zarr_store(self.path):
            raise SourceError(f"input {self.path!r} is not a zarr store (no zarr.json or .zgroup)")
        self.format = zarr_format(self.path)
        try:
            self._g = zarr.open_group(self.path, mode="r")
        except Exception as e:  # zarr raises several types for broken metadata
            raise SourceError(
                f"{self.path!r} is not a readable zarr store ({str(e).splitlines()[0]}); "
                "re-export it with adata.write_zarr()"
            ) from None
        self._check_anndata()
        self._var_group = "raw/var" if layer == "raw/X" else "var"
        if layer not in self._g:
            raise SourceError(
                f"{self.path!r} has no matrix {layer!r}; set source.layer to one of "
                f"{self._available_layers()}"
            )
        self._init_matrix(self._g[layer])
        self._gene_ids, self._symbols, self._id_source = self._read_var(gene_column)

    def _check_anndata(self) -> None:
        keys = set(self._g)
        enc = _attr(self._g, "encoding-type")
        if enc != "anndata" and not {"X", "obs", "var"} <= keys:
            raise SourceError(
                f"{self.path!r} is a zarr store but not an AnnData one (encoding-type "
                f"{enc or 'missing'}, members {sorted(keys)[:8]}); write it with "
                "adata.write_zarr(), or convert it to .h5ad"
            )
        for k in ("obs", "var"):
            if k not in keys:
                raise SourceError(
                    f"{self.path!r}: AnnData store without {k!r} (corrupt); re-export"
                )

    def _available_layers(self) -> list[str]:
        out = ["X"] if "X" in self._g else []
        if "layers" in self._g:
            out += [f"layers/{k}" for k in self._g["layers"]]
        if "raw" in self._g and "X" in self._g["raw"]:
            out.append("raw/X")
        return out

    def _array(self, name: str):
        if self.backend == "tensorstore":
            return _TsArray(Path(self.path) / name, self.format)
        return self._g[name]

    def _init_matrix(self, x) -> None:
        import zarr

        if isinstance(x, zarr.Group):
            enc = _attr(x, "encoding-type")
            if enc == "csc_matrix":
                raise SourceError(
                    f"{self.path!r}: {self.layer} is CSC, which cannot be read by rows in "
                    "bounded memory; convert it once with adata.X = adata.X.tocsr(); "
                    "adata.write_zarr(...)"
                )
            if enc != "csr_matrix":
                raise SourceError(
                    f"{self.path!r}: {self.layer} has encoding {enc!r}; expected a CSR sparse "
                    "matrix or a dense array"
                )
            self.n_cells, self.n_genes = (int(v) for v in x.attrs["shape"])
            self._indptr = np.asarray(x["indptr"][:], dtype=np.int64)
            self._data = self._array(f"{self.layer}/data")
            self._indices = self._array(f"{self.layer}/indices")
            self._dense = None
            if len(self._indptr) != self.n_cells + 1 or self._indptr[-1] > self._data.shape[0]:
                raise SourceError(
                    f"{self.path!r}: {self.layer} indptr does not match its data (truncated or "
                    "corrupt store); re-export it"
                )
            self.dtype = self._data.dtype
        else:
            self.n_cells, self.n_genes = (int(v) for v in x.shape)
            self._dense = x
            self.dtype = np.asarray(x[:1]).dtype

    def _read_var(self, gene_column: str):
        from anndata.io import read_elem

        var = self._g[self._var_group]
        index_key = _attr(var, "_index", "_index")
        names = as_str_array(read_elem(var[index_key]))
        cols = [k for k in var if k != index_key]

        def column(name: str) -> np.ndarray:
            return as_str_array(read_elem(var[name]))

        return pick_gene_ids(self.path, list(names), cols, column, gene_column, self.n_genes)

    # ----------------------------------------------------------------- Source API
    def gene_ids(self) -> list[str]:
        return self._gene_ids

    def gene_symbols(self) -> list[str] | None:
        return self._symbols

    def obs_names(self) -> np.ndarray:
        from anndata.io import read_elem

        obs = self._g["obs"]
        return as_str_array(read_elem(obs[_attr(obs, "_index", "_index")]))

    def obs_columns(self, names: list[str]) -> pd.DataFrame:
        """The requested obs columns that exist (as strings); missing ones are left out."""
        from anndata.io import read_elem

        obs = self._g["obs"]
        have = set(obs.keys())
        return frame_of({n: np.asarray(read_elem(obs[n])) for n in names if n in have})

    def read_rows(self, start: int, stop: int) -> CSRChunk:
        """Rows ``[start, stop)`` as a CSRChunk (one contiguous read of data and indices)."""
        check_range(self, start, stop)
        try:
            if self._dense is not None:
                return csr_chunk(start, np.asarray(self._dense[start:stop]))
            a, b = int(self._indptr[start]), int(self._indptr[stop])
            indptr = self._indptr[start : stop + 1] - a
            return CSRChunk(start, indptr, self._indices[a:b], self._data[a:b])
        except (OSError, ValueError) as e:
            raise SourceError(
                f"{self.path!r}: reading rows {start}-{stop} failed ({str(e).splitlines()[0]}); "
                "the store is truncated or corrupt: re-export it"
            ) from None

    def describe(self) -> dict:
        size = sum(f.stat().st_size for f in Path(self.path).rglob("*") if f.is_file())
        return {
            "path": os.path.abspath(self.path),
            "format": f"anndata-zarr-v{self.format}",
            "layer": self.layer,
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
            "bytes": size,
            "gene_ids_from": self._id_source,
        }

    def close(self) -> None:
        """Nothing to release: zarr and tensorstore handles close with the object."""
