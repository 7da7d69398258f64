"""Quality measures of pretrained backbones on annotated scenes.

* `prompt_quality`: SAM's single-prompt evaluation. One point per segment at the segment's
  "centre" (the pixel farthest from its boundary, as in the SAM paper's point evaluation) and the
  segment's exact box; the IoU of the mask with the ground truth at the image's size, for the
  best of the three multimask outputs (oracle) and for the output with the highest predicted IoU.
* `grid_recall`: `SamAutomaticMaskGenerator` semantics (a point grid, three masks per point,
  predicted-IoU and stability filters, box NMS) through `samkit.proposals.SamPatchProposer`, and
  the fraction of ground-truth segments matched by a proposal at IoU >= 0.5.
"""

# axis legend
# s - segments of one image (S); m - multimask outputs (M); h w - image pixels

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor
from torchvision.ops import masks_to_boxes

from samkit.backbones.sam import SamLike
from samkit.proposals import SamPatchProposer
from samkit.types import Prompts

__all__ = ["centre_points", "grid_recall", "mask_iou", "prompt_quality"]


def mask_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """IoU of bool masks `(..., H, W)` against `(..., H, W)` (0 where both are empty)."""
    inter = (pred & gt).flatten(-2).sum(-1).double()
    union = (pred | gt).flatten(-2).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))


def centre_points(masks: Tensor) -> Tensor:
    """The pixel of each mask farthest from its boundary: `(S, H, W)` bool -> `(S, 2)` x, y.

    Distances are Euclidean (`scipy.ndimage.distance_transform_edt`) with the image border
    counting as boundary; among tied pixels (the ridge of an elongated shape) the one nearest to
    the ridge's mean is taken; the point is the pixel centre (`+ 0.5`).
    """
    out = torch.zeros(masks.shape[0], 2, dtype=torch.float32)
    for i, m in enumerate(masks.cpu().numpy()):
        padded = np.pad(m, 1)
        dist = distance_transform_edt(padded)[1:-1, 1:-1]
        ys, xs = np.nonzero(dist == dist.max())
        j = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
        out[i] = torch.tensor([xs[j] + 0.5, ys[j] + 0.5])
    return out.to(masks.device)


@torch.no_grad()
def prompt_quality(sam: SamLike, image: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """IoUs of one-point and box prompts for every segment of one image.

    Args:
        sam: A SAM backend.
        image: `(3, H, W)` in `[0, 1]`.
        masks: Ground-truth segments `(S, H, W)` bool (each non-empty).

    Returns:
        `point_best` (best of the three multimask outputs), `point_choice` (the output with
        the highest predicted IoU) and `box` (single-mask output), each `(S,)` float64.
    """
    h, w = image.shape[-2:]
    if masks.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.float64)
        return {"point_best": empty, "point_choice": empty, "box": empty}
    emb = sam.encode(image[None])
    pts = centre_points(masks)[None, :, None]  # (1, S, 1, 2)
    prompts = Prompts(
        points=sam.transform_coords(pts, (h, w)),
        labels=torch.ones(1, masks.shape[0], 1, device=image.device),
    )
    pred = sam.predict(emb, prompts, multimask=True, upsample=True)
    assert pred.logits is not None
    ious = mask_iou(pred.logits[0] > sam.mask_threshold, masks[:, None])  # (S, 3)
    choice = pred.iou_scores[0].argmax(-1)
    boxes = masks_to_boxes(masks).float()
    boxes[:, 2:] += 1.0
    box_pred = sam.predict(
        emb, Prompts(boxes=sam.transform_boxes(boxes[None], (h, w))), multimask=False
    )
    assert box_pred.logits is not None
    box_iou = mask_iou(box_pred.logits[0, :, 0] > sam.mask_threshold, masks)
    return {
        "point_best": ious.max(-1).values.cpu(),
        "point_choice": ious.gather(-1, choice[:, None])[:, 0].cpu(),
        "box": box_iou.cpu(),
    }


@torch.no_grad()
def grid_recall(
    sam: SamLike,
    image: Tensor,
    masks: Tensor,
    *,
    points_per_side: int = 16,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    box_nms_thresh: float = 0.7,
    iou_threshold: float = 0.5,
) -> tuple[int, int, int]:
    """Automatic mask generation on one image, and how many ground-truth segments it recalls.

    The defaults are `SamAutomaticMaskGenerator`'s (`pred_iou_thresh=0.88`,
    `stability_score_thresh=0.95`, `box_nms_thresh=0.7`, no crops) with a 16 x 16 grid (SAM's
    32 x 32 at 1024 px is one point per 32 px; 16 x 16 at 128 px is one per 8 px).

    Args:
        sam: A SAM backend.
        image: `(3, H, W)` in `[0, 1]`.
        masks: Ground-truth segments `(S, H, W)` bool.
        points_per_side: Grid size.
        pred_iou_thresh: Minimum predicted IoU.
        stability_score_thresh: Minimum stability score.
        box_nms_thresh: Box NMS IoU.
        iou_threshold: A segment is recalled when some proposal reaches this IoU with it.

    Returns:
        `(recalled, segments, proposals)`.
    """
    proposer = SamPatchProposer(
        sam=sam,
        points_per_side=points_per_side,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        box_nms_thresh=box_nms_thresh,
    )
    patches = proposer(image[None])[0]
    found = patches.masks.to(masks.device)
    if masks.shape[0] == 0 or found.shape[0] == 0:
        return 0, int(masks.shape[0]), int(found.shape[0])
    ious = mask_iou(found[None], masks[:, None])  # (S, P)
    recalled = int((ious.max(-1).values >= iou_threshold).sum())
    return recalled, int(masks.shape[0]), int(found.shape[0])
