"""``StatefulLoader``: a DataLoader over a ``ShardStream`` that knows exactly what it delivered.

Workers prefetch ahead of the trainer, so a worker's own count of what it produced overstates
what was trained on. This wrapper counts batches where they are handed to the trainer (the
``for`` loop of the training step) and its ``state_dict()`` is the position of *that* stream.
On resume it tells every worker how many of its batches to skip, and rotates which physical
worker serves which logical worker so the DataLoader's round-robin continues with the same worker
the unbroken run would have used next: the resumed stream is the unbroken one, batch for batch.

Workers start with ``forkserver`` by default: a training process that ran a Numba parallel
(OpenMP) kernel cannot safely ``fork`` (it aborts), and forkserver children start from a clean
server that has already imported torch, so startup stays cheap. Workers are created per epoch
(``persistent_workers`` is off) because each epoch's plan is passed to them when they start.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from scforge.data.stream.dataset import ShardStream
from scforge.data.stream.wire import StreamBatch, StreamGroup, forget_mapped


class StatefulLoader:
    """Iterates a :class:`ShardStream` epoch by epoch through worker processes, resumably.

    Each ``iter(loader)`` yields the rest of the current epoch (all of it, unless resumed
    mid-epoch) and then moves the stream to the next epoch.

    Args:
        stream: the dataset (its rank/world and config decide the batches).
        num_workers: DataLoader worker processes; 0 iterates in this process.
        multiprocessing_context: ``forkserver`` (default), ``spawn`` or ``fork`` (only safe if no
            OpenMP/Numba-parallel code ran in this process).
        prefetch_factor: batches each worker prepares ahead.
        pin_memory: pin batches for faster host-to-GPU copies.
        timeout: seconds to wait for one batch before raising (0 = forever); dead workers are
            detected regardless, and worker exceptions are re-raised here.
        transfer_batches: batches a worker sends per message, carved from one shared-memory
            segment. Handing a segment to the main process costs ~0.5 ms of main-process CPU
            here whatever its size, more than building a batch of 64 cells; grouping amortises
            it. Part of the resume layout (it decides the delivery order with several workers).
    """

    def __init__(self, stream: ShardStream, *, num_workers: int = 2,
                 multiprocessing_context: str | None = "forkserver", prefetch_factor: int = 4,
                 pin_memory: bool = False, timeout: float = 300.0,
                 transfer_batches: int = 8) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0")
        if prefetch_factor < 1:
            raise ValueError(f"prefetch_factor={prefetch_factor} must be >= 1")
        if transfer_batches < 1:
            raise ValueError(f"transfer_batches={transfer_batches} must be >= 1")
        if timeout < 0:
            raise ValueError(f"timeout={timeout} must be >= 0 seconds (0 = no limit)")
        methods = multiprocessing.get_all_start_methods()
        if multiprocessing_context is not None and multiprocessing_context not in methods:
            raise ValueError(f"multiprocessing_context={multiprocessing_context!r} is not "
                             f"available here; choose one of {methods}")
        self.stream = stream
        self.num_workers = num_workers
        self.multiprocessing_context = multiprocessing_context
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.timeout = timeout
        self.transfer_batches = transfer_batches
        stream.transfer = transfer_batches

    def __len__(self) -> int:
        """Batches per epoch (equal on every rank)."""
        return self.stream.batches_per_epoch

    @property
    def metrics(self) -> dict[str, float]:
        """The stream's delivered-batch counters (``pad_fraction``, ``skipped_shards``, ...)."""
        return self.stream.metrics

    def state_dict(self) -> dict[str, Any]:
        """Position of the delivered stream; store it in the training checkpoint."""
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes from ``state`` (see :meth:`ShardStream.load_state_dict` for the guarantees)."""
        self.stream.load_state_dict(state)

    def _context(self) -> Any:
        if self.multiprocessing_context is None:
            return None
        ctx = multiprocessing.get_context(self.multiprocessing_context)
        if self.multiprocessing_context == "forkserver":
            # Children fork from a server that already imported torch and the loader and
            # loaded the batch kernel (otherwise every worker of every epoch loads it).
            ctx.set_forkserver_preload(["torch", "scforge.data.stream",
                                        "scforge.data.stream._warm"])
        return ctx

    def __iter__(self) -> Iterator[StreamBatch]:
        stream = self.stream
        stream.transfer = self.transfer_batches
        if self.num_workers == 0:
            yield from stream.iter_workers(stream.layout()["num_workers"] if stream.delivered
                                           else 1)
            return
        epoch = stream.epoch
        stream._begin(self.num_workers)
        loader = DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                            multiprocessing_context=self._context(),
                            prefetch_factor=self.prefetch_factor, pin_memory=self.pin_memory,
                            timeout=self.timeout, persistent_workers=False, in_order=True)
        it = iter(loader)
        try:
            for item in it:
                for batch in item.batches if isinstance(item, StreamGroup) else [item]:
                    if batch.info is None:
                        raise RuntimeError("a batch arrived without its BatchInfo; was the "
                                           "stream wrapped by another dataset?")
                    stream.record(batch.info)
                    yield batch
        except Exception:
            _stop_workers(it)
            raise
        finally:
            del it
            forget_mapped()
        if stream.epoch == epoch:
            raise RuntimeError(f"the DataLoader ended epoch {epoch} after {stream.delivered} of "
                               f"{stream.batches_per_epoch} batches; a worker stopped early")


def _stop_workers(it: Any) -> None:
    """Ends the workers of a failed DataLoader iterator at once.

    After a worker raised, torch's own shutdown (run whenever the iterator is collected, often
    much later since the traceback holds it) waits ~5 s per worker for them to exit; the error
    is already on its way to the caller, so nothing is lost by ending them now.
    """
    for w in getattr(it, "_workers", []):
        if w.is_alive():
            w.terminate()
    shutdown = getattr(it, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()
