"""What the three system tasks share: the vocabulary check, device moves and a mean metric."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import Tensor, nn

from samkit._checks import as_class_names
from samkit.metrics.mean import MeanMetric

if TYPE_CHECKING:
    from samkit.backbones.sam import SamLike

__all__ = ["MeanMetric", "check_vocabulary", "model_device", "sam_input_size", "to_device"]

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


def sam_input_size(sam: SamLike, image_size: tuple[int, int]) -> tuple[int, int]:
    """`(h_in, w_in)`: where an `image_size` image lands in a SAM backend's `(S, S)` input.

    Read from the backend's own coordinate transform (the image's far corner), so it holds for
    every `SamLike`: SAM's letterbox (long side to `S`, the rest padded) and SAM 2's squash to
    `(S, S)` alike. It equals the `ImageEmbedding.input_size` the backend's `encode` reports.
    """
    h, w = image_size
    corner = torch.tensor([[float(w), float(h)]])
    x, y = sam.transform_coords(corner, (h, w))[0].tolist()
    return round(y), round(x)
