"""Varied scene families for pretraining promptable segmenters and CLIP, plus a held-out family.

samkit's own scenes (`samkit.data.synthetic`) draw four shapes in six colours on five stuff
textures: a model pretrained on them learns that generator, not segmentation. This module adds
families that differ in shapes, palettes, textures and layouts, so pretraining can be varied and
generalisation can be measured on a family never seen in training:

* `"synthetic"`: `generate_scene` (samkit's scenes; what the systems are trained on).
* `"polygons"`: regular polygons (3-8 sides), ellipses, stars and smooth random blobs at any
  rotation, in random colours (some textured), from tiny to large, up to a dozen per scene, partly
  outside the frame and occluding one another, on 1-5 Voronoi regions of random colours and
  textures. A pretraining family.
* `"curves"`: rings (with holes), crosses, crescents and hearts in pastel colours with dot, plaid
  and wave textures, on dark wavy horizontal bands. No shape, texture, palette or layout of this
  family occurs in the others: it is the held-out family (`HELDOUT_FAMILY`), never pretrained on.

Every scene is deterministic for `(family, seed)`, uses only a local generator, and comes with
the visible mask of every segment: things (objects) first, then stuff regions (background cells
or bands), as SAM's data engine annotates "everything".

`generate_object_crop` draws one named object (`"<colour> <shape>"` from samkit's vocabulary) or
one stuff texture on a small canvas: the image-caption pairs of CLIP pretraining.
"""

# axis legend
# s - segments of one scene (things first, then stuff), `S`
# h w - image pixels (`H`, `W`)

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from samkit.data import _render
from samkit.data.synthetic import (
    COLOR_NAMES,
    COLORS,
    STUFF_CLASSES,
    STUFF_STYLES,
    THING_CLASSES,
    generate_scene,
)

__all__ = [
    "FamilyScene",
    "HELDOUT_FAMILY",
    "ObjectCrop",
    "PRETRAIN_FAMILIES",
    "SCENE_FAMILIES",
    "generate_family_scene",
    "generate_object_crop",
]

SCENE_FAMILIES: tuple[str, ...] = ("synthetic", "polygons", "curves")
"""Every scene family, by name."""

PRETRAIN_FAMILIES: tuple[str, ...] = ("synthetic", "polygons")
"""The families pretraining draws from."""

HELDOUT_FAMILY: str = "curves"
"""The family kept out of pretraining entirely, to measure generalisation."""

_TRAIN_TEXTURES = ("stripes", "noise", "checker", "gradient")
_HELDOUT_TEXTURES = ("dots", "plaid", "waves")


@dataclass
class FamilyScene:
    """One scene of a family, with the visible mask of every segment.

    Attributes:
        family: The family name.
        seed: The seed it was generated from.
        image: RGB image `(3, H, W)`, float32 in `[0, 1]`.
        masks: Visible segment masks `(S, H, W)`, bool, disjoint, covering the image; things
            first, then stuff regions.
        is_thing: `(S,)` bool, True for objects.
    """

    family: str
    seed: int
    image: Tensor
    masks: Tensor
    is_thing: Tensor


@dataclass
class ObjectCrop:
    """One CLIP pretraining pair: a canvas showing one named thing or stuff, and its name.

    Attributes:
        image: RGB image `(3, S, S)`, float32 in `[0, 1]`.
        name: `"<colour> <shape>"` for a thing (e.g. `"red circle"`), the stuff class for stuff.
        color: Colour name of a thing, `None` for stuff.
        shape: Thing class or stuff class.
        mask: `(S, S)` bool, the pixels of the named object (the whole canvas for stuff).
    """

    image: Tensor
    name: str
    color: str | None
    shape: str
    mask: Tensor


