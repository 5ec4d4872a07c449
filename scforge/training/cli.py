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

from scforge.config.loader import to_yaml
from scforge.errors import ArgumentParser, run_command


def _parser() -> ArgumentParser:
    ap = ArgumentParser(
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
    """Runs a training job; returns the process exit code (2 for bad input, on every rank).

    A config that cannot work, missing or corrupt shards, a full or read-only run directory:
    one line ``scforge train: error: ...`` on stderr (see :mod:`scforge.errors`). Errors that
    only one rank meets (a corrupt shard it reads) reach every rank (``distributed.agree``).
    """
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    import os

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return run_command("scforge train", lambda: _run(args))


def _run(args) -> int:
    import os

    from scforge.training.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from scforge.training.trainer import train

    result = train(cfg)
    if result.out_dir and (os.environ.get("RANK", "0") == "0"):
        last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
        print(f"scforge train: step {result.step}, last loss {last}"
              f"{', stopped early' if result.stopped_early else ''}; run dir {result.out_dir}"
              f"{'; export ' + str(result.export_dir) if result.export_dir else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
