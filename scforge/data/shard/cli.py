"""Command line of ``scforge-shard``.

    scforge-shard INPUT.h5ad [...] --out DIR [--config YAML] [--workers N] [--partition i/n] [k=v ...]
    scforge-shard inspect DIR [--cells 3]
    scforge-shard merge DIR

Errors print one line naming the problem and the fix, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scforge.config import ConfigError, ShardJobConfig, load_config


def _parse_partition(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--partition {text!r}: use i/n, e.g. 0/4") from None
    return i, n


def _shard_main(argv: list[str]) -> int:
    from scforge.data.shard.writer import ShardJob

    ap = argparse.ArgumentParser(prog="scforge-shard", description="Tokenize AnnData into shards.")
    ap.add_argument(
        "inputs", nargs="+", help="input .h5ad files, then optional key=value overrides"
    )
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--config", action="append", default=[], help="YAML recipe (repeatable)")
    ap.add_argument("--workers", type=int, default=None, help="processes (shard.workers)")
    ap.add_argument(
        "--partition",
        type=_parse_partition,
        default=(0, 1),
        help="i/n: write only units u with u %% n == i (cluster jobs)",
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_intermixed_args(argv)
    overrides = [a for a in args.inputs if "=" in a and not Path(a).exists()]
    inputs = [a for a in args.inputs if a not in overrides]
    if args.workers is not None:
        overrides.append(f"shard.workers={args.workers}")
    cfg = load_config(ShardJobConfig, args.config, overrides)
    job = ShardJob(inputs, args.out, cfg, partition=args.partition, progress=not args.no_progress)
    summary = job.run()
    print(_summary_line(summary))
    return 0


def _summary_line(s: dict) -> str:
    state = (
        "complete" if s["complete"] else "partition done (run `scforge-shard merge` when all are)"
    )
    return (
        f"{state}: {s['cells']:,} cells, {s['tokens']:,} tokens, {s['shards']} shards, "
        f"{s['bytes'] / 1e6:.1f} MB in {s['out']}; wrote {s['shards_written']} shards "
        f"({s['shards_skipped']} already done) in {s['seconds']:.1f} s"
        + (f" = {s['cells_per_s']:,.0f} cells/s" if s.get("cells_per_s") else "")
    )


def _inspect_main(argv: list[str]) -> int:
    from scforge.data.shard.inspect import inspect

    ap = argparse.ArgumentParser(prog="scforge-shard inspect")
    ap.add_argument("dir")
    ap.add_argument("--cells", type=int, default=3, help="decoded cells to show")
    ap.add_argument("--genes", type=int, default=12, help="genes shown per cell")
    ap.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    args = ap.parse_args(argv)
    print(inspect(args.dir, n_cells=args.cells, n_genes=args.genes, as_json=args.json))
    return 0


def _merge_main(argv: list[str]) -> int:
    from scforge.data.shard.inspect import merge

    ap = argparse.ArgumentParser(prog="scforge-shard merge")
    ap.add_argument("dir")
    args = ap.parse_args(argv)
    man = merge(args.dir)
    print(json.dumps(man["totals"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scforge-shard`` console script."""
    import logging

    from scforge.data.shard.format import ShardFormatError
    from scforge.data.shard.writer import ShardError
    from scforge.data.sources import SourceError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = {"inspect": _inspect_main, "merge": _merge_main}
    try:
        if argv and argv[0] in sub:
            return sub[argv[0]](argv[1:])
        return _shard_main(argv)
    except (ConfigError, ShardError, SourceError, ShardFormatError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"scforge-shard: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
