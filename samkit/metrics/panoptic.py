"""Panoptic quality (PQ = SQ x RQ) with panopticapi's `pq_compute` semantics, streaming over images.

Per image (panopticapi's `pq_compute_single_core`):

* A predicted and a ground-truth segment of the same category match when their IoU exceeds 0.5;
  the union leaves out the predicted pixels that fall on void ground truth (id 0).
* Crowd ground truth (`iscrowd`) is never matched and never a false negative. An unmatched
  prediction is not a false positive when more than half of its area lies on void plus the crowd
  region of its own category (as in panopticapi, one crowd region per category and image: the
  last listed one).
* Every other unmatched ground truth is a false negative and every other unmatched prediction a
  false positive.

`PQ_c = sum IoU_TP / (TP + FP/2 + FN/2)`, `SQ_c = sum IoU_TP / TP` (0 without TP),
`RQ_c = TP / (TP + FP/2 + FN/2)`, averaged over the categories with `TP + FP + FN > 0`, for all
categories, things and stuff. An average over no category is `NaN` (panopticapi divides by zero).

A segment whose category is neither a thing nor a stuff category is a `ValueError` (panopticapi
raises for predictions; it would silently leave such ground truth out of every average).
Deviations, by design: a pixel id missing from its segment list is void rather than an error, and
a listed segment with no pixel is skipped (panopticapi raises for such a prediction and counts such
a ground truth, whose area comes from the JSON, as a false negative).

Axis legend:
    H W - pixels
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from samkit._checks import check_shape
from samkit.metrics._sync import all_gather_objects, check_not_synced

__all__ = ["PanopticQuality", "panoptic_quality"]

_OFFSET = 1 << 24


def _get(seg: Any, key: str, default: Any = None) -> Any:
    if isinstance(seg, Mapping):
        return seg.get(key, default)
    return getattr(seg, key, default)


def _segments(
    segments: Sequence[Any], *, name: str, categories: set[int]
) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for seg in segments:
        seg_id, cat = _get(seg, "id"), _get(seg, "category_id")
        if seg_id is None or cat is None:
            raise ValueError(f"{name}: expected segments with `id` and `category_id`, got {seg!r}")
        seg_id, cat = int(seg_id), int(cat)
        if seg_id <= 0:
            raise ValueError(f"{name}: expected segment ids >= 1 (0 is void), got id {seg_id}")
        if seg_id in out:
            raise ValueError(f"{name}: expected unique segment ids, got id {seg_id} twice")
        if cat not in categories:
            raise ValueError(
                f"{name}: segment {seg_id} has category_id {cat}, which is neither a thing nor a "
                f"stuff category ({sorted(categories)})"
            )
        out[seg_id] = {"category_id": cat, "iscrowd": int(bool(_get(seg, "iscrowd", 0)))}
    return out


class _Stat:
    def __init__(self) -> None:
        self.iou = 0.0
        self.tp = 0
        self.fp = 0
        self.fn = 0


class PanopticQuality:
    """Streaming PQ / SQ / RQ for all classes, things and stuff (panopticapi semantics).

    Segment lists are sequences of dicts (or objects) with `id` (`>= 1`, unique), `category_id`
    (a thing or stuff category) and optionally `iscrowd`; pixel id 0, and any id missing from a
    list, is void.

    Examples:
        >>> pq = PanopticQuality(things=[0], stuff=[1])
        >>> gt = torch.tensor([[1, 1], [2, 2]])
        >>> segs = [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 1}]
        >>> pq.update(gt, segs, gt, segs)
        >>> pq.compute()["all"]["pq"]
        1.0
    """

    def __init__(self, *, things: Collection[int], stuff: Collection[int]) -> None:
        """Create the metric.

        Args:
            things: Thing class ids.
            stuff: Stuff class ids.

        Raises:
            ValueError: If a class is both thing and stuff, or no class is given.
        """
        self.things = {int(c) for c in things}
        self.stuff = {int(c) for c in stuff}
        both = self.things & self.stuff
        if both:
            raise ValueError(f"things, stuff: expected disjoint sets, got {sorted(both)} in both")
        if not self.things | self.stuff:
            raise ValueError("things, stuff: expected at least one category, got none")
        self.reset()

    def reset(self) -> None:
        """Clear the accumulated statistics."""
        self.stats: dict[int, _Stat] = defaultdict(_Stat)
        self._synced = False

    def update(
        self,
        pred: Tensor,
        pred_segments: Sequence[Any],
        target: Tensor,
        target_segments: Sequence[Any],
    ) -> None:
        """Accumulate one image.

        Args:
            pred: Predicted segment ids `(H, W)` (integer).
            pred_segments: Predicted segments (`id`, `category_id`).
            target: Ground-truth segment ids `(H, W)` (integer).
            target_segments: Ground-truth segments (`id`, `category_id`, optional `iscrowd`).

        Raises:
            ValueError: If the maps differ in shape, or a segment has an id < 1, a repeated id or
                a category that is neither thing nor stuff.
            TypeError: If a map is not an integer tensor.
        """
        check_not_synced(self._synced, "PanopticQuality", "update")
        s = check_shape(target, "H W", name="target")
        check_shape(pred, "H W", name="pred", known=s)
        for x, name in ((pred, "pred"), (target, "target")):
            if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
                raise TypeError(f"{name}: expected integer segment ids, got dtype {x.dtype}")
        categories = self.things | self.stuff
        gt_segs = _segments(target_segments, name="target_segments", categories=categories)
        pred_segs = _segments(pred_segments, name="pred_segments", categories=categories)
        gt = _void_unlisted(target.long(), gt_segs)
        pr = _void_unlisted(pred.long().to(gt.device), pred_segs)
        gt_area = _areas(gt)
        pred_area = _areas(pr)
        pairs, counts = torch.unique(gt * _OFFSET + pr, return_counts=True)
        inter = {
            (int(p) // _OFFSET, int(p) % _OFFSET): int(c)
            for p, c in zip(pairs.tolist(), counts.tolist(), strict=True)
        }
        gt_matched, pred_matched = set(), set()
        for (g, p), n in inter.items():
            if g not in gt_segs or p not in pred_segs or gt_segs[g]["iscrowd"]:
                continue
            cat = gt_segs[g]["category_id"]
            if cat != pred_segs[p]["category_id"]:
                continue
            union = pred_area.get(p, 0) + gt_area.get(g, 0) - n - inter.get((0, p), 0)
            iou = n / union
            if iou > 0.5:
                self.stats[cat].tp += 1
                self.stats[cat].iou += iou
                gt_matched.add(g)
                pred_matched.add(p)
        crowd: dict[int, int] = {}
        for g, info in gt_segs.items():
            if g in gt_matched:
                continue
            if info["iscrowd"]:
                crowd[info["category_id"]] = g
                continue
            if gt_area.get(g, 0) > 0:
                self.stats[info["category_id"]].fn += 1
        for p, info in pred_segs.items():
            area = pred_area.get(p, 0)
            if p in pred_matched or area == 0:
                continue
            ignored = inter.get((0, p), 0)
            if info["category_id"] in crowd:
                ignored += inter.get((crowd[info["category_id"]], p), 0)
            if ignored / area > 0.5:
                continue
            self.stats[info["category_id"]].fp += 1

    def sync(self) -> None:
        """Merge the per-class TP / FP / FN / IoU sums of all ranks into every rank.

        Collective (`all_gather_object`; a no-op alone): every rank calls it once, after its
        last `update`. Afterwards `update` and a second `sync` raise until `reset`. Counts are
        exact; the IoU sums are added in rank order (float differences ~1e-16 relative).

        Raises:
            RuntimeError: If the metric was already synced.
            ValueError: If the ranks' metrics were built with different things / stuff.
        """
        check_not_synced(self._synced, "PanopticQuality", "sync")
        mine = {c: (st.iou, st.tp, st.fp, st.fn) for c, st in self.stats.items()}
        gathered = all_gather_objects((sorted(self.things), sorted(self.stuff), mine))
        merged: dict[int, _Stat] = defaultdict(_Stat)
        for rank, (things, stuff, stats) in enumerate(gathered):
            if set(things) != self.things or set(stuff) != self.stuff:
                raise ValueError(
                    f"PanopticQuality.sync: rank {rank} has things {things} and stuff {stuff}, "
                    f"this rank {sorted(self.things)} and {sorted(self.stuff)}"
                )
            for c, (iou, tp, fp, fn) in stats.items():
                st = merged[c]
                st.iou += iou
                st.tp += tp
                st.fp += fp
                st.fn += fn
        self.stats = merged
        self._synced = True

    def compute(self) -> dict[str, dict[str, float]]:
        """PQ, SQ, RQ (in `[0, 1]`) and the class count `n` for `all`, `things` and `stuff`.

        Returns:
            `{"all" | "things" | "stuff": {"pq", "sq", "rq", "n"}}`; `pq`, `sq`, `rq` are `NaN`
            when no category of the group has a TP, FP or FN (`n == 0`).
        """
        out = {}
        for name, classes in (
            ("all", self.things | self.stuff),
            ("things", self.things),
            ("stuff", self.stuff),
        ):
            pq = sq = rq = 0.0
            n = 0
            for c in classes:
                st = self.stats.get(c)
                if st is None or st.tp + st.fp + st.fn == 0:
                    continue
                n += 1
                denom = st.tp + 0.5 * st.fp + 0.5 * st.fn
                pq += st.iou / denom
                sq += st.iou / st.tp if st.tp else 0.0
                rq += st.tp / denom
            if n == 0:
                out[name] = {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0.0}
            else:
                out[name] = {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": float(n)}
        return out


def _void_unlisted(ids: Tensor, segs: dict[int, dict[str, int]]) -> Tensor:
    listed = torch.tensor(sorted(segs), dtype=torch.long, device=ids.device)
    return torch.where(torch.isin(ids, listed), ids, torch.zeros_like(ids))


def _areas(ids: Tensor) -> dict[int, int]:
    vals, counts = torch.unique(ids, return_counts=True)
    return dict(zip(vals.tolist(), counts.tolist(), strict=True))


def panoptic_quality(
    pred: Tensor,
    pred_segments: Sequence[Any],
    target: Tensor,
    target_segments: Sequence[Any],
    *,
    things: Collection[int],
    stuff: Collection[int],
) -> dict[str, dict[str, float]]:
    """PQ / SQ / RQ of one image; see `PanopticQuality`.

    Examples:
        >>> gt = torch.tensor([[1, 1, 1, 1]])
        >>> pred = torch.tensor([[1, 1, 1, 0]])
        >>> seg = [{"id": 1, "category_id": 0}]
        >>> panoptic_quality(pred, seg, gt, seg, things=[0], stuff=[])["all"]["pq"]
        0.75
    """
    metric = PanopticQuality(things=things, stuff=stuff)
    metric.update(pred, pred_segments, target, target_segments)
    return metric.compute()
