"""Merging streaming-metric states across the ranks of `torch.distributed`.

Every streaming metric's `sync()` uses these helpers: summed counters go through one
`all_reduce`, per-image records (MaskAP) through `all_gather_object`. Without an initialised
default process group, or with one process, nothing is communicated. `sync` is collective and
one-shot: every rank calls it once after its last `update`; after it the metric holds the
merged state of all ranks, so a second `sync` (which would count everything again) or another
`update` raises until `reset`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_objects", "all_reduce_sum", "check_not_synced", "world_size"]


def world_size() -> int:
    """Processes in the default group; 1 when `torch.distributed` is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: Tensor) -> Tensor:
    """The element-wise sum of `t` over all ranks, on `t`'s device and dtype (a no-op alone)."""
    if world_size() == 1:
        return t
    buf = t.detach().to(_comm_device()).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order; `[obj]` alone."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def check_not_synced(synced: bool, metric: str, method: str) -> None:
    """Raise if `metric` was already synced (`method` is `"sync"` or `"update"`)."""
    if not synced:
        return
    what = (
        "sync() was already called: the states of all ranks are merged, and merging again "
        "would count them twice"
        if method == "sync"
        else "called after sync(): the metric already holds the merged states of all ranks"
    )
    raise RuntimeError(f"{metric}.{method}: {what}; call reset() to start a new evaluation")
