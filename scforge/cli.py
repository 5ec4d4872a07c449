"""The ``scforge`` command: one entry point for every stage.

scforge demo [--quick]            shard, pretrain, embed, evaluate, report on bundled PBMC cells
scforge shard ...                 same as ``scforge-shard ...``
scforge inspect DIR               same as ``scforge-shard inspect DIR``
scforge stats ...                 same as ``scforge-shard stats ...``
scforge train --config ...        pretrain (``python -m scforge.train``)
scforge embed --checkpoint ...    cell embeddings of an export -> obsm
scforge evaluate --config ...     evaluation harness (probe, scib-metrics) -> report
scforge finetune --config ... --checkpoint DIR   task head (+ LoRA) through the DeepSpeed trainer
scforge predict --model ...       apply a fine-tuned model -> obs
scforge import hf|scgpt DIR --out EXPORT   Geneformer / Hugging Face BERT or scGPT -> export
scforge export hf EXPORT --out DIR         post-LN export -> Hugging Face BertForMaskedLM dir
scforge bench --suite quick|full  benchmark suite, every stage against its peers (repo checkout)
"""

from __future__ import annotations

import sys
from pathlib import Path

from scforge.errors import ArgumentParser, run_command


def _demo(argv: list[str]) -> int:
    ap = ArgumentParser(
        prog="scforge demo",
        description="The whole pipeline on the bundled real PBMC cells: shard, pretrain the "
        "debug encoder, embed, evaluate against HVG + PCA, write a report.",
    )
    ap.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    ap.add_argument(
        "--strategy",
        default="rank_value",
        choices=["rank_value", "binned_expression", "continuous_projection"],
        help="tokenizer (Geneformer V2 rank values, scGPT bins, continuous values)",
    )
    ap.add_argument("--steps", type=int, default=None, help="pretraining steps (default 500)")
    ap.add_argument("--max-len", type=int, default=None, help="tokens per cell (default 64)")
    ap.add_argument("--eval-cells", type=int, default=None, help="cells to evaluate (0 = all)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 30 steps, 32 tokens, 600 "
                    "evaluated cells (under a minute of compute)")
    ap.add_argument("--no-scib", action="store_true", help="skip scib-metrics (probe only)")
    ap.add_argument("--no-umap", action="store_true", help="skip the UMAP figure")
    ap.add_argument("--device", default="auto", help="embedding device: auto | cpu | cuda")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from scforge.eval.demo import DemoConfig, quick, run_demo

    cfg = DemoConfig(out=args.out, strategy=args.strategy, scib=not args.no_scib,
                     umap=not args.no_umap, device=args.device, progress=not args.no_progress)
    if args.quick:
        cfg = quick(cfg)
    for name in ("steps", "max_len", "eval_cells"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    return run_command("scforge demo", lambda: run_demo(cfg) and 0)


def _bench(argv: list[str]) -> int:
    # The suite lives in the repository's benchmarks/ (it is not installed with the package):
    # find it next to this checkout, or say how to get it.
    import importlib

    repo = Path(__file__).resolve().parents[1]
    if (repo / "benchmarks" / "suite.py").is_file() and str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    try:
        suite = importlib.import_module("benchmarks.suite")
    except ImportError as exc:
        print(f"scforge bench: the benchmark suite is not available ({exc}); run it from a "
              "repository checkout (git clone ... && make venv), where benchmarks/ exists",
              file=sys.stderr)
        return 2
    return suite.cli_main(argv)


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
        "import": lazy("scforge.interop.cli", "import_main"),
        "export": lazy("scforge.interop.cli", "export_main"),
        "bench": _bench,
    }
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] not in commands:
        print(f"scforge: error: unknown command {argv[0]!r}; choose one of "
              f"{', '.join(commands)} (see scforge --help)", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
