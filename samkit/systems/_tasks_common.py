"""What the three system tasks share: the vocabulary check, device moves and a mean metric."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from samkit._checks import as_class_names

__all__ = ["MeanMetric", "check_vocabulary", "model_device", "to_device"]

_B = TypeVar("_B")


def check_vocabulary(
    class_names: str | Sequence[str], num_things: int, *, system: str
) -> tuple[tuple[str, ...], int]:
    """A task's class vocabulary: non-empty, distinct names, things first.

    Args:
        class_names: The data set's class names in contiguous order (things first).
        num_things: How many of them are things (`0` for a stuff-only or semantic vocabulary).
        system: The system's name, for the messages.

    Returns:
        `(class_names, num_things)`.

    Raises:
        TypeError: If the names are not strings or `num_things` is not an int.
        ValueError: If no name is given, a name repeats, or `num_things` is outside
            `[0, len(class_names)]`.
    """
    names = as_class_names(class_names, name="class_names")
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(
            f"class_names: {system} needs distinct class names (one text embedding per class), "
            f"got {repeated} more than once"
        )
    if isinstance(num_things, bool) or not isinstance(num_things, int):
        raise TypeError(f"num_things: expected an int, got {type(num_things).__name__}")
    if not 0 <= num_things <= len(names):
        raise ValueError(
            f"num_things: expected 0..{len(names)} (the things come first in class_names), "
            f"got {num_things}"
        )
    return tuple(names), num_things


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty module)."""
    for t in model.parameters():
        return t.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def to_device(batch: _B, device: torch.device) -> _B:
    """`batch.to(device)` unless its images are already there."""
    images = getattr(batch, "images", None)
    if isinstance(images, Tensor) and images.device == device:
        return batch
    return batch.to(device)  # type: ignore[attr-defined,no-any-return]


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

    def update(self, values: Tensor) -> None:
        """Add per-sample values `(B,)`."""
        v = values.detach().double().flatten().cpu()
        if v.numel():
            self.total += float(v.sum())
            self.count += int(v.numel())
            self.maximum = max(self.maximum, float(v.max()))

    def sync(self) -> None:
        """Merge the sums, counts and maxima of all ranks (no-op when not distributed)."""
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
