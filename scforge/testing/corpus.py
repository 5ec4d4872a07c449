"""Synthetic benchmark corpora at fixed sizes (10k / 100k / 1M cells), as h5ad and local SOMA.

A corpus is :func:`scforge.testing.write_synthetic_h5ad` at a preset size (20,000 Geneformer V2
genes, ~1,500 detected genes per cell, 8 cell types, 2 batches), optionally ingested into a local
TileDB-SOMA experiment (measurement ``RNA``, X layer ``raw``: what ``scforge-shard`` reads from a
SOMA directory by default). Both writers are bounded in memory: the h5ad is streamed chunk by
chunk, and the SOMA experiment is ingested from that h5ad in backed mode
(``tiledbsoma.io.from_h5ad``) with ``goal_chunk_nnz`` capping the nonzeros held at once. Same
preset and seed, identical ``X``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["PRESETS", "corpus_paths", "ensure_corpus", "parse_cells", "write_soma"]

#: Preset names -> number of cells.
PRESETS: dict[str, int] = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}

_SOMA_GOAL_NNZ = 20_000_000  # ~240 MB of CSR triples per ingestion step


def parse_cells(text: str | int) -> int:
    """``10k``/``100k``/``1m`` (any case) or a plain integer -> number of cells.

    Raises:
        ValueError: not a preset name or a positive integer.
    """
    if isinstance(text, int):
        value = text
    else:
        key = str(text).strip().lower()
        if key in PRESETS:
            return PRESETS[key]
        try:
            value = int(key.replace("_", ""))
        except ValueError:
            raise ValueError(
                f"corpus size {text!r} is not one of {sorted(PRESETS)} or a positive integer"
            ) from None
    if value < 1:
        raise ValueError(f"corpus size must be >= 1, got {value}")
    return value


def corpus_paths(
    root: str | os.PathLike[str],
    n_cells: int,
    *,
    n_genes: int = 20_000,
    mean_nnz: float = 1500,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Where :func:`ensure_corpus` keeps a corpus: ``(h5ad file, SOMA directory)``."""
    stem = f"synthetic_{n_cells}x{n_genes}_nnz{mean_nnz:g}_seed{seed}"
    root = Path(root)
    return root / f"{stem}.h5ad", root / f"{stem}.soma"


def write_soma(
    h5ad: str | os.PathLike[str],
    uri: str | os.PathLike[str],
    *,
    goal_chunk_nnz: int = _SOMA_GOAL_NNZ,
) -> dict[str, Any]:
    """Ingests an h5ad into a new local SOMA experiment (``RNA`` / ``raw``) in bounded memory.

    The experiment is written to ``uri + '.tmp'`` and renamed when complete.

    Raises:
        ValueError: ``uri`` exists, or the h5ad is missing.
        ImportError: tiledbsoma is not installed (``pip install 'scforge[census]'``).
    """
    try:
        import tiledbsoma
        import tiledbsoma.io
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "writing a SOMA corpus needs tiledbsoma: pip install 'scforge[census]'"
        ) from exc
    h5ad, uri = Path(h5ad), Path(uri)
    if not h5ad.is_file():
        raise ValueError(f"h5ad not found: {str(h5ad)!r}")
    if uri.exists():
        raise ValueError(f"SOMA experiment already exists: {str(uri)!r} (delete it first)")
    tmp = uri.with_name(uri.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    cfg = {"tiledb": {"create": {"goal_chunk_nnz": int(goal_chunk_nnz)}}}
    try:
        tiledbsoma.io.from_h5ad(str(tmp), str(h5ad), "RNA", X_layer_name="raw", platform_config=cfg)
        os.replace(tmp, uri)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in uri.rglob("*") if p.is_file())
    return {
        "uri": str(uri),
        "seconds": round(seconds, 3),
        "bytes": size,
        "tiledbsoma": tiledbsoma.__version__,
    }


def ensure_corpus(
    root: str | os.PathLike[str],
    cells: str | int,
    *,
    n_genes: int = 20_000,
    mean_nnz: float = 1500,
    seed: int = 0,
    soma: bool = False,
    chunk_cells: int = 10_000,
    compression: str | None = "lzf",
    n_threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Makes (or reuses) a corpus under ``root``; returns paths and generation figures.

    An existing file is reused as is (files appear only when complete, so a present file is a
    finished one). The summary has ``h5ad``, ``soma`` (or None), ``n_cells``, ``reused`` and the
    generator's summary (``generate``) / SOMA ingestion figures (``soma_ingest``) when made now.
    """
    from scforge.testing.synthetic import write_synthetic_h5ad

    n_cells = parse_cells(cells)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    h5ad, soma_uri = corpus_paths(root, n_cells, n_genes=n_genes, mean_nnz=mean_nnz, seed=seed)
    out: dict[str, Any] = {
        "h5ad": str(h5ad),
        "soma": None,
        "n_cells": n_cells,
        "n_genes": n_genes,
        "seed": seed,
        "reused": True,
    }
    if not h5ad.exists():
        out["reused"] = False
        out["generate"] = write_synthetic_h5ad(
            h5ad,
            n_cells,
            n_genes,
            seed=seed,
            mean_nnz=mean_nnz,
            chunk_cells=chunk_cells,
            compression=compression,
            n_threads=n_threads,
            progress=progress,
        )
    if soma:
        if not soma_uri.exists():
            out["reused"] = False
            out["soma_ingest"] = write_soma(h5ad, soma_uri)
        out["soma"] = str(soma_uri)
    return out
