"""Imported by the DataLoader forkserver: loads the loader's kernels before workers fork."""

from __future__ import annotations

import gc
import warnings

from scforge.data.stream.fused import warm
from scforge.kernels.unshuffle import warm as warm_unshuffle

try:
    warm()
    warm_unshuffle()
except Exception as e:  # noqa: BLE001 - warming is an optimisation; workers load it themselves
    warnings.warn(f"could not preload the fused batch kernel ({e}); each loader worker will "
                  "load it on its first batch", stacklevel=1)

# Workers fork from this server: keep the garbage collector from touching (and so copying, page
# by page) the server's objects in every child.
gc.freeze()
