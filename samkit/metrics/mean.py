"""A streaming mean (and maximum) of per-sample values that reduces across ranks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from samkit.metrics._sync import check_not_synced

__all__ = ["MeanMetric"]


class MeanMetric:
    """Streaming mean and maximum of per-sample values (e.g. SAM-MI's points per image).

    Examples:
        >>> m = MeanMetric()
        >>> m.update(torch.tensor([1.0, 3.0])); m.update(torch.tensor([5.0]))
        >>> m.compute()
        {'mean': 3.0, 'max': 5.0, 'count': 3.0}
    """

    def __init__(self) -> None:
        """Create an empty metric."""
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.total = 0.0
        self.count = 0
        self.maximum = float("-inf")
        self._synced = False

    def update(self, values: Tensor) -> None:
        """Add per-sample values `(B,)`."""
        check_not_synced(self._synced, "MeanMetric", "update")
        v = values.detach().double().flatten().cpu()
        if v.numel():
            self.total += float(v.sum())
            self.count += int(v.numel())
            self.maximum = max(self.maximum, float(v.max()))

    def sync(self) -> None:
        """Merge the sums, counts and maxima of all ranks (no-op when not distributed)."""
        check_not_synced(self._synced, "MeanMetric", "sync")
        self._synced = True
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
        sums = torch.tensor([self.total, float(self.count)], dtype=torch.float64, device=device)
        peak = torch.tensor([self.maximum], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        self.total, self.count = float(sums[0]), int(sums[1])
        self.maximum = float(peak[0])

    def compute(self) -> dict[str, Any]:
        """`mean`, `max` and `count` (`NaN` mean and max before any value)."""
        if self.count == 0:
            return {"mean": float("nan"), "max": float("nan"), "count": 0.0}
        return {"mean": self.total / self.count, "max": self.maximum, "count": float(self.count)}
