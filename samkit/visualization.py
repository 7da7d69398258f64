"""Small numpy/Pillow helpers to look at images, masks, points and label maps.

All functions return `uint8` numpy arrays `(H, W, 3)` (or take them), so results can be saved
with `save_image`, shown with matplotlib, or tiled with `make_grid`. Tensors may live on any
device; they are moved to the CPU here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

__all__ = [
    "PALETTE",
    "colorize_labels",
    "draw_points",
    "make_grid",
    "overlay_masks",
    "save_image",
    "to_uint8",
]

PALETTE: np.ndarray = np.zeros((0, 3), dtype=np.uint8)
"""`(256, 3)` uint8 colours used when none are given (distinct, deterministic)."""


def to_uint8(image: Tensor | np.ndarray) -> np.ndarray:
    """Convert a `(3, H, W)` float image in `[0, 1]` (or an `(H, W, 3)` array) to uint8 HWC."""
    raise NotImplementedError


def overlay_masks(
    image: Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    *,
    alpha: float = 0.5,
    colors: Sequence[tuple[int, int, int]] | np.ndarray | None = None,
) -> np.ndarray:
    """Blend coloured masks over an image."""
    raise NotImplementedError


def draw_points(
    image: Tensor | np.ndarray,
    points: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | None = None,
    *,
    radius: int = 2,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Draw `(N, 2)` `(x, y)` points as filled discs."""
    raise NotImplementedError


def colorize_labels(
    labels: Tensor | np.ndarray, *, palette: np.ndarray | None = None
) -> np.ndarray:
    """Map an `(H, W)` integer label map to colours."""
    raise NotImplementedError


def make_grid(images: Sequence[np.ndarray | Tensor], ncols: int = 4, *, pad: int = 2) -> np.ndarray:
    """Tile images into a grid."""
    raise NotImplementedError


def save_image(array: np.ndarray | Tensor, path: str | Path) -> None:
    """Save an image with Pillow."""
    raise NotImplementedError
