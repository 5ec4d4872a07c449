"""The loader's resume state: a small JSON-able dict that lives in the training checkpoint.

A position in the stream is ``(epoch, batches delivered to the trainer)``; the per-worker split
of those batches follows from the delivery order (:func:`~scforge.data.stream.ordering.resume_point`)
and is stored too, as a cross-check. All ranks deliver the same number of batches in lockstep,
so every rank's state is the same dict up to ``rank``: any rank's copy resumes every rank.

Guarantees:

- Same layout (world size, workers, batch size, seed, shuffle settings, shards): the resumed
  stream equals the unbroken one batch for batch (same cells, same masks), mid-epoch included.
- Different layout: accepted only at an epoch boundary (the next epoch starts fresh under the
  new layout). Mid-epoch it is refused with an error naming what changed: re-splitting the
  unconsumed part of a shuffled epoch over another layout would need every old worker's
  remainder, and guessing would silently repeat or drop cells.
"""

from __future__ import annotations

from typing import Any

STATE_FORMAT = "scforge-stream-state"
STATE_VERSION = 1

LAYOUT_KEYS = ("world_size", "num_workers", "batch_size", "seed", "shuffle", "shuffle_buffer",
               "uneven", "bucketing", "group_batches", "fingerprint", "n_cells", "transfer")
"""What must be equal for a mid-epoch resume (anything that changes which cell goes where)."""


class ResumeError(ValueError):
    """A saved loader state cannot be resumed as asked; the message says what to change."""


def make_state(*, epoch: int, delivered: int, consumed: list[int], rank: int,
               layout: dict[str, Any]) -> dict[str, Any]:
    """The state dict (plain ints/strings/lists: safe for ``torch.save`` with weights_only)."""
    return {"format": STATE_FORMAT, "version": STATE_VERSION, "epoch": int(epoch),
            "delivered": int(delivered), "consumed": [int(c) for c in consumed],
            "rank": int(rank), **layout}


def check_state(state: dict[str, Any], layout: dict[str, Any]) -> tuple[int, int, list[int]]:
    """Validates ``state`` against the current layout; returns (epoch, delivered, consumed).

    At an epoch boundary (``delivered == 0``) the layout may differ; mid-epoch it may not.

    Raises:
        ResumeError: wrong format/version, or a mid-epoch layout change.
    """
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise ResumeError(f"not a loader state of this scforge (format={state.get('format')!r}, "
                          f"version={state.get('version')!r}; expected {STATE_FORMAT!r} "
                          f"version {STATE_VERSION})")
    epoch, delivered = int(state["epoch"]), int(state["delivered"])
    consumed = [int(c) for c in state.get("consumed", [])]
    if epoch < 0 or delivered < 0 or sum(consumed) != delivered:
        raise ResumeError(f"damaged loader state: epoch={epoch}, delivered={delivered}, "
                          f"consumed={consumed}")
    if delivered == 0:
        return epoch, 0, []
    changed = [f"{k}: saved {state.get(k)!r}, now {layout.get(k)!r}" for k in LAYOUT_KEYS
               if state.get(k) != layout.get(k)]
    if changed:
        raise ResumeError(
            f"cannot resume mid-epoch (epoch {epoch}, {delivered} batches delivered) with a "
            f"different layout ({'; '.join(changed)}). Restore the saved settings to finish this "
            "epoch exactly, or resume from a checkpoint taken at an epoch boundary (the next "
            "epoch then starts under the new layout)")
    return epoch, delivered, consumed
