"""``python -m benchmarks --suite quick|full [--out DIR]``: the whole benchmark suite."""

from __future__ import annotations

import sys

from benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main())
