"""Vectorised numpy rasterisation of synthetic scenes (private helpers of `synthetic.py`).

Everything here takes an explicit `numpy.random.Generator`; nothing touches global RNG state.
"""

# axis legend
# c - colour channels (3)
# h w - image pixels
# v - polygon vertices

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_PI = np.pi


@dataclass
class ShapeSpec:
    """One shape to paint: kind id, colour id, centre, radius and rotation (radians)."""

    kind: int
    color: int
    cx: float
    cy: float
    radius: float
    angle: float


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates `(xs, ys)`, each `(H, W)` float64."""
    ys, xs = np.meshgrid(
        np.arange(height, dtype=np.float64) + 0.5,
        np.arange(width, dtype=np.float64) + 0.5,
        indexing="ij",
    )
    return xs, ys


def stuff_layout(
    rng: np.random.Generator, height: int, width: int, num_regions: int, *, min_fraction: float
) -> np.ndarray:
    """Split the image into `num_regions` Voronoi cells (convex, hence connected).

    Sites are redrawn (up to 20 times) until every cell covers at least `min_fraction` of the
    image. Returns an `(H, W)` int64 map with values in `[0, num_regions)`.
    """
    xs, ys = pixel_grid(height, width)
    labels = np.zeros((height, width), dtype=np.int64)
    if num_regions <= 1:
        return labels
    for _ in range(20):
        sites = rng.uniform(0.0, 1.0, size=(num_regions, 2)) * np.array([width, height])
        d2 = (xs[None] - sites[:, 0, None, None]) ** 2 + (ys[None] - sites[:, 1, None, None]) ** 2
        labels = np.argmin(d2, axis=0)
        areas = np.bincount(labels.ravel(), minlength=num_regions)
        if areas.min() >= min_fraction * height * width:
            break
    return labels


def texture(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """A zero-mean texture pattern `(H, W)` with values in about `[-1, 1]`."""
    xs, ys = pixel_grid(height, width)
    short = min(height, width)
    if kind == "stripes":
        theta = rng.uniform(0.0, _PI)
        period = max(3.0, rng.uniform(0.06, 0.12) * short)
        phase = rng.uniform(0.0, 2 * _PI)
        return np.sin(2 * _PI * (xs * np.cos(theta) + ys * np.sin(theta)) / period + phase)
    if kind == "checker":
        cell = max(2.0, rng.uniform(0.08, 0.16) * short)
        ox, oy = rng.uniform(0.0, cell, size=2)
        parity = (np.floor((xs + ox) / cell) + np.floor((ys + oy) / cell)) % 2
        return parity * 2.0 - 1.0
    if kind == "gradient":
        theta = rng.uniform(0.0, 2 * _PI)
        proj = xs * np.cos(theta) + ys * np.sin(theta)
        span = max(float(proj.max() - proj.min()), 1e-6)
        return (proj - proj.min()) / span * 2.0 - 1.0
    if kind == "noise":
        grid = rng.standard_normal((1, 1, max(2, height // 8), max(2, width // 8)))
        smooth = F.interpolate(
            torch.from_numpy(grid), size=(height, width), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        fine = rng.standard_normal((height, width))
        out = smooth + 0.35 * fine
        return out / max(float(np.abs(out).max()), 1e-6)
    raise ValueError(f"unknown texture {kind!r}")


def _polygon(spec: ShapeSpec, kind_name: str) -> np.ndarray:
    """Vertices `(V, 2)` of a polygonal shape (square, triangle, star)."""
    r = spec.radius
    if kind_name == "square":
        angles = spec.angle + _PI / 4 + np.arange(4) * _PI / 2
        radii = np.full(4, 0.8 * r * np.sqrt(2.0))
    elif kind_name == "triangle":
        angles = spec.angle - _PI / 2 + np.arange(3) * 2 * _PI / 3
        radii = np.full(3, r)
    elif kind_name == "star":
        angles = spec.angle - _PI / 2 + np.arange(10) * _PI / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    else:
        raise ValueError(f"unknown polygon kind {kind_name!r}")
    return np.stack([spec.cx + radii * np.cos(angles), spec.cy + radii * np.sin(angles)], axis=1)


def _inside_polygon(xs: np.ndarray, ys: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd ray-casting test of every pixel centre against a polygon."""
    inside = np.zeros(xs.shape, dtype=bool)
    x1, y1 = verts[:, 0], verts[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    for ax, ay, bx, by in zip(x1, y1, x2, y2, strict=True):
        if ay == by:
            continue
        crosses = (ay > ys) != (by > ys)
        x_at = (bx - ax) * (ys - ay) / (by - ay) + ax
        inside ^= crosses & (xs < x_at)
    return inside


def shape_mask(spec: ShapeSpec, kind_name: str, height: int, width: int) -> np.ndarray:
    """Full (unoccluded) `(H, W)` bool mask of one shape."""
    out = np.zeros((height, width), dtype=bool)
    r = spec.radius
    y0, y1 = max(0, int(spec.cy - r) - 1), min(height, int(spec.cy + r) + 2)
    x0, x1 = max(0, int(spec.cx - r) - 1), min(width, int(spec.cx + r) + 2)
    if y0 >= y1 or x0 >= x1:
        return out
    xs, ys = pixel_grid(height, width)
    xs, ys = xs[y0:y1, x0:x1], ys[y0:y1, x0:x1]
    if kind_name == "circle":
        inside = (xs - spec.cx) ** 2 + (ys - spec.cy) ** 2 <= r**2
    else:
        inside = _inside_polygon(xs, ys, _polygon(spec, kind_name))
    out[y0:y1, x0:x1] = inside
    return out


def visible_layers(full_masks: list[np.ndarray], min_visible_fraction: float) -> list[int]:
    """Indices of the shapes kept after occlusion, back to front.

    Shapes are painted in list order (later on top). While some kept shape shows less than
    `min_visible_fraction` of its full area, the rearmost such shape is removed (which can only
    uncover the shapes behind it), and visibility is recomputed.
    """
    keep = [j for j, m in enumerate(full_masks) if m.any()]
    while keep:
        top = top_index(full_masks, keep)
        bad = [
            j
            for j in keep
            if (top == j).sum() < min_visible_fraction * full_masks[j].sum() or not (top == j).any()
        ]
        if not bad:
            break
        keep.remove(bad[0])
    return keep


def top_index(full_masks: list[np.ndarray], keep: list[int]) -> np.ndarray:
    """`(H, W)` int64 map of the topmost kept shape index at every pixel (-1 where none)."""
    shape = full_masks[0].shape if full_masks else (0, 0)
    top = np.full(shape, -1, dtype=np.int64)
    for j in keep:
        top[full_masks[j]] = j
    return top


def paint_flat(
    rng: np.random.Generator,
    canvas: np.ndarray,
    mask: np.ndarray,
    color: tuple[float, float, float],
    *,
    noise: float,
) -> None:
    """Paint `color` (plus small per-pixel noise) into `canvas` `(3, H, W)` where `mask`."""
    n = int(mask.sum())
    if n == 0:
        return
    jitter = rng.standard_normal(n) * noise
    for c in range(3):
        canvas[c][mask] = color[c] + jitter
