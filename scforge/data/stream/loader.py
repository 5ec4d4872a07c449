"""``StatefulLoader``: a DataLoader over a ``ShardStream`` that knows exactly what it delivered.

Workers prefetch ahead of the trainer, so a worker's own count of what it produced overstates
what was trained on. This wrapper counts batches where they are handed to the trainer (the
``for`` loop of the training step) and its ``state_dict()`` is the position of *that* stream.
On resume it tells every worker how many of its batches to skip, and rotates which physical
worker serves which logical worker so the DataLoader's round-robin continues with the same worker
the unbroken run would have used next: the resumed stream is the unbroken one, batch for batch.

Workers start with ``forkserver`` by default: a training process that ran a Numba parallel
(OpenMP) kernel cannot safely ``fork`` (it aborts), and forkserver children start from a clean
server that has already imported torch, so startup stays cheap.

Workers persist across epochs: when an epoch was delivered in full, the next ``iter(loader)``
reuses them (torch's ``persistent_workers``), and each worker's copy of the stream moves to the
next epoch by itself, exactly as the trainer's copy does (the plan is a pure function of the
epoch). Anything else (a break or an error mid-epoch, ``load_state_dict``, ``set_epoch``, a
changed config) starts fresh workers from the trainer's copy of the stream. ``close()`` ends
them; so does dropping the loader.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from scforge.data.stream.dataset import ShardStream
from scforge.data.stream.wire import Arena, Ring, StreamBatch, StreamGroup, forget_mapped


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
        timeout: seconds the trainer may wait for one batch before the workers are stopped
            and an error raised (0 = wait forever; the trainer's own time between batches
            never counts). Regardless of it, a worker that dies (killed, out of memory,
            crashed) is reported within ~5 s, and worker exceptions are re-raised here at once.
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
        self._it: Any = None
        self._dl: DataLoader | None = None
        self._ring: Ring | None = None
        self._dl_key: str | None = None
        """What the persistent workers will produce next (epoch, layout, config)."""

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

    def _key(self) -> str:
        s = self.stream
        return repr((s.epoch, s.delivered, s.layout(self.num_workers), s.cfg, s.rank,
                     s.world_size, self.prefetch_factor, self.pin_memory))

    def close(self, *, terminate: bool = False) -> None:
        """Ends the worker processes (the next epoch starts new ones); ``terminate``: at once,
        without waiting for them to finish what they are doing."""
        dl, it = self._dl, self._it
        self._dl = self._dl_key = self._it = None
        if self._ring is not None:
            self._ring.close()
            self._ring = self.stream.ring = None
        if it is not None and terminate:
            _stop_workers(it)
        if dl is not None:
            it = getattr(dl, "_iterator", None)
            dl._iterator = None
            if it is not None:
                shutdown = getattr(it, "_shutdown_workers", None)
                if callable(shutdown):
                    shutdown()
        forget_mapped()

    def __del__(self) -> None:
        try:
            if self._dl is not None:
                self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to clean
            pass

    def _loader(self) -> DataLoader:
        """The persistent DataLoader if its workers produce what comes next, else a new one."""
        key = self._key()
        if self._dl is not None and key == self._dl_key:
            return self._dl
        self.close()
        stream = self.stream
        fields = stream.collator.fields(stream.shards.value_dtype is not None)
        group = self.transfer_batches * sum(
            Arena.size((stream.cfg.batch_size, stream.max_len), dt) for _, dt in fields)
        # A slot per message in flight (prefetch_factor per worker), one the trainer is reading
        # and one it may still hold; beyond that a worker uses its own segments.
        self._ring = stream.ring = Ring(self.num_workers, self.prefetch_factor + 2, group)
        # timeout=0 here: torch then polls every 5 s and notices dead workers (its SIGCHLD
        # handler cannot: forkserver workers are not this process's children); with a
        # positive timeout it would only look when that timeout expires. Stuck-but-alive
        # workers are this class's watchdog's job.
        self._dl = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                              multiprocessing_context=self._context(),
                              prefetch_factor=self.prefetch_factor, pin_memory=self.pin_memory,
                              timeout=0, persistent_workers=True, in_order=True)
        self._dl_key = key
        return self._dl

    def __iter__(self) -> Iterator[StreamBatch]:
        stream = self.stream
        stream.transfer = self.transfer_batches
        if self.num_workers == 0:
            yield from stream.iter_workers(stream.layout()["num_workers"] if stream.delivered
                                           else 1)
            return
        epoch = stream.epoch
        loader = self._loader()  # before _begin: the key holds the position being resumed
        stream._begin(self.num_workers)
        self._dl_key = None  # workers are mid-epoch until it is delivered in full
        it = iter(loader)
        self._it = it
        watch = _Watchdog(it, self.timeout) if self.timeout > 0 else None
        try:
            while True:
                if watch is not None:
                    watch.since = time.monotonic()
                try:
                    item = next(it)
                except StopIteration:
                    break
                finally:
                    if watch is not None:
                        watch.since = None
                for batch in item.batches if isinstance(item, StreamGroup) else [item]:
                    if batch.info is None:
                        raise RuntimeError("a batch arrived without its BatchInfo; was the "
                                           "stream wrapped by another dataset?")
                    stream.record(batch.info)
                    yield batch
        except Exception as e:
            fired = watch is not None and watch.fired
            dead = _dead_workers(it, wait=5.0 if isinstance(e, (EOFError, OSError)) and not fired
                                 else 0.0)
            self.close(terminate=True)
            if fired:  # the watchdog killed them: whatever error followed is its consequence
                raise RuntimeError(
                    f"DataLoader timed out: no batch from the {self.num_workers} loader workers "
                    f"within timeout={self.timeout} s although they were alive (stuck reading "
                    "shards?); they were stopped. Raise StatefulLoader(timeout=...) for very "
                    "slow storage") from e
            if isinstance(e, (EOFError, OSError)) and dead:
                # A batch whose worker died before the main process fetched its shared memory.
                raise RuntimeError(f"DataLoader worker (pid(s) {dead}) exited unexpectedly "
                                   f"while handing over a batch ({type(e).__name__})") from e
            raise
        finally:
            if watch is not None:
                watch.stop()
            del it
            if stream.epoch == epoch + 1 and stream.delivered == 0 and self._dl is not None:
                self._dl_key = self._key()  # delivered in full: the workers are at epoch + 1
            else:
                self.close()  # stopped early (break, error): next time, fresh workers
        if stream.epoch == epoch:
            raise RuntimeError(f"the DataLoader ended epoch {epoch} after {stream.delivered} of "
                               f"{stream.batches_per_epoch} batches; a worker stopped early")

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current epoch's workers (empty when none are running)."""
        it = self._it
        return [w.pid for w in getattr(it, "_workers", []) if w.pid is not None]


class _Watchdog:
    """Kills the workers when the trainer has waited ``timeout`` seconds for one item.

    Only time spent inside ``next()`` counts (``since`` is set around it), never the trainer's
    own steps. Killed workers are then reported by the DataLoader's liveness check within
    ~5 s, and :class:`StatefulLoader` turns that into a timeout error.
    """

    def __init__(self, it: Any, timeout: float) -> None:
        self.since: float | None = None
        self.fired = False
        self._it = it
        self._timeout = timeout
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scforge-loader-watchdog",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(min(1.0, self._timeout / 4)):
            since = self.since
            if since is not None and time.monotonic() - since > self._timeout:
                self.fired = True
                for w in getattr(self._it, "_workers", []):
                    if w.is_alive():
                        w.kill()
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        self._it = None


def _dead_workers(it: Any, *, wait: float) -> list[int]:
    """Pids of the iterator's workers that died, waiting up to ``wait`` s for a death to show
    (a worker killed a moment ago can still look alive)."""
    deadline = time.monotonic() + wait
    while True:
        dead = [w.pid for w in getattr(it, "_workers", []) if not w.is_alive()]
        if dead or time.monotonic() >= deadline:
            return dead
        time.sleep(0.05)


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
