"""Mask average precision: pycocotools' `COCOeval` (segm), streaming over images.

`MaskAP.compute` returns COCOeval's twelve summary numbers, computed by pycocotools itself on the
accumulated images: `ap` (AP@[.50:.95]), `ap50`, `ap75`, `ap_small`, `ap_medium`, `ap_large`,
`ar1`, `ar10`, `ar100`, `ar_small`, `ar_medium`, `ar_large` (maxDets 1/10/100, COCO's area ranges
on the mask area). A stat with nothing to average over is `-1`, as COCOeval reports it: every stat
before any ground truth (or without ground truth in an area range); a category without ground truth
is left out of the means. No detection at all is scored, not special-cased: every stat is 0 where
ground truth exists (pycocotools' `loadRes` cannot load an empty result list, so the result set is
built as `loadRes` builds it: mask area, mask bbox, ids from 1, `iscrowd` 0).

Class ids are samkit's 0-based labels; they become COCO category ids `label + 1`. Ground-truth
crowd regions (`gt_iscrowd`) are matched and ignored as COCOeval does.

pycocotools is a dependency of samkit (the COCO readers and writers use it too).

Axis legend:
    M - predicted masks
    G - ground-truth masks
    H W - pixels
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from samkit._checks import check_binary, check_shape
from samkit.metrics._sync import all_gather_objects, check_not_synced

__all__ = ["MaskAP", "mask_ap"]

_KEYS = (
    "ap",
    "ap50",
    "ap75",
    "ap_small",
    "ap_medium",
    "ap_large",
    "ar1",
    "ar10",
    "ar100",
    "ar_small",
    "ar_medium",
    "ar_large",
)


def _require_pycocotools() -> Any:
    from pycocotools import mask as mask_utils  # a dependency; imported when first needed

    return mask_utils


def _rle(mask: Tensor) -> dict[str, Any]:
    mask_utils = _require_pycocotools()
    arr = np.asfortranarray(mask.detach().to("cpu").numpy().astype(np.uint8))
    return mask_utils.encode(arr)


def _labels(x: Tensor, *, name: str, n: int) -> list[int]:
    """Class ids `(n,)` as Python ints; integral and `>= 0` (any numeric dtype)."""
    check_shape(x, "N", name=name, known={"N": n})
    if n == 0:
        return []
    vals = x.detach().to("cpu").double()
    if bool((vals != vals.round()).any()) or bool((vals < 0).any()):
        bad = vals[(vals != vals.round()) | (vals < 0)][0]
        raise ValueError(f"{name}: expected integer class ids >= 0, got {float(bad):g}")
    return [int(v) for v in vals.tolist()]


def _scores(x: Tensor, *, n: int) -> list[float]:
    check_shape(x, "M", name="pred_scores", known={"M": n})
    vals = [float(v) for v in x.detach().to("cpu").double().tolist()]
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise ValueError(f"pred_scores: expected finite scores, got {bad[0]}")
    return vals


class MaskAP:
    """Streaming COCO mask AP / AR: the 12 `COCOeval` stats (see the module docstring).

    Examples:
        >>> metric = MaskAP()
        >>> m = torch.zeros(1, 8, 8, dtype=torch.bool); m[0, 2:6, 2:6] = True
        >>> metric.update(m, torch.tensor([0.9]), torch.tensor([0]), m, torch.tensor([0]))
        >>> r = metric.compute()
        >>> round(r["ap"], 3), round(r["ar100"], 3), r["ap_large"]  # a 16 px object is small
        (1.0, 1.0, -1.0)
    """

    KEYS: tuple[str, ...] = _KEYS
    """The keys of `compute`, in COCOeval's `stats` order."""

    def __init__(self) -> None:
        """Create the metric (checks that pycocotools is importable)."""
        _require_pycocotools()
        self.reset()

    def reset(self) -> None:
        """Drop all accumulated images."""
        self.images: list[dict[str, Any]] = []
        self.gts: list[dict[str, Any]] = []
        self.dets: list[dict[str, Any]] = []
        self.categories: set[int] = set()
        self._synced = False

    def update(
        self,
        pred_masks: Tensor,
        pred_scores: Tensor,
        pred_labels: Tensor,
        gt_masks: Tensor,
        gt_labels: Tensor,
        gt_iscrowd: Tensor | None = None,
    ) -> None:
        """Add one image.

        Args:
            pred_masks: Predicted binary masks `(M, H, W)` (bool or 0/1).
            pred_scores: Confidence scores `(M,)`, any finite reals (only their order matters).
            pred_labels: Class ids `(M,)`, integers `>= 0`.
            gt_masks: Ground-truth binary masks `(G, H, W)`.
            gt_labels: Class ids `(G,)`, integers `>= 0`.
            gt_iscrowd: Optional `(G,)` binary crowd flags.

        Raises:
            ValueError: On inconsistent shapes, non-binary masks, non-finite scores or class ids
                that are not integers `>= 0`; the message names the argument.
        """
        check_not_synced(self._synced, "MaskAP", "update")
        s = check_shape(gt_masks, "G H W", name="gt_masks")
        m = check_shape(pred_masks, "M H W", name="pred_masks", known={"H": s["H"], "W": s["W"]})
        gt_bool = check_binary(gt_masks, name="gt_masks")
        pred_bool = check_binary(pred_masks, name="pred_masks")
        scores = _scores(pred_scores, n=m["M"])
        labels = _labels(pred_labels, name="pred_labels", n=m["M"])
        g_labels = _labels(gt_labels, name="gt_labels", n=s["G"])
        crowd = [0] * s["G"]
        if gt_iscrowd is not None:
            check_shape(gt_iscrowd, "G", name="gt_iscrowd", known=s)
            crowd = [int(v) for v in check_binary(gt_iscrowd, name="gt_iscrowd").tolist()]
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": s["H"], "width": s["W"]})
        mask_utils = _require_pycocotools()
        for g in range(s["G"]):
            rle = _rle(gt_bool[g])
            self.gts.append(
                {
                    "id": len(self.gts) + 1,
                    "image_id": image_id,
                    "category_id": g_labels[g] + 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": crowd[g],
                }
            )
            self.categories.add(g_labels[g] + 1)
        for k in range(m["M"]):
            self.dets.append(
                {
                    "image_id": image_id,
                    "category_id": labels[k] + 1,
                    "segmentation": _rle(pred_bool[k]),
                    "score": scores[k],
                }
            )
            self.categories.add(labels[k] + 1)

    def sync(self) -> None:
        """Gather the images, ground truth and detections of all ranks into every rank.

        Collective (`all_gather_object`; a no-op alone): every rank calls it once, after its
        last `update`. Images are concatenated in rank order and renumbered so that image and
        annotation ids stay unique: the result equals one process updating with rank 0's
        images, then rank 1's, and so on. Afterwards `update` and a second `sync` raise until
        `reset`.

        Raises:
            RuntimeError: If the metric was already synced.
        """
        check_not_synced(self._synced, "MaskAP", "sync")
        gathered = all_gather_objects((self.images, self.gts, self.dets, sorted(self.categories)))
        images: list[dict[str, Any]] = []
        gts: list[dict[str, Any]] = []
        dets: list[dict[str, Any]] = []
        categories: set[int] = set()
        for r_images, r_gts, r_dets, r_categories in gathered:
            image_offset, gt_offset = len(images), len(gts)
            images += [{**im, "id": im["id"] + image_offset} for im in r_images]
            gts += [
                {**g, "id": g["id"] + gt_offset, "image_id": g["image_id"] + image_offset}
                for g in r_gts
            ]
            dets += [{**d, "image_id": d["image_id"] + image_offset} for d in r_dets]
            categories.update(r_categories)
        self.images, self.gts, self.dets, self.categories = images, gts, dets, categories
        self._synced = True

    def _coco(self) -> tuple[Any, Any]:
        """Ground truth and results as pycocotools `COCO` objects (results as `loadRes` does)."""
        from pycocotools.coco import COCO

        mask_utils = _require_pycocotools()
        categories = [{"id": c} for c in sorted(self.categories)]
        gt = COCO()
        gt.dataset = {"images": self.images, "annotations": self.gts, "categories": categories}
        gt.createIndex()
        results = []
        for i, det in enumerate(self.dets):
            rle = det["segmentation"]
            results.append(
                {
                    **det,
                    "area": mask_utils.area(rle),
                    "bbox": mask_utils.toBbox(rle),
                    "id": i + 1,
                    "iscrowd": 0,
                }
            )
        dt = COCO()
        dt.dataset = {
            "images": list(self.images),
            "annotations": results,
            "categories": copy.deepcopy(categories),
        }
        dt.createIndex()
        return gt, dt

    def compute(self) -> dict[str, float]:
        """The 12 COCOeval stats in `[0, 1]`, `-1` where undefined (keys: `MaskAP.KEYS`)."""
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            gt, dt = self._coco()
            ev = COCOeval(gt, dt, iouType="segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {k: float(v) for k, v in zip(_KEYS, ev.stats, strict=True)}


def mask_ap(
    predictions: Sequence[tuple[Tensor, Tensor, Tensor]],
    targets: Sequence[tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]],
) -> dict[str, float]:
    """COCO mask AP / AR over a list of images; see `MaskAP`.

    Args:
        predictions: Per image `(masks (M, H, W), scores (M,), labels (M,))`.
        targets: Per image `(masks (G, H, W), labels (G,))`, optionally with `iscrowd (G,)`.

    Returns:
        The 12 COCOeval stats (`MaskAP.KEYS`).

    Raises:
        ValueError: If the lists differ in length, or on an invalid image (see `MaskAP.update`).
        ImportError: If pycocotools is not installed.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"mask_ap: {len(predictions)} predictions but {len(targets)} targets")
    metric = MaskAP()
    for (pm, ps, pl), target in zip(predictions, targets, strict=True):
        metric.update(pm, ps, pl, *target)
    return metric.compute()
