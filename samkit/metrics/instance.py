"""Mask average precision (COCO AP) through pycocotools' `COCOeval`, streaming over images.

pycocotools is an optional dependency (the `test` extra installs it); the metric raises an
`ImportError` that says how to install it when it is missing.

Axis legend:
    m - predicted masks (M)
    g - ground-truth masks (G)
    hw - pixels (H, W)
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
from torch import Tensor

from samkit._checks import check_shape

__all__ = ["MaskAP", "mask_ap"]

_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def _require_pycocotools() -> Any:
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "samkit.metrics.instance needs pycocotools for mask AP; install it with "
            "`pip install pycocotools` (or `pip install samkit[test]`)"
        ) from err
    return mask_utils


def _rle(mask: Tensor) -> dict[str, Any]:
    mask_utils = _require_pycocotools()
    arr = np.asfortranarray(mask.detach().to("cpu").numpy().astype(np.uint8))
    return mask_utils.encode(arr)


class MaskAP:
    """Streaming COCO mask AP (AP@[.5:.95], AP50, AP75, AP small/medium/large) via `COCOeval`.

    Examples:
        >>> metric = MaskAP()
        >>> m = torch.zeros(1, 8, 8, dtype=torch.bool); m[0, 2:6, 2:6] = True
        >>> metric.update(m, torch.tensor([0.9]), torch.tensor([0]), m, torch.tensor([0]))
        >>> round(metric.compute()["ap"], 3)
        1.0
    """

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
            pred_masks: Predicted masks `(M, H, W)` (bool).
            pred_scores: Scores `(M,)`.
            pred_labels: Class ids `(M,)`.
            gt_masks: Ground-truth masks `(G, H, W)` (bool).
            gt_labels: Class ids `(G,)`.
            gt_iscrowd: Optional `(G,)` bool crowd flags.

        Raises:
            ValueError: On inconsistent shapes.
        """
        s = check_shape(gt_masks, "G H W", name="gt_masks")
        check_shape(pred_masks, "M H W", name="pred_masks", known={"H": s["H"], "W": s["W"]})
        check_shape(gt_labels, "G", name="gt_labels", known=s)
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": s["H"], "width": s["W"]})
        mask_utils = _require_pycocotools()
        for g in range(s["G"]):
            rle = _rle(gt_masks[g])
            self.gts.append(
                {
                    "id": len(self.gts) + 1,
                    "image_id": image_id,
                    "category_id": int(gt_labels[g]) + 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": int(gt_iscrowd[g]) if gt_iscrowd is not None else 0,
                }
            )
            self.categories.add(int(gt_labels[g]) + 1)
        for m in range(pred_masks.shape[0]):
            self.dets.append(
                {
                    "image_id": image_id,
                    "category_id": int(pred_labels[m]) + 1,
                    "segmentation": _rle(pred_masks[m]),
                    "score": float(pred_scores[m]),
                }
            )
            self.categories.add(int(pred_labels[m]) + 1)

    def compute(self) -> dict[str, float]:
        """COCO summary numbers in `[0, 1]` (`-1` where undefined, as COCOeval reports)."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if not self.dets or not self.gts:
            return dict.fromkeys(_KEYS, 0.0 if self.gts else -1.0)
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {
                "images": self.images,
                "annotations": self.gts,
                "categories": [{"id": c} for c in sorted(self.categories)],
            }
            gt.createIndex()
            dt = gt.loadRes(self.dets)
            ev = COCOeval(gt, dt, iouType="segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {k: float(v) for k, v in zip(_KEYS, ev.stats[:6], strict=True)}


def mask_ap(
    predictions: list[tuple[Tensor, Tensor, Tensor]],
    targets: list[tuple[Tensor, Tensor]],
) -> dict[str, float]:
    """COCO mask AP over a list of images; see `MaskAP`.

    Args:
        predictions: Per image `(masks (M, H, W), scores (M,), labels (M,))`.
        targets: Per image `(masks (G, H, W), labels (G,))`.

    Returns:
        The COCO summary dict (`ap`, `ap50`, `ap75`, `ap_small`, `ap_medium`, `ap_large`).

    Raises:
        ValueError: If the lists differ in length.
        ImportError: If pycocotools is not installed.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"mask_ap: {len(predictions)} predictions but {len(targets)} targets")
    metric = MaskAP()
    for (pm, ps, pl), (gm, gl) in zip(predictions, targets, strict=True):
        metric.update(pm, ps, pl, gm, gl)
    return metric.compute()
