"""Input sources: anything that yields bounded chunks of CSR raw counts plus obs rows and gene ids.

``open_source`` picks the reader from the input's spelling:

==========================================  =====================================================
``census://<version>?organism=..&obs=..``   CELLxGENE Census (``soma.SomaSource``)
``soma://<uri>?obs=..`` or a SOMA directory any TileDB-SOMA experiment (``soma.SomaSource``)
``*.h5ad``                                  AnnData HDF5 (``h5ad.H5adSource``)
``*.zarr`` / a zarr directory               AnnData zarr v2 or v3 (``anndata_zarr``)
``*.h5`` (Cell Ranger) / an mtx directory   10x Genomics (``tenx``)
``*.loom``                                  loom (``loom.LoomSource``)
``*.csv`` / ``*.tsv`` / ``*.txt`` (``.gz``) cells x genes text (``text.TextSource``)
==========================================  =====================================================
"""

from __future__ import annotations

import os
from pathlib import Path

from scforge.data.sources.base import CSRChunk, Source, SourceError, dataset_name
from scforge.data.sources.h5ad import H5adSource
from scforge.data.sources.soma import SomaSpec, is_soma_url, parse_soma_url

SUPPORTED = (
    ".h5ad, AnnData .zarr, 10x .h5 or matrix.mtx directories, .loom, .csv/.tsv(.gz), "
    "census://<version>?..., soma://<experiment> or a SOMA experiment directory"
)


def open_source(
    path: str,
    *,
    layer: str = "X",
    gene_column: str = "",
    soma: SomaSpec | None = None,
    zarr_backend: str = "",
) -> Source:
    """Opens an input by its spelling (see the module docstring for the table).

    Args:
        path: file, directory or ``census://`` / ``soma://`` URL.
        layer: AnnData/loom matrix (``X``, ``raw/X``, ``layers/<name>``); SOMA inputs use
            ``soma.layer`` instead.
        gene_column: var column holding gene ids ("" = auto).
        soma: defaults for SOMA inputs (value filter, organism, measurement, X layer, obs columns);
            URL parameters override them.
        zarr_backend: ``tensorstore`` or ``zarr`` for AnnData zarr ("" = the measured default).

    Raises:
        SourceError: unsupported, missing or unreadable input (the message says what to do).
    """
    spelled = str(path)
    if is_soma_url(spelled):
        from scforge.data.sources.soma import SomaSource

        return SomaSource(parse_soma_url(spelled, soma), gene_column=gene_column, path=spelled)
    p = Path(spelled)
    low = spelled.lower().rstrip("/")
    if not p.exists():
        raise SourceError(f"input {spelled!r} does not exist; scforge-shard reads {SUPPORTED}")
    if p.is_dir():
        return _open_dir(
            spelled, layer=layer, gene_column=gene_column, soma=soma, zarr_backend=zarr_backend
        )
    if low.endswith(".h5ad"):
        return H5adSource(spelled, layer=layer, gene_column=gene_column)
    if low.endswith(".h5"):
        from scforge.data.sources.tenx import TenxH5Source, is_tenx_h5

        if is_tenx_h5(spelled):
            return TenxH5Source(spelled)
        return H5adSource(spelled, layer=layer, gene_column=gene_column)
    if low.endswith(".loom"):
        from scforge.data.sources.loom import LoomSource

        return LoomSource(spelled, layer=layer, gene_column=gene_column)
    from scforge.data.sources.text import TextSource, is_text_matrix

    if is_text_matrix(spelled):
        return TextSource(spelled)
    raise SourceError(f"unsupported input {spelled!r}: scforge-shard reads {SUPPORTED}")


def _open_dir(
    path: str, *, layer: str, gene_column: str, soma: SomaSpec | None, zarr_backend: str
) -> Source:
    from scforge.data.sources.anndata_zarr import DEFAULT_BACKEND, AnnDataZarrSource, is_zarr_store
    from scforge.data.sources.soma import looks_like_soma_dir
    from scforge.data.sources.tenx import TenxMtxSource, is_tenx_dir

    if is_zarr_store(path):
        return AnnDataZarrSource(
            path, layer=layer, gene_column=gene_column, backend=zarr_backend or DEFAULT_BACKEND
        )
    if is_tenx_dir(path):
        return TenxMtxSource(path)
    if looks_like_soma_dir(path):
        from scforge.data.sources.soma import SomaSource

        spec = soma or SomaSpec()
        return SomaSource(
            SomaSpec(**{**spec.__dict__, "uri": os.path.abspath(path), "census_version": ""}),
            gene_column=gene_column,
            path=path,
        )
    if path.lower().rstrip("/").endswith(".zarr"):
        raise SourceError(
            f"{path!r} is named .zarr but holds no zarr metadata (zarr.json / .zgroup); write "
            "it with adata.write_zarr()"
        )
    have = sorted(q.name for q in Path(path).iterdir())[:8]
    raise SourceError(
        f"directory {path!r} is not a readable input (holds {have}); scforge-shard reads "
        f"{SUPPORTED}"
    )


__all__ = [
    "CSRChunk",
    "H5adSource",
    "SomaSpec",
    "Source",
    "SourceError",
    "dataset_name",
    "open_source",
]
