"""Panoptic quality (PQ = SQ x RQ) with panopticapi's definition, streaming over images.

A predicted and a ground-truth segment of the same class match when their IoU exceeds 0.5, the
IoU ignoring predicted pixels that fall on void ground truth. Unmatched ground truths are false
negatives unless crowd; unmatched predictions are false positives unless more than half of them
lies on void or on a crowd region of their class. `PQ_c = sum IoU_TP / (TP + FP/2 + FN/2)`,
averaged over the classes that occur (in ground truth or prediction), for all classes, things and
stuff.

Axis legend:
    hw - pixels (H, W)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from samkit._checks import check_shape

__all__ = ["PanopticQuality", "panoptic_quality"]

_OFFSET = 1 << 24


def _get(seg: Any, key: str, default: Any = None) -> Any:
    if isinstance(seg, Mapping):
        return seg.get(key, default)
    return getattr(seg, key, default)


def _segments(segments: Sequence[Any]) -> dict[int, dict[str, int]]:
    out = {}
    for seg in segments:
        out[int(_get(seg, "id"))] = {
            "category_id": int(_get(seg, "category_id")),
            "iscrowd": int(bool(_get(seg, "iscrowd", 0))),
        }
    return out


class _Stat:
    def __init__(self) -> None:
        self.iou = 0.0
        self.tp = 0
        self.fp = 0
        self.fn = 0


class PanopticQuality:
    """Streaming PQ / SQ / RQ for all classes, things and stuff (panopticapi semantics).

    Segment lists are sequences of dicts (or objects) with `id`, `category_id` and optionally
    `iscrowd`; pixel id 0, and any id missing from a list, is void.

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
        """
        self.things = {int(c) for c in things}
        self.stuff = {int(c) for c in stuff}
        self.reset()

    def reset(self) -> None:
        """Clear the accumulated statistics."""
        self.stats: dict[int, _Stat] = defaultdict(_Stat)

    def update(
        self,
        pred: Tensor,
        pred_segments: Sequence[Any],
        target: Tensor,
        target_segments: Sequence[Any],
    ) -> None:
        """Accumulate one image.

        Args:
            pred: Predicted segment ids `(H, W)`.
            pred_segments: Predicted segments (`id`, `category_id`).
            target: Ground-truth segment ids `(H, W)`.
            target_segments: Ground-truth segments (`id`, `category_id`, `iscrowd`).

        Raises:
            ValueError: If the maps differ in shape.
        """
        s = check_shape(target, "H W", name="target")
        check_shape(pred, "H W", name="pred", known=s)
        gt_segs, pred_segs = _segments(target_segments), _segments(pred_segments)
        gt = _void_unlisted(target.long(), gt_segs)
        pr = _void_unlisted(pred.long(), pred_segs)
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

    def compute(self) -> dict[str, dict[str, float]]:
        """PQ, SQ, RQ (in `[0, 1]`) and the class count `n` for `all`, `things` and `stuff`."""
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
            k = max(n, 1)
            out[name] = {"pq": pq / k, "sq": sq / k, "rq": rq / k, "n": float(n)}
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