# ------------------------------------------------------------------ shapes
def _local(
    xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in the object's frame, in units of its radius: `(u, v)`."""
    dx, dy = (xs - cx) / r, (ys - cy) / r
    c, s = np.cos(angle), np.sin(angle)
    return c * dx + s * dy, -s * dx + c * dy


def _shape(rng: np.random.Generator, kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bool mask of one shape kind in the object frame (radius 1)."""
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    if kind == "polygon":
        n = int(rng.integers(3, 9))
        k = np.arange(n)[:, None, None] * 2 * np.pi / n
        return np.all(u[None] * np.cos(k) + v[None] * np.sin(k) <= np.cos(np.pi / n), axis=0)
    if kind == "ellipse":
        b = rng.uniform(0.4, 1.0)
        return u**2 + (v / b) ** 2 <= 1.0
    if kind == "star":
        p, q = int(rng.integers(4, 8)), rng.uniform(0.35, 0.65)
        tri = np.abs(((phi * p / np.pi) % 2.0) - 1.0)
        return rho <= q + (1.0 - q) * tri
    if kind == "blob":
        edge = np.full_like(rho, 0.8)
        for order in range(2, 5):
            edge += rng.uniform(0.0, 0.2) * np.cos(order * phi + rng.uniform(0, 2 * np.pi))
        return rho <= edge
    if kind == "ring":
        return (rho <= 1.0) & (rho >= rng.uniform(0.45, 0.7))
    if kind == "cross":
        w = rng.uniform(0.22, 0.38)
        return ((np.abs(u) <= w) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= w) & (np.abs(u) <= 1.0))
    if kind == "crescent":
        d, r2 = rng.uniform(0.35, 0.6), rng.uniform(0.75, 0.95)
        return (rho <= 1.0) & ((u - d) ** 2 + v**2 > r2**2)
    if kind == "heart":
        x, y = 1.25 * u, -1.25 * v + 0.25
        return (x**2 + y**2 - 1.0) ** 3 - x**2 * y**3 <= 0.0
    raise ValueError(f"unknown shape kind {kind!r}")


# ------------------------------------------------------------------ textures and colours
def _texture(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """A texture pattern `(H, W)` in about `[-1, 1]`; held-out kinds are drawn here."""
    if kind in _TRAIN_TEXTURES:
        return _render.texture(rng, kind, height, width)
    xs, ys = _render.pixel_grid(height, width)
    short = min(height, width)
    if kind == "dots":
        cell = rng.uniform(0.06, 0.12) * short
        ox, oy = rng.uniform(0.0, cell, size=2)
        fx, fy = ((xs + ox) % cell) / cell - 0.5, ((ys + oy) % cell) / cell - 0.5
        return np.where(fx**2 + fy**2 <= 0.09, 1.0, -1.0)
    if kind == "plaid":
        period = rng.uniform(0.1, 0.2) * short
        return 0.5 * (
            np.sign(np.sin(2 * np.pi * xs / period)) + np.sign(np.cos(2 * np.pi * ys / period))
        )
    if kind == "waves":
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        period = rng.uniform(0.08, 0.15) * short
        return np.sin(2 * np.pi * np.hypot(xs - cx, ys - cy) / period)
    raise ValueError(f"unknown texture {kind!r}")


def _hsv(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(*s), rng.uniform(*v))
    return np.asarray(rgb, dtype=np.float64)


@dataclass(frozen=True)
class _Style:
    """How one family draws: shape kinds, textures, palettes, counts and layout."""

    shapes: tuple[str, ...]
    textures: tuple[str, ...]
    object_sat: tuple[float, float]
    object_val: tuple[float, float]
    background_sat: tuple[float, float]
    background_val: tuple[float, float]
    num_objects: tuple[int, int]
    num_regions: tuple[int, int]
    layout: str  # "voronoi" or "bands"
    textured_objects: float  # probability that an object is textured


_STYLES = {
    "polygons": _Style(
        shapes=("polygon", "ellipse", "star", "blob"),
        textures=_TRAIN_TEXTURES,
        object_sat=(0.3, 1.0),
        object_val=(0.3, 1.0),
        background_sat=(0.0, 0.7),
        background_val=(0.15, 0.95),
        num_objects=(1, 12),
        num_regions=(1, 5),
        layout="voronoi",
        textured_objects=0.4,
    ),
    "curves": _Style(
        shapes=("ring", "cross", "crescent", "heart"),
        textures=_HELDOUT_TEXTURES,
        object_sat=(0.12, 0.3),
        object_val=(0.85, 1.0),
        background_sat=(0.2, 0.6),
        background_val=(0.05, 0.35),
        num_objects=(1, 8),
        num_regions=(1, 4),
        layout="bands",
        textured_objects=0.5,
    ),
}


def _bands(rng: np.random.Generator, height: int, width: int, n: int) -> np.ndarray:
    """`n` horizontal bands with wavy borders: `(H, W)` int64 labels in `[0, n)`."""
    xs, ys = _render.pixel_grid(height, width)
    labels = np.zeros((height, width), dtype=np.int64)
    cuts = np.sort(rng.uniform(0.15, 0.85, size=n - 1)) * height
    for cut in cuts:
        amp, period = rng.uniform(0.0, 0.08) * height, rng.uniform(0.4, 1.2) * width
        border = cut + amp * np.sin(2 * np.pi * xs / period + rng.uniform(0, 2 * np.pi))
        labels += ys > border
    return labels


def _paint(
    rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, color: np.ndarray, style: _Style
) -> None:
    """Paint `color` into `canvas` `(3, H, W)` where `mask`, textured with some probability."""
    h, w = mask.shape
    shade = np.zeros((h, w))
    if rng.uniform() < style.textured_objects:
        kind = style.textures[int(rng.integers(len(style.textures)))]
        shade = rng.uniform(0.05, 0.2) * _texture(rng, kind, h, w)
    shade = shade + 0.02 * rng.standard_normal((h, w))
    canvas[:, mask] = color[:, None] + shade[mask][None]


def _styled_scene(
    rng: np.random.Generator, style: _Style, height: int, width: int
) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Paint one scene of a `_Style`: image, visible masks (things first) and the thing count."""
    n_regions = int(rng.integers(style.num_regions[0], style.num_regions[1] + 1))
    if style.layout == "bands":
        region = _bands(rng, height, width, n_regions)
    else:
        region = _render.stuff_layout(
            rng, height, width, n_regions, min_fraction=0.3 / (n_regions + 1)
        )
    image = np.zeros((3, height, width))
    stuff: list[np.ndarray] = []
    for r in range(n_regions):
        inside = region == r
        if not inside.any():
            continue
        color = _hsv(rng, style.background_sat, style.background_val)
        kind = style.textures[int(rng.integers(len(style.textures)))]
        pattern = rng.uniform(0.03, 0.2) * _texture(rng, kind, height, width)
        image[:, inside] = color[:, None] + pattern[inside][None]
        stuff.append(inside)

    xs, ys = _render.pixel_grid(height, width)
    short = min(height, width)
    n_obj = int(rng.integers(style.num_objects[0], style.num_objects[1] + 1))
    full: list[np.ndarray] = []
    for _ in range(n_obj):
        radius = float(np.exp(rng.uniform(np.log(0.04), np.log(0.32)))) * short
        cx, cy = rng.uniform(0.0, width), rng.uniform(0.0, height)
        u, v = _local(xs, ys, cx, cy, radius, rng.uniform(0.0, 2 * np.pi))
        full.append(_shape(rng, style.shapes[int(rng.integers(len(style.shapes)))], u, v))
    keep = [j for j in _render.visible_layers(full, 0.3) if full[j].sum() >= 12]
    top = _render.top_index(full, keep) if full else np.full((height, width), -1)
    things = []
    for j in keep:
        visible = top == j
        if visible.sum() < 12:
            continue
        _paint(rng, image, visible, _hsv(rng, style.object_sat, style.object_val), style)
        things.append(visible)
    occupied = np.any(things, axis=0) if things else np.zeros((height, width), bool)
    stuff = [m & ~occupied for m in stuff]
    stuff = [m for m in stuff if m.sum() >= 12]
    return image, things + stuff, len(things)


def generate_family_scene(family: str, seed: int, *, size: int = 128) -> FamilyScene:
    """Generate one scene of `family`, deterministically from `seed`.

    Args:
        family: One of `SCENE_FAMILIES`.
        seed: Non-negative seed.
        size: Side `S` of the square image, at least 32.

    Returns:
        The `FamilyScene`. Segments smaller than 12 pixels are dropped (they are painted but not
        annotated, like tiny objects in real data); for `"synthetic"` the segments are the
        scene's panoptic segments.

    Raises:
        ValueError: For an unknown family, a negative seed or a size below 32.

    Examples:
        >>> scene = generate_family_scene("polygons", 0, size=64)
        >>> scene.image.shape, scene.masks.shape[1:], bool(scene.masks.any(0).all())
        (torch.Size([3, 64, 64]), torch.Size([64, 64]), True)
    """
    if family not in SCENE_FAMILIES:
        raise ValueError(f"family: expected one of {SCENE_FAMILIES}, got {family!r}")
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed}")
    if size < 32:
        raise ValueError(f"size: expected at least 32, got {size}")
    if family == "synthetic":
        scene = generate_scene(seed, size=size, num_expressions=0)
        ids = [s.id for s in scene.segments]
        things = torch.tensor([s.is_thing for s in scene.segments], dtype=torch.bool)
        if not ids:
            return FamilyScene(
                family, seed, scene.image, torch.zeros(0, size, size, dtype=torch.bool), things
            )
        masks = torch.stack([scene.panoptic == i for i in ids])
        return FamilyScene(family, seed, scene.image, masks, things)
    rng = np.random.default_rng([seed, SCENE_FAMILIES.index(family)])
    image, segments, n_things = _styled_scene(rng, _STYLES[family], size, size)
    stacked = np.stack(segments) if segments else np.zeros((0, size, size), bool)
    return FamilyScene(
        family=family,
        seed=seed,
        image=torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)),
        masks=torch.from_numpy(stacked),
        is_thing=torch.arange(len(segments)) < n_things,
    )


