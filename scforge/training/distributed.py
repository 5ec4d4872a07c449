"""Process-group setup for DeepSpeed: launcher, ``torchrun``, or one bare process; GPU or CPU.

Facts this module encodes (measured on the project's CPU machines, DeepSpeed 0.19):

- Without CUDA, ``DS_ACCELERATOR=cpu`` must be set before ``deepspeed`` is imported.
- Every ``init_distributed`` JIT-builds a shared-memory op with g++ (35-50 s) that only inference
  all-reduce uses; :func:`init_process_group` replaces the builder with a no-op first.
- One process without a launcher needs ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_*`` set,
  else DeepSpeed looks for MPI; :func:`ensure_single_process_env` sets them when absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from scforge.errors import one_line

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")


@dataclass(frozen=True)
class World:
    """Where this process sits: global rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port free right now on this host (for single-process rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_single_process_env() -> bool:
    """Sets the rendezvous variables of a one-process world unless a launcher set them.

    Returns:
        True when this call set them (no launcher).
    """
    if any(v in os.environ for v in LAUNCHER_VARS):
        return False
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    return True


def ensure_accelerator_env() -> None:
    """Points DeepSpeed at the CPU accelerator on machines without CUDA (before import)."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        if "deepspeed" in sys.modules:
            return  # already imported: its accelerator is fixed; leave the choice to the caller
        os.environ["DS_ACCELERATOR"] = "cpu"


def skip_shm_build() -> None:
    """Replaces DeepSpeed's shared-memory comm-op JIT build (inference only) with a no-op.

    ``import deepspeed.comm.torch as m`` binds the *torch* module (a name clash inside
    deepspeed.comm), so the real module is reached through ``sys.modules``.
    """
    import deepspeed.comm.torch  # noqa: F401  (registers the module)

    module = sys.modules["deepspeed.comm.torch"]
    if hasattr(module, "build_shm_op"):
        module.build_shm_op = lambda *args, **kwargs: None


def init_process_group() -> World:
    """Initialises ``torch.distributed`` through DeepSpeed (idempotent) and picks the device."""
    ensure_accelerator_env()
    ensure_single_process_env()
    import deepspeed

    skip_shm_build()
    cuda = torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo",
                                   verbose=False)
    rank = torch.distributed.get_rank()
    world_size = torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier() -> None:
    """All ranks meet here (a no-op outside a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks of a short list of floats (one collective)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def broadcast_json(obj: object, device: torch.device, *, src: int = 0,
                   group: object | None = None) -> object:
    """Rank ``src``'s JSON-able ``obj`` on every rank, sent as UTF-8 bytes (no pickle)."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return obj
    payload = json.dumps(obj).encode() if torch.distributed.get_rank() == src else b""
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    torch.distributed.broadcast(size, src=src, group=group)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if payload:
        buf.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    torch.distributed.broadcast(buf, src=src, group=group)
    return json.loads(bytes(buf.cpu().tolist()).decode())


class PeerError(ValueError):
    """Another rank stopped with an error; its one-line message is this error's message."""


_CPU_GROUP: dict[str, object] = {}


def _cpu_group() -> object | None:
    """A gloo group for small host-side agreements (None: the default group is gloo already).

    Made on first use, which every rank reaches at the same point (see :func:`agree`), so the
    collective ``new_group`` call lines up.
    """
    if torch.distributed.get_backend() == "gloo":
        return None
    if "gloo" not in _CPU_GROUP:
        _CPU_GROUP["gloo"] = torch.distributed.new_group(backend="gloo")
    return _CPU_GROUP["gloo"]


def agree(error: BaseException | None) -> None:
    """Collective: if any rank passes an error, every rank raises.

    The failing rank re-raises its own ``error`` (with its traceback); the others raise
    :class:`PeerError` carrying the lowest failing rank's one-line message. So a corrupt shard
    that only one rank reads ends the run on every rank with the same message, instead of leaving
    the others blocked in the next gradient collective. Costs one small gloo all-reduce.
    """
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        if error is not None:
            raise error
        return
    rank, ws = torch.distributed.get_rank(), torch.distributed.get_world_size()
    group = _cpu_group()
    flag = torch.tensor([rank if error is not None else ws], dtype=torch.int64)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN, group=group)
    src = int(flag.item())
    if src == ws:
        return
    msg = broadcast_json(one_line(error) if error is not None and rank == src else None,
                         torch.device("cpu"), src=src, group=group)
    if error is not None:
        raise error
    raise PeerError(f"rank {src} stopped: {msg}")


@contextlib.contextmanager
def agreed() -> Iterator[None]:
    """Runs a block (often rank-0-only work) and then :func:`agree` s on its outcome.

    Every rank must enter the block; an exception inside it reaches every rank (see
    :func:`agree`), so no rank is left waiting at the next collective for one that died.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001  (re-raised by agree on this rank)
        agree(exc)
        raise
    agree(None)
