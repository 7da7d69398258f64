"""Seeded synthetic scenes: coloured shapes on textured backgrounds, with full annotations.

Each scene is a small RGB image (128 px by default, any size) with 1-3 textured "stuff" regions
and 1-5 coloured "thing" shapes that may occlude one another, plus every annotation the three
samkit systems train on: instance masks with class ids, a semantic map, a panoptic map with a
segment list (panopticapi style), and referring expressions whose targets are zero, one or
several instances. Generation is deterministic for a seed, uses only local generators (never
the global RNG) and vectorised numpy, and takes a few milliseconds for a 128 px scene.

The torch datasets built on these scenes live in `samkit.data.datasets`
(`SyntheticReferringDataset`, `SyntheticPanopticDataset`, `SyntheticSemanticDataset` and their
collate functions) and are exported by `samkit.data`. `Segment` (a sample type, defined in
`samkit.data._items`) is re-exported here.

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
from torch import Tensor

from samkit._checks import check_shape
from samkit.data import _expressions as _expr
from samkit.data import _oversegment, _render
from samkit.data._items import Segment

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

    Examples:
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
        from torchvision.ops import masks_to_boxes  # lazy: torchvision.ops loads torch._dynamo

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
    image, semantic, inst, classes, colors = _render.paint_scene(
        rng,
        H,
        W,
        stuff_styles=[STUFF_STYLES[name] for name in STUFF_CLASSES],
        thing_names=THING_CLASSES,
        palette=[COLORS[name] for name in COLOR_NAMES],
        num_stuff=num_stuff,
        num_objects=num_objects,
        object_scale=object_scale,
        min_visible_fraction=min_visible_fraction,
    )
    panoptic, raw_segments = _render.panoptic_segments(inst, classes, semantic, NUM_THING_CLASSES)
    chosen = _expr.expressions_for(
        rng,
        inst,
        classes,
        colors,
        num=num_expressions,
        no_target_fraction=no_target_fraction,
        thing_names=THING_CLASSES,
        color_names=COLOR_NAMES,
        plurals=PLURALS,
    )
    return Scene(
        seed=seed,
        image=torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)),
        instance_masks=torch.from_numpy(inst),
        instance_classes=torch.tensor(classes, dtype=torch.long),
        instance_colors=torch.tensor(colors, dtype=torch.long),
        semantic=torch.from_numpy(semantic),
        panoptic=torch.from_numpy(panoptic),
        segments=[Segment(*seg) for seg in raw_segments],
        expressions=[
            ReferringExpression(c.text, c.kind, torch.from_numpy(target), c.ids)
            for c, target in chosen
        ],
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
        for part in _oversegment.split_segment(
            rng, mask, max_parts=max_parts, min_part_area=min_part_area
        ):
            parts.append(part)
            parents.append(s)
    shape = tuple(masks.shape[1:])
    out = np.stack(parts) if parts else np.zeros((0, *shape), dtype=bool)
    return Oversegmentation(
        masks=torch.from_numpy(out).to(masks.device),
        parents=torch.tensor(parents, dtype=torch.long, device=masks.device),
    )


_MOVED = frozenset(
    {
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
    }
)


def __getattr__(name: str) -> Any:
    """Point the dataset names, once forwarded from here, to where they live."""
    if name in _MOVED:
        raise AttributeError(
            f"samkit.data.synthetic has no attribute {name!r}: import it from samkit.data "
            "(or samkit.data.datasets); this module only generates scenes, so that it does not "
            "import the datasets built on it"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
