#!/usr/bin/env python
"""Writes a realistic synthetic raw-count corpus (.h5ad and/or local SOMA) in bounded memory.

Examples:
    python tools/make_corpus.py --cells 1m --out corpus_1m.h5ad --seed 0
    python tools/make_corpus.py --cells 100k --out corpus_100k.h5ad --format both

``--cells`` takes a preset (``10k``, ``100k``, ``1m``) or a number. ``--format soma``/``both``
also ingests the corpus into a local TileDB-SOMA experiment (measurement ``RNA``, X layer
``raw``; ``--soma-out``, default: ``--out`` with a ``.soma`` suffix) from the h5ad in backed
mode, so memory stays bounded at 1M cells too. Shows a progress bar on stderr and prints one JSON
summary line on stdout (shape, nonzeros per cell, counts per cell, timing, file size). Same
arguments, identical ``X``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cells(text: str) -> int:
    from scforge.testing.corpus import parse_cells

    try:
        return parse_cells(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="make_corpus.py",
        description="Write a realistic synthetic raw-count .h5ad (NB counts, cell types, batches).",
    )
    p.add_argument(
        "--cells", type=_cells, required=True, help="number of cells or a preset: 10k, 100k, 1m"
    )
    p.add_argument(
        "--genes",
        type=_positive_int,
        default=20000,
        help="number of genes (default 20000; Geneformer V2 Ensembl IDs, padded)",
    )
    p.add_argument("--out", required=True, help="output .h5ad path (overwritten)")
    p.add_argument(
        "--format",
        choices=("h5ad", "soma", "both"),
        default="h5ad",
        help="h5ad (default), soma (local TileDB-SOMA experiment only) or both",
    )
    p.add_argument(
        "--soma-out",
        default=None,
        help="SOMA experiment directory (default: --out with a .soma suffix)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--nnz-per-cell",
        type=float,
        default=1500.0,
        help="expected detected genes per cell (default 1500)",
    )
    p.add_argument(
        "--chunk-cells",
        type=_positive_int,
        default=10000,
        help="cells generated and written per step; bounds memory (default 10000)",
    )
    p.add_argument("--cell-types", type=_positive_int, default=8, help="cell types (default 8)")
    p.add_argument("--batches", type=_positive_int, default=2, help="batches (default 2)")
    p.add_argument(
        "--compression",
        choices=("none", "lzf", "gzip"),
        default="lzf",
        help="HDF5 compression of X (default lzf; none is fastest on a fast disk)",
    )
    p.add_argument(
        "--threads", type=_positive_int, default=None, help="Numba threads (default: all)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (2 on bad arguments)."""
    args = build_parser().parse_args(argv)
    from pathlib import Path

    from scforge.testing import write_synthetic_h5ad
    from scforge.testing.corpus import write_soma

    out = Path(args.out)
    soma_out = Path(args.soma_out) if args.soma_out else out.with_suffix(".soma")
    if args.format != "h5ad" and soma_out.exists():
        print(
            f"make_corpus.py: error: {soma_out} exists; delete it or pass another --soma-out",
            file=sys.stderr,
        )
        return 2
    if args.format == "soma":  # the h5ad is only the ingestion source: keep it out of the way
        out = soma_out.with_name(soma_out.name + ".src.h5ad")
    try:
        summary = write_synthetic_h5ad(
            out,
            args.cells,
            args.genes,
            seed=args.seed,
            mean_nnz=args.nnz_per_cell,
            chunk_cells=args.chunk_cells,
            n_cell_types=args.cell_types,
            n_batches=args.batches,
            compression=None if args.compression == "none" else args.compression,
            n_threads=args.threads,
            progress=not args.no_progress,
        )
        if args.format != "h5ad":
            summary["soma"] = write_soma(out, soma_out)
    except (ValueError, ImportError) as exc:
        print(f"make_corpus.py: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.format == "soma":
            out.unlink(missing_ok=True)
    if args.format == "soma":
        summary["path"] = None
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
