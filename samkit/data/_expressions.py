"""Referring-expression grammar of synthetic scenes (private helpers of `synthetic.py`).

An expression is built from instance attributes only (kind, colour, visible centroid, visible
area), so its referents can be recomputed from the text: see `candidates`.
"""

# axis legend
# i - instances of one scene
# h w - image pixels

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

SPATIAL_WORDS: dict[str, tuple[int, int]] = {
    # word -> (coordinate axis: 0 = x, 1 = y; sign: -1 picks the minimum, +1 the maximum)
    "leftmost": (0, -1),
    "rightmost": (0, 1),
    "topmost": (1, -1),
    "bottommost": (1, 1),
}
SIZE_WORDS: dict[str, int] = {"smallest": -1, "largest": 1}
SPATIAL_MARGIN_PX = 2.0  # the picked centroid must beat the runner-up by this many pixels
SIZE_MARGIN = 0.15  # the picked area must beat the runner-up by this relative margin


@dataclass
class Candidate:
    """An expression text, its kind and the sorted indices of its referents."""

    kind: str
    text: str
    ids: list[int]


def _extreme(values: np.ndarray, ids: list[int], sign: int, margin: float) -> int | None:
    """The id whose value is extreme in direction `sign`, if it wins by `margin`."""
    order = sorted(ids, key=lambda i: sign * values[i], reverse=True)
    best, second = order[0], order[1]
    if sign * (values[best] - values[second]) <= margin:
        return None
    return best


def candidates(
    classes: list[int],
    colors: list[int],
    centroids: np.ndarray,
    areas: np.ndarray,
    *,
    thing_names: tuple[str, ...],
    color_names: tuple[str, ...],
    plurals: dict[str, str],
) -> tuple[list[Candidate], list[Candidate]]:
    """All valid expressions of a scene, split into (with referents, without referents).

    Args:
        classes: Thing-class id of every instance.
        colors: Colour id of every instance.
        centroids: `(I, 2)` visible-mask centroids `(x, y)`.
        areas: `(I,)` visible areas in pixels.
        thing_names: Names of the thing classes.
        color_names: Names of the colours.
        plurals: Plural of every thing name.

    Returns:
        `(with_target, without_target)` candidate lists in a deterministic order.
    """
    n = len(classes)
    by_kind: dict[int, list[int]] = defaultdict(list)
    by_color: dict[int, list[int]] = defaultdict(list)
    by_pair: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (k, c) in enumerate(zip(classes, colors, strict=True)):
        by_kind[k].append(i)
        by_color[c].append(i)
        by_pair[(c, k)].append(i)

    found: list[Candidate] = []
    for (c, k), ids in sorted(by_pair.items()):
        if len(ids) == 1:
            found.append(Candidate("unique", f"the {color_names[c]} {thing_names[k]}", ids))
    groups: list[tuple[str, list[int]]] = []
    for k, ids in sorted(by_kind.items()):
        if len(ids) == 1:
            found.append(Candidate("unique", f"the {thing_names[k]}", ids))
        else:
            found.append(Candidate("plural", f"all {plurals[thing_names[k]]}", ids))
            groups.append((thing_names[k], ids))
    for c, ids in sorted(by_color.items()):
        if len(ids) > 1:
            found.append(Candidate("plural", f"all {color_names[c]} shapes", ids))
    if n > 1:
        found.append(Candidate("plural", "all shapes", list(range(n))))
        groups.append(("shape", list(range(n))))
    for noun, ids in groups:
        for word, (axis, sign) in SPATIAL_WORDS.items():
            best = _extreme(centroids[:, axis], ids, sign, SPATIAL_MARGIN_PX)
            if best is not None:
                found.append(Candidate("spatial", f"the {word} {noun}", [best]))
        for word, sign in SIZE_WORDS.items():
            best = _extreme(np.log(areas.astype(np.float64)), ids, sign, math.log1p(SIZE_MARGIN))
            if best is not None:
                found.append(Candidate("size", f"the {word} {noun}", [best]))

    absent: list[Candidate] = []
    for k, name in enumerate(thing_names):
        if k not in by_kind:
            absent.append(Candidate("absent", f"the {name}", []))
            absent.append(Candidate("absent", f"all {plurals[name]}", []))
        for c, cname in enumerate(color_names):
            if (c, k) not in by_pair:
                absent.append(Candidate("absent", f"the {cname} {name}", []))
    return found, absent


def select(
    rng: np.random.Generator,
    found: list[Candidate],
    absent: list[Candidate],
    *,
    num: int,
    no_target_fraction: float,
) -> list[Candidate]:
    """Draw `num` expressions: a fixed share without referents, the rest balanced by kind.

    With-target expressions are drawn round-robin over their kinds (in a random kind order),
    without repetition until the scene's candidates run out, then with repetition. When the
    scene has no instance at all, every expression is a no-target one.
    """
    num_absent = int(math.floor(num * no_target_fraction + 0.5))
    if not found:
        num_absent = num
    pool: dict[str, list[Candidate]] = defaultdict(list)
    for cand in found:
        pool[cand.kind].append(cand)
    kinds = sorted(pool)
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    remaining = {k: [pool[k][i] for i in rng.permutation(len(pool[k]))] for k in kinds}
    chosen: list[Candidate] = []
    turn = 0
    while len(chosen) < num - num_absent:
        if not any(remaining.values()):
            remaining = {k: [pool[k][i] for i in rng.permutation(len(pool[k]))] for k in kinds}
        kind = kinds[turn % len(kinds)]
        turn += 1
        if remaining[kind]:
            chosen.append(remaining[kind].pop())
    replace = num_absent > len(absent)
    if absent and num_absent:
        idx = rng.choice(len(absent), size=num_absent, replace=replace)
        chosen.extend(absent[int(i)] for i in idx)
    return [chosen[int(i)] for i in rng.permutation(len(chosen))]


def expressions_for(
    rng: np.random.Generator,
    inst: np.ndarray,
    classes: list[int],
    colors: list[int],
    *,
    num: int,
    no_target_fraction: float,
    thing_names: tuple[str, ...],
    color_names: tuple[str, ...],
    plurals: dict[str, str],
) -> list[tuple[Candidate, np.ndarray]]:
    """Draw `num` expressions for the instances `inst` `(I, H, W)`, with their target masks."""
    n, h, w = inst.shape
    areas = inst.reshape(n, h * w).sum(1)
    ys, xs = np.mgrid[0:h, 0:w]
    cx = (inst * xs[None]).reshape(n, h * w).sum(1) / np.maximum(areas, 1)
    cy = (inst * ys[None]).reshape(n, h * w).sum(1) / np.maximum(areas, 1)
    found, absent = candidates(
        classes,
        colors,
        np.stack([cx, cy], axis=1),
        areas,
        thing_names=thing_names,
        color_names=color_names,
        plurals=plurals,
    )
    chosen = select(rng, found, absent, num=num, no_target_fraction=no_target_fraction)
    out: list[tuple[Candidate, np.ndarray]] = []
    for cand in chosen:
        target = inst[cand.ids].any(axis=0) if cand.ids else np.zeros((h, w), dtype=bool)
        out.append((cand, np.asarray(target, dtype=bool)))
    return out
