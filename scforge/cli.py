"""The ``scforge`` command: one entry point for every stage.

scforge demo [--out DIR]          shard the bundled pbmc3k dataset and show the result
scforge shard ...                 same as ``scforge-shard ...``
scforge inspect DIR               same as ``scforge-shard inspect DIR``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _demo(argv: list[str]) -> int:
    from scforge.data.shard.cli import main as shard_main
    from scforge.data.shard.inspect import inspect
    from scforge.resources import DEFAULT_DATASET

    ap = argparse.ArgumentParser(
        prog="scforge demo", description="Shard the bundled pbmc3k dataset (2,638 real cells)."
    )
    ap.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    ap.add_argument(
        "--strategy",
        default="rank_value",
        choices=["rank_value", "binned_expression", "continuous_projection"],
    )
    args = ap.parse_args(argv)
    recipe = {
        "rank_value": "geneformer_v2",
        "binned_expression": "scgpt_binned",
        "continuous_projection": "continuous",
    }[args.strategy]
    cfg_path = Path(__file__).resolve().parents[1] / "configs" / "shard" / f"{recipe}.yaml"
    out = Path(args.out) / f"shards_{recipe}"
    print(f"[scforge demo] dataset: {DEFAULT_DATASET.name} (10x PBMC 3k, raw UMI counts)")
    t0 = time.perf_counter()
    cmd = [str(DEFAULT_DATASET), "--out", str(out), "shard.cells_per_shard=1024"]
    if cfg_path.is_file():
        cmd += ["--config", str(cfg_path)]
    else:  # installed without the repo's configs/: the defaults are the Geneformer V2 recipe
        cmd += [f"tokenizer.strategy={args.strategy}"]
    code = shard_main(cmd)
    if code != 0:
        return code
    print(inspect(out, n_cells=3, n_genes=10))
    print(
        f"[scforge demo] done in {time.perf_counter() - t0:.1f} s; shards in {out}/ "
        f"(read them with scforge.data.read_shards('{out}'))"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scforge`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from scforge.data.shard.cli import main as shard_main

    def lazy(module: str, func: str):
        # Import on use: `scforge shard` must not pay for torch, DeepSpeed or scib-metrics.
        def run(args: list[str]) -> int:
            import importlib

            return getattr(importlib.import_module(module), func)(args)

        return run

    commands = {
        "demo": _demo,
        "shard": shard_main,
        "inspect": lambda a: shard_main(["inspect", *a]),
        "stats": lambda a: shard_main(["stats", *a]),
        "train": lazy("scforge.training.cli", "main"),
        "embed": lazy("scforge.eval.embed", "embed_main"),
        "evaluate": lazy("scforge.eval.harness", "evaluate_main"),
        "finetune": lazy("scforge.finetune.train", "finetune_main"),
        "predict": lazy("scforge.finetune.train", "predict_main"),
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__.strip())
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
