"""Seeded synthetic scenes: coloured shapes on textured backgrounds, with full annotations.

Each scene is a small RGB image (128 px by default, any size) with 1-3 textured "stuff" regions
and 1-5 coloured "thing" shapes that may occlude one another, plus every annotation the three
samkit systems train on: instance masks with class ids, a semantic map, a panoptic map with a
segment list (panopticapi style), and referring expressions whose targets are zero, one or
several instances. Generation is deterministic for a seed, uses only local generators (never
the global RNG) and vectorised numpy, and takes a few milliseconds for a 128 px scene.

The torch datasets built on these scenes live in `samkit.data.datasets`
(`SyntheticReferringDataset`, `SyntheticPanopticDataset`, `SyntheticSemanticDataset` and their
collate functions); they are also reachable from this module for convenience.

Semantic ids index `CLASS_NAMES` = `THING_CLASSES + STUFF_CLASSES`, so ids below
`NUM_THING_CLASSES` are things and the rest are stuff. Every pixel carries a class (there is no
void label).
"""

# axis legend
# i - instances (things) of one scene, `I` of them
# s - panoptic segments (things and stuff) of one scene, `S` of them
# p - parts produced by `oversegment`, `P` of them
# h w - image pixels (`H`, `W` in docstrings)

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import watershed
from torch import Tensor
from torchvision.ops import masks_to_boxes

from samkit._checks import check_shape
from samkit.data import _expressions as _expr
from samkit.data import _render

__all__ = [
    "CLASS_NAMES",
    "COLORS",
    "COLOR_NAMES",
    "EXPRESSION_KINDS",
    "NUM_CLASSES",
    "NUM_THING_CLASSES",
    "Oversegmentation",
    "PLURALS",
    "ReferringExpression",
    "STUFF_CLASSES",
    "STUFF_STYLES",
    "Scene",
    "Segment",
    "StuffStyle",
    "TEXTURES",
    "THING_CLASSES",
    "VOCABULARY",
    "generate_scene",
    "oversegment",
]

THING_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
"""Shape kinds; semantic ids `0 .. NUM_THING_CLASSES - 1`."""

STUFF_CLASSES: tuple[str, ...] = ("grass", "sky", "water", "sand", "wall")
"""Textured background kinds; semantic ids `NUM_THING_CLASSES ..`."""

CLASS_NAMES: tuple[str, ...] = THING_CLASSES + STUFF_CLASSES
"""All class names; a semantic id indexes this tuple."""

NUM_THING_CLASSES: int = len(THING_CLASSES)
NUM_CLASSES: int = len(CLASS_NAMES)

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.10, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "white": (0.97, 0.97, 0.97),
}
"""Saturated RGB colours (in `[0, 1]`) that things are painted with."""

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
"""Colour names in the order `Scene.instance_colors` indexes them."""

TEXTURES: tuple[str, ...] = ("stripes", "noise", "checker", "gradient")
"""Texture kinds used by stuff classes."""


class StuffStyle(NamedTuple):
    """How a stuff class is painted: a muted base colour modulated by a texture."""

    color: tuple[float, float, float]
    texture: str
    amplitude: float


STUFF_STYLES: dict[str, StuffStyle] = {
    "grass": StuffStyle((0.33, 0.52, 0.24), "noise", 0.12),
    "sky": StuffStyle((0.55, 0.74, 0.84), "gradient", 0.15),
    "water": StuffStyle((0.16, 0.36, 0.58), "stripes", 0.10),
    "sand": StuffStyle((0.82, 0.72, 0.50), "noise", 0.07),
    "wall": StuffStyle((0.55, 0.52, 0.50), "checker", 0.08),
}
"""Base colour, texture and texture amplitude of every stuff class."""

PLURALS: dict[str, str] = {kind: kind + "s" for kind in THING_CLASSES}
"""Plural form of every thing class, as used in expressions."""

EXPRESSION_KINDS: tuple[str, ...] = ("unique", "plural", "spatial", "size", "absent")
"""Kinds of referring expressions.

* `unique`: one referent named by its kind or colour and kind ("the red circle", "the star").
* `plural`: several referents ("all squares", "all green shapes").
* `spatial`: one referent picked by position ("the leftmost triangle", "the topmost shape").
* `size`: one referent picked by visible area ("the largest star", "the smallest shape").
* `absent`: no referent ("the green star" when there is none); the target mask is empty.
"""