# ------------------------------------------------------------------ CLIP pairs
def generate_object_crop(
    seed: int,
    *,
    size: int = 64,
    allowed: frozenset[tuple[str, str]] | None = None,
    stuff_fraction: float = 0.25,
) -> ObjectCrop:
    """Draw one named object or stuff texture on a `size x size` canvas (a CLIP training pair).

    A thing is one of samkit's shapes (`THING_CLASSES`) in one of its colours (`COLORS`, with a
    little jitter), at a random scale (a third to nine tenths of the canvas), position and small
    rotation, over a random stuff texture, sometimes with a partial second object at the border
    as clutter. A stuff canvas shows one `STUFF_CLASSES` texture.

    Args:
        seed: Non-negative seed.
        size: Canvas side, at least 16.
        allowed: The `(colour, shape)` combinations to draw things from; `None` allows all.
        stuff_fraction: Probability of a stuff canvas.

    Returns:
        The `ObjectCrop`.

    Raises:
        ValueError: For a negative seed, a size below 16, an empty or unknown `allowed`, or a
            `stuff_fraction` outside `[0, 1]`.

    Examples:
        >>> crop = generate_object_crop(3, size=32)
        >>> crop.image.shape, crop.name in [f"{c} {s}" for c in COLOR_NAMES for s in THING_CLASSES]
        (torch.Size([3, 32, 32]), True)
    """
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed}")
    if size < 16:
        raise ValueError(f"size: expected at least 16, got {size}")
    if not 0.0 <= stuff_fraction <= 1.0:
        raise ValueError(f"stuff_fraction: expected in [0, 1], got {stuff_fraction}")
    combos = (
        sorted(allowed)
        if allowed is not None
        else [(c, s) for c in COLOR_NAMES for s in THING_CLASSES]
    )
    bad = [c for c in combos if c[0] not in COLORS or c[1] not in THING_CLASSES]
    if not combos or bad:
        raise ValueError(
            f"allowed: expected (colour, shape) pairs of samkit's vocabulary, got {bad or 'none'}"
        )
    rng = np.random.default_rng([seed, 7])
    stuff_name = STUFF_CLASSES[int(rng.integers(len(STUFF_CLASSES)))]
    color, kind, amplitude = STUFF_STYLES[stuff_name]
    base = np.asarray(color) + rng.uniform(-0.04, 0.04, size=3)
    image = base[:, None, None] + amplitude * _render.texture(rng, kind, size, size)[None]
    full = np.ones((size, size), dtype=bool)
    if rng.uniform() < stuff_fraction:
        out = np.clip(image, 0.0, 1.0).astype(np.float32)
        return ObjectCrop(
            torch.from_numpy(out), stuff_name, None, stuff_name, torch.from_numpy(full)
        )
    color_name, shape_name = combos[int(rng.integers(len(combos)))]
    if rng.uniform() < 0.3:  # clutter: another object cut by the border
        other_c, other_s = combos[int(rng.integers(len(combos)))]
        r = rng.uniform(0.2, 0.35) * size
        edge = rng.uniform(0, size)
        cx, cy = (edge, -0.3 * r) if rng.uniform() < 0.5 else (-0.3 * r, edge)
        spec = _render.ShapeSpec(THING_CLASSES.index(other_s), 0, cx, cy, r, 0.0)
        m = _render.shape_mask(spec, other_s, size, size)
        _render.paint_flat(rng, image, m, COLORS[other_c], noise=0.02)
    r = rng.uniform(0.17, 0.45) * size
    spec = _render.ShapeSpec(
        THING_CLASSES.index(shape_name),
        0,
        size / 2 + rng.uniform(-0.12, 0.12) * size,
        size / 2 + rng.uniform(-0.12, 0.12) * size,
        r,
        rng.uniform(-0.26, 0.26),
    )
    mask = _render.shape_mask(spec, shape_name, size, size)
    rgb = tuple(float(x) for x in np.asarray(COLORS[color_name]) + rng.uniform(-0.05, 0.05, 3))
    _render.paint_flat(rng, image, mask, rgb, noise=0.02)  # type: ignore[arg-type]
    out = np.clip(image, 0.0, 1.0).astype(np.float32)
    return ObjectCrop(
        torch.from_numpy(out),
        f"{color_name} {shape_name}",
        color_name,
        shape_name,
        torch.from_numpy(mask),
    )
