"""Command line of the trainer: ``python -m scforge.train`` / ``deepspeed scforge/train.py``.

    --config FILE [--config FILE ...]   training recipes (merged in order)
    key=value ...                        overrides, e.g. train.max_steps=50 model.preset=small
    --print-config                       print the resolved config and exit (nothing is built)

``main(argv)`` is also what ``scforge train ...`` calls. Launchers append ``--local_rank=N``
(DeepSpeed) or set ``LOCAL_RANK`` (torchrun); both are accepted.
"""

from __future__ import annotations

import argparse
import sys

from scforge.config.loader import ConfigError, to_yaml


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="scforge train",
        description="Train a registry model on scforge shards with DeepSpeed (1 process: "
                    "python -m scforge.train; N GPUs/nodes: deepspeed scforge/train.py).")
    ap.add_argument("--config", action="append", default=[], metavar="FILE",
                    help="training recipe YAML (repeatable; later files win)")
    ap.add_argument("--print-config", action="store_true",
                    help="print the resolved config (before binding to the data) and exit")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None,
                    help=argparse.SUPPRESS)  # appended by the deepspeed launcher
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides (dotlist)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Runs a training job; returns the process exit code (2 for a bad config)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    import os

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from scforge.training.config import load_train_config

    try:
        cfg = load_train_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"scforge train: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from scforge.training.trainer import train

    try:
        result = train(cfg)
    except ConfigError as e:
        print(f"scforge train: config error: {e}", file=sys.stderr)
        return 2
    if result.out_dir and (os.environ.get("RANK", "0") == "0"):
        last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
        print(f"scforge train: step {result.step}, last loss {last}"
              f"{', stopped early' if result.stopped_early else ''}; run dir {result.out_dir}"
              f"{'; export ' + str(result.export_dir) if result.export_dir else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