_WORDS = {"the", "all", "shape", "shapes"}
_WORDS |= {"leftmost", "rightmost", "topmost", "bottommost", "largest", "smallest"}
VOCABULARY: tuple[str, ...] = tuple(
    sorted(_WORDS | set(THING_CLASSES) | set(PLURALS.values()) | set(COLOR_NAMES))
)
"""Every word an expression can use (all lower case)."""


@dataclass
class Segment:
    """One segment of a panoptic map (panopticapi's `segments_info` entry).

    Attributes:
        id: Segment id as stored in `Scene.panoptic` (starts at 1).
        category_id: Index into `CLASS_NAMES`.
        is_thing: True for an instance of a thing class, False for a stuff region.
        area: Number of pixels of the segment.
        instance: Index of the instance in `Scene.instance_masks`, or -1 for stuff.
    """

    id: int
    category_id: int
    is_thing: bool
    area: int
    instance: int = -1


@dataclass
class ReferringExpression:
    """A referring expression and the pixels it refers to.

    Attributes:
        text: Lower-case words from `VOCABULARY`, e.g. "the leftmost triangle".
        kind: One of `EXPRESSION_KINDS`.
        target_mask: `(H, W)` bool, the union of the referenced instances (empty if none).
        target_ids: Sorted indices of the referenced instances in `Scene.instance_masks`.
    """

    text: str
    kind: str
    target_mask: Tensor
    target_ids: list[int]

    @property
    def has_target(self) -> bool:
        """True when the expression refers to at least one instance."""
        return len(self.target_ids) > 0

    @property
    def num_targets(self) -> int:
        """Number of referenced instances."""
        return len(self.target_ids)


