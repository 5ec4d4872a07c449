"""Thin entry point: ``deepspeed scforge/train.py --config configs/train/<recipe>.yaml [k=v ...]``.

Also ``python -m scforge.train ...`` (one process; the rendezvous variables are set when no
launcher did) and ``torchrun --nproc_per_node N scforge/train.py ...``. Everything lives in
:mod:`scforge.training`; this file only makes the path launchers expect exist.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a script, Python puts scforge/ itself first on sys.path, where scforge's
    # subpackages (config, data, models, ...) would shadow unrelated top-level modules. Drop it
    # and import the installed scforge; a checkout that was never installed falls back to the
    # repository root.
    import importlib.util

    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    if importlib.util.find_spec("scforge") is None:
        sys.path.insert(0, os.path.dirname(_here))

from scforge.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
