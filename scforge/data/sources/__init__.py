"""Input sources: anything that yields bounded chunks of CSR raw counts plus obs rows and gene ids."""

from __future__ import annotations

from scforge.data.sources.base import CSRChunk, Source, SourceError
from scforge.data.sources.h5ad import H5adSource


def open_source(path: str, *, layer: str = "X", gene_column: str = "") -> Source:
    """Opens an input by its path (``.h5ad`` today; more formats register here)."""
    if str(path).endswith(".h5ad") or str(path).endswith(".h5"):
        return H5adSource(path, layer=layer, gene_column=gene_column)
    raise SourceError(f"unsupported input {path!r}: scforge-shard reads .h5ad files")


__all__ = ["CSRChunk", "H5adSource", "Source", "SourceError", "open_source"]