@dataclass
class Scene:
    """A synthetic image with instance, semantic, panoptic and referring annotations.

    Instances are ordered back to front (later ones were painted over earlier ones); each
    instance mask is the visible part only, so instance masks are pairwise disjoint.

    Attributes:
        seed: The seed the scene was generated from.
        image: `(3, H, W)` float32 RGB in `[0, 1]`.
        instance_masks: `(I, H, W)` bool, disjoint visible masks of the things.
        instance_classes: `(I,)` long, indices into `CLASS_NAMES` (all `< NUM_THING_CLASSES`).
        instance_colors: `(I,)` long, indices into `COLOR_NAMES`.
        semantic: `(H, W)` long, a class id for every pixel.
        panoptic: `(H, W)` long, the segment id of every pixel (see `segments`).
        segments: One `Segment` per id in `panoptic`: instances first (id = instance + 1), then
            one per stuff class present.
        expressions: Referring expressions about this scene.

    Example:
        >>> scene = generate_scene(0, size=64)
        >>> scene.image.shape, scene.semantic.shape
        (torch.Size([3, 64, 64]), torch.Size([64, 64]))
        >>> bool((scene.instance_masks.sum(0) <= 1).all())
        True
    """

    seed: int
    image: Tensor
    instance_masks: Tensor
    instance_classes: Tensor
    instance_colors: Tensor
    semantic: Tensor
    panoptic: Tensor
    segments: list[Segment]
    expressions: list[ReferringExpression]

    @property
    def size(self) -> tuple[int, int]:
        """`(H, W)` of the image."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    @property
    def num_instances(self) -> int:
        """Number of instances `I`."""
        return int(self.instance_masks.shape[0])

    @property
    def instance_boxes(self) -> Tensor:
        """`(I, 4)` float boxes `(x0, y0, x1, y1)` with inclusive pixel extremes."""
        return masks_to_boxes(self.instance_masks)

    @property
    def segment_masks(self) -> Tensor:
        """`(S, H, W)` bool, one mask per entry of `segments` (they partition the image)."""
        ids = torch.tensor([s.id for s in self.segments], dtype=torch.long)
        return self.panoptic[None] == ids[:, None, None]

    @property
    def segment_classes(self) -> Tensor:
        """`(S,)` long, the category id of every entry of `segments`."""
        return torch.tensor([s.category_id for s in self.segments], dtype=torch.long)

    def describe(self) -> list[str]:
        """Human-readable instance list, e.g. `["red circle", "blue star"]` (back to front)."""
        return [
            f"{COLOR_NAMES[int(c)]} {CLASS_NAMES[int(k)]}"
            for c, k in zip(self.instance_colors, self.instance_classes, strict=True)
        ]


class Oversegmentation(NamedTuple):
    """Parts of segments returned by `oversegment`.

    Attributes:
        masks: `(P, H, W)` bool part masks; they partition the union of the input masks.
        parents: `(P,)` long, index of the input mask each part came from.
    """

    masks: Tensor
    parents: Tensor


def generate_scene(
    seed: int,
    *,
    size: int | tuple[int, int] = 128,
    num_objects: tuple[int, int] = (1, 5),
    num_stuff: tuple[int, int] = (1, 3),
    object_scale: tuple[float, float] = (0.08, 0.22),
    min_visible_fraction: float = 0.35,
    num_expressions: int = 4,
    no_target_fraction: float = 0.25,
) -> Scene:
    """Generate one synthetic scene, deterministically from `seed`.

    The background is split into `num_stuff` Voronoi regions of distinct stuff classes, each
    painted with its `STUFF_STYLES` texture. Then `num_objects` shapes of random kind, colour,
    size (radius a fraction `object_scale` of the short side) and small rotation are painted
    back to front; a shape whose visible part falls below `min_visible_fraction` of its full
    area is removed (and not painted). Finally `num_expressions` referring expressions are
    drawn, `round(num_expressions * no_target_fraction)` of them with no referent, the rest
    balanced across the other `EXPRESSION_KINDS` that the scene supports.

    Args:
        seed: Non-negative seed; the same seed always gives the same scene.
        size: Image size, `S` for a square `S x S` image or `(H, W)`; at least 16.
        num_objects: Inclusive range for the number of shapes placed (before occlusion drops).
        num_stuff: Inclusive range for the number of stuff regions (at most
            `len(STUFF_CLASSES)`).
        object_scale: Range of shape radii, as a fraction of the short image side.
        min_visible_fraction: Shapes less visible than this are dropped.
        num_expressions: Referring expressions per scene (a fixed count; with-target
            expressions repeat when the scene supports fewer distinct ones).
        no_target_fraction: Fraction of the expressions that have no referent.

    Returns:
        The `Scene`.

    Raises:
        ValueError: If an argument is out of range.
    """
    H, W = _parse_size(size)
    _check_range("num_objects", num_objects, low=0)
    _check_range("num_stuff", num_stuff, low=1, high=len(STUFF_CLASSES))
    if not 0.0 < object_scale[0] <= object_scale[1] <= 0.5:
        raise ValueError(f"object_scale: expected 0 < lo <= hi <= 0.5, got {object_scale}")
    if not 0.0 <= min_visible_fraction <= 1.0:
        raise ValueError(f"min_visible_fraction: expected in [0, 1], got {min_visible_fraction}")
    if num_expressions < 0 or not 0.0 <= no_target_fraction <= 1.0:
        raise ValueError(
            "num_expressions must be >= 0 and no_target_fraction in [0, 1], got "
            f"{num_expressions} and {no_target_fraction}"
        )
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed}")
    rng = np.random.default_rng(seed)
    short = min(H, W)

    # Background: Voronoi regions of distinct stuff classes, each with its texture.
    n_stuff = int(rng.integers(num_stuff[0], num_stuff[1] + 1))
    region = _render.stuff_layout(rng, H, W, n_stuff, min_fraction=0.5 / (n_stuff + 1))
    stuff_ids = rng.choice(len(STUFF_CLASSES), size=n_stuff, replace=False)
    image = np.zeros((3, H, W), dtype=np.float64)
    semantic = np.zeros((H, W), dtype=np.int64)
    for r, sid in enumerate(stuff_ids):
        style = STUFF_STYLES[STUFF_CLASSES[int(sid)]]
        base = np.asarray(style.color) + rng.uniform(-0.04, 0.04, size=3)
        pattern = style.amplitude * _render.texture(rng, style.texture, H, W)
        inside = region == r
        image[:, inside] = base[:, None] + pattern[inside][None]
        semantic[inside] = NUM_THING_CLASSES + int(sid)

    # Things: random shapes painted back to front; heavily occluded ones are dropped.
    n_obj = int(rng.integers(num_objects[0], num_objects[1] + 1))
    specs: list[_render.ShapeSpec] = []
    for _ in range(n_obj):
        radius = float(rng.uniform(*object_scale)) * short
        specs.append(
            _render.ShapeSpec(
                kind=int(rng.integers(NUM_THING_CLASSES)),
                color=int(rng.integers(len(COLOR_NAMES))),
                cx=float(rng.uniform(radius, W - radius)),
                cy=float(rng.uniform(radius, H - radius)),
                radius=radius,
                angle=float(rng.uniform(-0.26, 0.26)),
            )
        )
    full = [_render.shape_mask(s, THING_CLASSES[s.kind], H, W) for s in specs]
    keep = _render.visible_layers(full, min_visible_fraction)
    top = _render.top_index(full, keep) if specs else np.full((H, W), -1, dtype=np.int64)
    inst = np.stack([top == j for j in keep]) if keep else np.zeros((0, H, W), dtype=bool)
    for j, m in zip(keep, inst, strict=True):
        _render.paint_flat(rng, image, m, COLORS[COLOR_NAMES[specs[j].color]], noise=0.02)
        semantic[m] = specs[j].kind
    classes = [specs[j].kind for j in keep]
    colors = [specs[j].color for j in keep]

    panoptic, segments = _panoptic(inst, classes, semantic)
    expressions = _expressions_for(rng, inst, classes, colors, num_expressions, no_target_fraction)
    return Scene(
        seed=seed,
        image=torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)),
        instance_masks=torch.from_numpy(inst),
        instance_classes=torch.tensor(classes, dtype=torch.long),
        instance_colors=torch.tensor(colors, dtype=torch.long),
        semantic=torch.from_numpy(semantic),
        panoptic=torch.from_numpy(panoptic),
        segments=segments,
        expressions=expressions,
    )


def _parse_size(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 16 or w < 16:
        raise ValueError(f"size: expected at least 16 pixels per side, got {(h, w)}")
    return h, w


def _check_range(name: str, rng: tuple[int, int], *, low: int, high: int | None = None) -> None:
    lo, hi = rng
    if lo < low or lo > hi or (high is not None and hi > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected an inclusive range (lo, hi) within {bound}, got {rng}")


def _panoptic(
    inst: np.ndarray, classes: list[int], semantic: np.ndarray
) -> tuple[np.ndarray, list[Segment]]:
    """Segment ids: instance `i` gets `i + 1`; then one id per stuff class present."""
    panoptic = np.zeros(semantic.shape, dtype=np.int64)
    segments: list[Segment] = []
    for i, (m, k) in enumerate(zip(inst, classes, strict=True)):
        panoptic[m] = i + 1
        segments.append(Segment(i + 1, int(k), True, int(m.sum()), i))
    for cid in range(NUM_THING_CLASSES, NUM_CLASSES):
        m = semantic == cid
        area = int(m.sum())
        if area:
            seg_id = len(segments) + 1
            panoptic[m] = seg_id
            segments.append(Segment(seg_id, cid, False, area, -1))
    return panoptic, segments


def _expressions_for(
    rng: np.random.Generator,
    inst: np.ndarray,
    classes: list[int],
    colors: list[int],
    num: int,
    no_target_fraction: float,
) -> list[ReferringExpression]:
    n, h, w = inst.shape
    areas = inst.reshape(n, h * w).sum(1)
    ys, xs = np.mgrid[0:h, 0:w]
    cx = (inst * xs[None]).reshape(n, h * w).sum(1) / np.maximum(areas, 1)
    cy = (inst * ys[None]).reshape(n, h * w).sum(1) / np.maximum(areas, 1)
    found, absent = _expr.candidates(
        classes,
        colors,
        np.stack([cx, cy], axis=1),
        areas,
        thing_names=THING_CLASSES,
        color_names=COLOR_NAMES,
        plurals=PLURALS,
    )
    chosen = _expr.select(rng, found, absent, num=num, no_target_fraction=no_target_fraction)
    out = []
    for cand in chosen:
        target = inst[cand.ids].any(axis=0) if cand.ids else np.zeros(inst.shape[1:], dtype=bool)
        out.append(ReferringExpression(cand.text, cand.kind, torch.from_numpy(target), cand.ids))
    return out


def oversegment(
    masks: Tensor, seed: int, *, max_parts: int = 4, min_part_area: int = 8
) -> Oversegmentation:
    """Split every segment into 1 to `max_parts` connected parts ("oracle-split" patches).

    Each segment receives a random number of seed pixels and is divided into the geodesic
    Voronoi cells of those seeds inside the segment (a flood fill restricted to the mask), so
    every part is 4-connected and the parts of one segment partition it exactly. A segment made
    of several disconnected pieces gets at least one part per piece (so it may exceed
    `max_parts`). Segments smaller than `2 * min_part_area` pixels stay whole.

    Args:
        masks: `(S, H, W)` bool segment masks (typically `Scene.segment_masks`).
        seed: Seed of the random split.
        max_parts: Maximum number of parts a connected segment is split into.
        min_part_area: Segments are split into at most `area // min_part_area` parts.

    Returns:
        `Oversegmentation(masks (P, H, W) bool, parents (P,) long)` on the device of `masks`.

    Raises:
        ValueError: If `masks` is not `(S, H, W)` or `max_parts < 1`.
    """
    check_shape(masks, "S H W", name="masks")
    if max_parts < 1:
        raise ValueError(f"max_parts: expected >= 1, got {max_parts}")
    rng = np.random.default_rng(seed)
    src = masks.detach().to("cpu", torch.bool).numpy()
    parts: list[np.ndarray] = []
    parents: list[int] = []
    for s, mask in enumerate(src):
        for part in _split_segment(rng, mask, max_parts=max_parts, min_part_area=min_part_area):
            parts.append(part)
            parents.append(s)
    shape = tuple(masks.shape[1:])
    out = np.stack(parts) if parts else np.zeros((0, *shape), dtype=bool)
    return Oversegmentation(
        masks=torch.from_numpy(out).to(masks.device),
        parents=torch.tensor(parents, dtype=torch.long, device=masks.device),
    )


def _split_segment(
    rng: np.random.Generator, mask: np.ndarray, *, max_parts: int, min_part_area: int
) -> list[np.ndarray]:
    """Geodesic Voronoi split of one mask; every part is 4-connected."""
    area = int(mask.sum())
    if area == 0:
        return []
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = mask[y0:y1, x0:x1]
    pieces, n_pieces = ndimage.label(crop)  # 4-connectivity by default
    k = int(rng.integers(1, max_parts + 1))
    k = max(1, min(k, area // max(1, min_part_area)))
    coords = np.stack([ys - y0, xs - x0], axis=1)
    piece_of = pieces[coords[:, 0], coords[:, 1]]
    # one seed inside every connected piece, then randomised farthest-point sampling
    seeds = [int(rng.choice(np.flatnonzero(piece_of == p))) for p in range(1, n_pieces + 1)]
    d = np.min(((coords[:, None] - coords[seeds][None]) ** 2).sum(-1), axis=1)
    while len(seeds) < k and d.max() > 0:
        far = np.flatnonzero(d >= 0.5 * d.max())
        seeds.append(int(far[rng.integers(len(far))]))
        d = np.minimum(d, ((coords - coords[seeds[-1]]) ** 2).sum(-1))
    markers = np.zeros(crop.shape, dtype=np.int64)
    for i, idx in enumerate(seeds):
        markers[coords[idx, 0], coords[idx, 1]] = i + 1
    cells = watershed(np.zeros(crop.shape), markers=markers, mask=crop, connectivity=1)
    out = []
    for label in range(1, len(seeds) + 1):
        part = np.zeros(mask.shape, dtype=bool)
        part[y0:y1, x0:x1] = cells == label
        if part.any():
            out.append(part)
    return out


_DATASET_NAMES = (
    "PanopticBatch",
    "PanopticSample",
    "ReferringBatch",
    "ReferringSample",
    "SemanticBatch",
    "SemanticSample",
    "SyntheticPanopticDataset",
    "SyntheticReferringDataset",
    "SyntheticSemanticDataset",
    "collate_panoptic",
    "collate_referring",
    "collate_semantic",
)


def __getattr__(name: str) -> Any:
    """Forward the dataset names to `samkit.data.datasets` (lazy, avoids an import cycle)."""
    if name in _DATASET_NAMES:
        from samkit.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
