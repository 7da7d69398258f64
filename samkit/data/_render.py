"""Vectorised numpy rasterisation of synthetic scenes (private helpers of `synthetic.py`).

Everything here takes an explicit `numpy.random.Generator`; nothing touches global RNG state.
"""

# axis legend
# c - colour channels (3)
# h w - image pixels
# v - polygon vertices

from __future__ import annotations

from collections.abc import Sequence
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


def paint_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    stuff_styles: Sequence[tuple[tuple[float, float, float], str, float]],
    thing_names: Sequence[str],
    palette: Sequence[tuple[float, float, float]],
    num_stuff: tuple[int, int],
    num_objects: tuple[int, int],
    object_scale: tuple[float, float],
    min_visible_fraction: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], list[int]]:
    """Paint stuff regions, then shapes back to front, dropping heavily occluded shapes.

    Semantic ids are `kind` for things and `len(thing_names) + stuff index` for stuff.

    Returns:
        `image (3, H, W)` float64 (unclipped), `semantic (H, W)` int64, visible instance masks
        `(I, H, W)` bool, and the kind and colour index of every instance.
    """
    num_things = len(thing_names)
    short = min(height, width)

    # Background: Voronoi regions of distinct stuff classes, each with its texture.
    n_stuff = int(rng.integers(num_stuff[0], num_stuff[1] + 1))
    region = stuff_layout(rng, height, width, n_stuff, min_fraction=0.5 / (n_stuff + 1))
    stuff_ids = rng.choice(len(stuff_styles), size=n_stuff, replace=False)
    image = np.zeros((3, height, width), dtype=np.float64)
    semantic = np.zeros((height, width), dtype=np.int64)
    for r, sid in enumerate(stuff_ids):
        color, kind, amplitude = stuff_styles[int(sid)]
        base = np.asarray(color) + rng.uniform(-0.04, 0.04, size=3)
        pattern = amplitude * texture(rng, kind, height, width)
        inside = region == r
        image[:, inside] = base[:, None] + pattern[inside][None]
        semantic[inside] = num_things + int(sid)

    # Things: random shapes painted back to front; heavily occluded ones are dropped.
    n_obj = int(rng.integers(num_objects[0], num_objects[1] + 1))
    specs: list[ShapeSpec] = []
    for _ in range(n_obj):
        radius = float(rng.uniform(*object_scale)) * short
        specs.append(
            ShapeSpec(
                kind=int(rng.integers(num_things)),
                color=int(rng.integers(len(palette))),
                cx=float(rng.uniform(radius, width - radius)),
                cy=float(rng.uniform(radius, height - radius)),
                radius=radius,
                angle=float(rng.uniform(-0.26, 0.26)),
            )
        )
    full = [shape_mask(s, thing_names[s.kind], height, width) for s in specs]
    keep = visible_layers(full, min_visible_fraction)
    top = top_index(full, keep) if specs else np.full((height, width), -1, dtype=np.int64)
    inst = np.stack([top == j for j in keep]) if keep else np.zeros((0, height, width), bool)
    for j, m in zip(keep, inst, strict=True):
        paint_flat(rng, image, m, palette[specs[j].color], noise=0.02)
        semantic[m] = specs[j].kind
    return image, semantic, inst, [specs[j].kind for j in keep], [specs[j].color for j in keep]


def panoptic_segments(
    inst: np.ndarray, classes: list[int], semantic: np.ndarray, num_things: int
) -> tuple[np.ndarray, list[tuple[int, int, bool, int, int]]]:
    """Panoptic ids: instance `i` gets `i + 1`, then one id per stuff class present.

    Returns:
        `(H, W)` int64 panoptic map and `(id, category_id, is_thing, area, instance)` tuples.
    """
    panoptic = np.zeros(semantic.shape, dtype=np.int64)
    segments: list[tuple[int, int, bool, int, int]] = []
    for i, (m, k) in enumerate(zip(inst, classes, strict=True)):
        panoptic[m] = i + 1
        segments.append((i + 1, int(k), True, int(m.sum()), i))
    stuff_present = np.unique(semantic[semantic >= num_things])
    for cid in stuff_present.tolist():
        m = semantic == cid
        seg_id = len(segments) + 1
        panoptic[m] = seg_id
        segments.append((seg_id, int(cid), False, int(m.sum()), -1))
    return panoptic, segments
