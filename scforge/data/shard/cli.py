"""Command line of ``scforge-shard``.

    scforge-shard INPUT [...] --out DIR [--format tar|zarr] [--config YAML] [--workers N]
                  [--partition i/n] [k=v ...]
    scforge-shard stats INPUT [...] --out medians.json [--hvg N] [--batch-key KEY]
                  [--vocab-out vocab.json --min-cells N] [k=v ...]
    scforge-shard inspect DIR [--cells 3]
    scforge-shard merge DIR

INPUT is a file or directory (.h5ad, AnnData .zarr, 10x .h5 / mtx directory, .loom, .csv/.tsv,
a SOMA experiment directory) or a URL: ``census://<version>?organism=homo_sapiens&obs=<filter>``,
``soma://<experiment>?obs=<filter>`` (URL-encode the filter).

Errors print one line naming the problem and the fix, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scforge.config import ShardJobConfig, load_config
from scforge.errors import ArgumentParser, run_command


def _parse_partition(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--partition {text!r}: use i/n, e.g. 0/4") from None
    return i, n


def _split_inputs(args: list[str]) -> tuple[list[str], list[str]]:
    """Positional arguments -> (inputs, key=value overrides); URLs and existing paths are inputs."""
    overrides = [a for a in args if "=" in a and "://" not in a and not Path(a).exists()]
    return [a for a in args if a not in overrides], overrides


def _shard_main(argv: list[str]) -> int:
    from scforge.data.shard.writer import ShardJob

    ap = ArgumentParser(prog="scforge-shard", description="Tokenize cells into shards.")
    ap.add_argument(
        "inputs",
        nargs="*",
        help="inputs (files, directories, census:// or soma:// URLs), then "
        "optional key=value overrides; none = the source.soma block of the config",
    )
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--config", action="append", default=[], help="YAML recipe (repeatable)")
    ap.add_argument(
        "--format",
        choices=["tar", "zarr"],
        default=None,
        help="tar shards or a Zarr v3 token store (shard.format)",
    )
    ap.add_argument("--workers", type=int, default=None, help="processes (shard.workers)")
    ap.add_argument(
        "--partition",
        type=_parse_partition,
        default=(0, 1),
        help="i/n: write only units u with u %% n == i (cluster jobs)",
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_intermixed_args(argv)
    inputs, overrides = _split_inputs(args.inputs)
    if args.workers is not None:
        overrides.append(f"shard.workers={args.workers}")
    if args.format is not None:
        overrides.append(f"shard.format={args.format}")
    cfg = load_config(ShardJobConfig, args.config, overrides)
    job = ShardJob(inputs, args.out, cfg, partition=args.partition, progress=not args.no_progress)
    summary = job.run()
    print(_summary_line(summary))
    return 0


def _summary_line(s: dict) -> str:
    state = (
        "complete" if s["complete"] else "partition done (run `scforge-shard merge` when all are)"
    )
    dropped = f" ({s['cells_dropped']:,} dropped by QC)" if s.get("cells_dropped") else ""
    return (
        f"{state}: {s['cells']:,} cells{dropped}, {s['tokens']:,} tokens, {s['shards']} shards, "
        f"{s['bytes'] / 1e6:.1f} MB in {s['out']}; wrote {s['shards_written']} shards "
        f"({s['shards_skipped']} already done) in {s['seconds']:.1f} s"
        + (f" = {s['cells_per_s']:,.0f} cells/s" if s.get("cells_per_s") else "")
    )


def _inspect_main(argv: list[str]) -> int:
    from scforge.data.shard.inspect import inspect

    ap = ArgumentParser(prog="scforge-shard inspect")
    ap.add_argument("dir")
    ap.add_argument("--cells", type=int, default=3, help="decoded cells to show")
    ap.add_argument("--genes", type=int, default=12, help="genes shown per cell")
    ap.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    ap.add_argument("--verify", action="store_true",
                    help="also check every shard's sha256 (reads all of them)")
    args = ap.parse_args(argv)
    print(inspect(args.dir, n_cells=args.cells, n_genes=args.genes, as_json=args.json,
                  verify=args.verify))
    return 0


def _merge_main(argv: list[str]) -> int:
    from scforge.data.shard.inspect import merge

    ap = ArgumentParser(prog="scforge-shard merge")
    ap.add_argument("dir")
    args = ap.parse_args(argv)
    man = merge(args.dir)
    print(json.dumps(man["totals"]))
    return 0


def _stats_main(argv: list[str]) -> int:
    from scforge.data.stats.cli import run_stats

    ap = ArgumentParser(
        prog="scforge-shard stats",
        description="Per-gene nonzero medians (for rank_value), cell counts and HVGs of a corpus.",
    )
    ap.add_argument("inputs", nargs="*", help="inputs, then optional key=value overrides")
    ap.add_argument("--out", required=True, help="median dictionary JSON (gene -> median)")
    ap.add_argument(
        "--stats-out", default="", help="full statistics JSON (default: <out>.stats.json)"
    )
    ap.add_argument("--config", action="append", default=[], help="YAML recipe (repeatable)")
    ap.add_argument("--hvg", type=int, default=0, help="also select N highly variable genes")
    ap.add_argument("--batch-key", default=None, help="obs column for batch-aware HVGs")
    ap.add_argument(
        "--vocab-out",
        default="",
        help="write a token dictionary of genes seen in "
        ">= --min-cells cells (use with vocab.kind=json)",
    )
    ap.add_argument("--min-cells", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_intermixed_args(argv)
    inputs, overrides = _split_inputs(args.inputs)
    if args.batch_key is not None:
        overrides.append(f"source.hvg.batch_key={args.batch_key}")
    cfg = load_config(ShardJobConfig, args.config, overrides)
    print(
        run_stats(
            inputs,
            cfg,
            out=args.out,
            stats_out=args.stats_out,
            hvg=args.hvg,
            vocab_out=args.vocab_out,
            min_cells=args.min_cells,
            progress=not args.no_progress,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scforge-shard`` console script."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = {"inspect": _inspect_main, "merge": _merge_main, "stats": _stats_main}
    if argv and argv[0] in sub:
        return run_command("scforge-shard", lambda: sub[argv[0]](argv[1:]))
    return run_command("scforge-shard", lambda: _shard_main(argv))


if __name__ == "__main__":
    sys.exit(main())
