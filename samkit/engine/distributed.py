"""The process group the engine runs in: `torchrun` launches, one process otherwise.

`torchrun --nproc_per_node N script.py` starts N copies of a script with `RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` set; `init_distributed` turns those into the
default process group (NCCL when CUDA is present, gloo on the CPU). Without them it does nothing
and every helper answers for a single process, so the same script runs both ways.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["default_device", "init_distributed", "is_main_process", "rank", "world_size"]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group `torchrun` describes in the environment (no-op without it).

    Args:
        backend: None picks NCCL when CUDA is available (each process on `cuda:LOCAL_RANK`)
            and gloo otherwise; `"gloo"` forces CPU-style communication.

    Returns:
        True when a process group is initialised (now or before), False for a single process.
    """
    if _active():
        return True
    if not all(v in os.environ for v in _TORCHRUN_VARS) or not dist.is_available():
        return False
    if int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """Number of processes in the default process group (1 without one)."""
    return dist.get_world_size() if _active() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0, the one that writes files, logs and progress bars."""
    return rank() == 0


def default_device() -> torch.device:
    """`cuda:LOCAL_RANK` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def all_gather_object(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (`[obj]` for a single process)."""
    if not _active() or world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (`obj` itself for a single process)."""
    if not _active() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
