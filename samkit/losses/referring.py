"""SSP-SAM's referring objective: weighted dice + focal on the mask, L1 + GIoU on the box.

Default weights are the reference's `4 * dice + 4 * focal + 5 * L1 + 2 * GIoU` (spec §4.1). The
mask terms are the DETR dice (per mask, `eps = 1`, mean over masks) and the sigmoid focal loss
(alpha 0.25, gamma 2, mean over all pixels). The box terms use normalised `(cx, cy, w, h)` boxes.
For box-only pre-training set the mask weights to zero and pass `mask_logits=None`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from samkit._checks import check_binary, check_shape
from samkit.losses._normalizer import normalizer
from samkit.losses.box import box_l1_loss, giou_loss
from samkit.losses.segmentation import _reduce, dice_loss, sigmoid_focal_loss
from samkit.types import ReferringLossTerms

__all__ = ["ReferringLoss", "referring_loss"]

EmptyBox = Literal["skip", "include"]


def _box_terms(
    pred_boxes: Tensor, target_boxes: Tensor, empty_box: EmptyBox, reduce_counts: bool
) -> tuple[Tensor, Tensor]:
    l1 = box_l1_loss(pred_boxes, target_boxes, reduction="none")  # (B,)
    giou = giou_loss(pred_boxes, target_boxes, reduction="none")
    if empty_box == "include":  # an empty batch gives 0, not NaN
        return _reduce(l1, "mean"), _reduce(giou, "mean")
    if empty_box != "skip":
        raise ValueError(f"empty_box must be 'skip' or 'include', got {empty_box!r}")
    keep = (target_boxes[:, 2:] > 0).all(-1).to(l1.dtype)  # zero-size box = no target
    count = normalizer(keep.sum(), like=l1, reduce_counts=reduce_counts)
    return (l1 * keep).sum() / count, (giou * keep).sum() / count


def referring_loss(
    mask_logits: Tensor | None,
    mask_targets: Tensor | None,
    pred_boxes: Tensor,
    target_boxes: Tensor,
    *,
    dice_weight: float = 4.0,
    focal_weight: float = 4.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    empty_box: EmptyBox = "skip",
    presence_logits: Tensor | None = None,
    has_target: Tensor | None = None,
    presence_weight: float = 1.0,
    reduce_counts: bool = False,
) -> ReferringLossTerms:
    """Weighted referring-segmentation loss.

    Args:
        mask_logits: Mask logits `(B, 1, H, W)` (or `None` for a box-only loss).
        mask_targets: Binary masks `(B, 1, H, W)` (bool or 0/1) in the same frame (all zero for
            no-target expressions). An empty batch (`B = 0`) gives zero losses.
        pred_boxes: Predicted boxes `(B, 4)`, normalised `(cx, cy, w, h)`.
        target_boxes: Target boxes `(B, 4)`, same format; a zero-size box marks "no target".
        dice_weight: Weight of the dice term (4 in SSP-SAM).
        focal_weight: Weight of the focal term (4).
        l1_weight: Weight of the box L1 term (5).
        giou_weight: Weight of the box GIoU term (2).
        focal_alpha: Focal positive-class weight.
        focal_gamma: Focal exponent.
        empty_box: `"skip"` (default) leaves zero-size target boxes out of the box terms and
            averages over the others; `"include"` reproduces the reference, which regresses them
            like any box (spec §3) and averages over the whole batch.
        presence_logits: Optional "has a referent" logits `(B,)` (samkit's optional GRES head).
        has_target: `(B,)` bool targets for `presence_logits`.
        presence_weight: Weight of the presence binary cross-entropy.
        reduce_counts: Under DDP, count the non-empty target boxes (the box terms' divisor
            with `empty_box="skip"`) over all ranks, as DETR does with `num_boxes`, so that `W`
            processes with batch `b` each take the step of one process with batch `W * b`.
            Every rank must then call the loss in step (as a training step does); without an
            initialised process group it changes nothing.

    Returns:
        `ReferringLossTerms` with the weighted `total` and each unweighted term.

    Raises:
        ValueError: On mismatched shapes, non-binary `mask_targets` / `has_target` or an unknown
            `empty_box`.

    Examples:
        >>> t = torch.zeros(2, 1, 8, 8); t[0, :, 2:6, 2:6] = 1
        >>> boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
        >>> out = referring_loss(torch.randn(2, 1, 8, 8), t, torch.rand(2, 4), boxes)
        >>> out.total.shape
        torch.Size([])
    """
    sizes = check_shape(pred_boxes, "B 4", name="pred_boxes")
    check_shape(target_boxes, "B 4", name="target_boxes", known=sizes)
    l1, giou = _box_terms(pred_boxes, target_boxes.to(pred_boxes.dtype), empty_box, reduce_counts)
    if mask_logits is None or mask_targets is None:
        dice = focal = torch.zeros((), dtype=pred_boxes.dtype, device=pred_boxes.device)
    else:
        msizes = check_shape(mask_logits, "B 1 H W", name="mask_logits", known=sizes)
        check_shape(mask_targets, "B 1 H W", name="mask_targets", known=msizes)
        targets = check_binary(mask_targets, name="mask_targets")
        dice = dice_loss(mask_logits, targets)
        focal = sigmoid_focal_loss(mask_logits, targets, alpha=focal_alpha, gamma=focal_gamma)
    total = dice_weight * dice + focal_weight * focal + l1_weight * l1 + giou_weight * giou
    presence = None
    if presence_logits is not None:
        if has_target is None:
            raise ValueError("referring_loss: presence_logits need has_target")
        check_shape(presence_logits, "B", name="presence_logits", known=sizes)
        check_shape(has_target, "B", name="has_target", known=sizes)
        target = check_binary(has_target, name="has_target")
        logits = (
            presence_logits.float() if presence_logits.dtype != torch.float64 else presence_logits
        )
        presence = F.binary_cross_entropy_with_logits(
            logits, target.to(logits.dtype), reduction="sum"
        )
        presence = presence / max(sizes["B"], 1)
        total = total + presence_weight * presence
    return ReferringLossTerms(
        total=total, dice=dice, focal=focal, l1=l1, giou=giou, presence=presence
    )


class ReferringLoss(nn.Module):
    """Module form of `referring_loss` (weights and options fixed at construction).

    Examples:
        >>> loss = ReferringLoss(l1_weight=0.0, giou_weight=0.0)
        >>> out = loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.rand(1, 4),
        ...            torch.rand(1, 4))
        >>> bool(out.total == 4 * out.dice + 4 * out.focal)
        True
    """

    def __init__(
        self,
        *,
        dice_weight: float = 4.0,
        focal_weight: float = 4.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        empty_box: EmptyBox = "skip",
        presence_weight: float = 1.0,
        reduce_counts: bool = False,
    ) -> None:
        """Create the loss; the arguments are those of `referring_loss`.

        Args:
            dice_weight: Weight of the dice term.
            focal_weight: Weight of the focal term.
            l1_weight: Weight of the box L1 term.
            giou_weight: Weight of the box GIoU term.
            focal_alpha: Focal positive-class weight.
            focal_gamma: Focal exponent.
            empty_box: `"skip"` or `"include"` (reference) for zero-size target boxes.
            presence_weight: Weight of the optional presence term.
            reduce_counts: Reduce the box count over the DDP ranks (see `referring_loss`).
        """
        super().__init__()
        self.dice_weight = dice_weight
        self.focal_weight = focal_weight
        self.l1_weight = l1_weight
        self.giou_weight = giou_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.empty_box: EmptyBox = empty_box
        self.presence_weight = presence_weight
        self.reduce_counts = reduce_counts

    def forward(
        self,
        mask_logits: Tensor | None,
        mask_targets: Tensor | None,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        presence_logits: Tensor | None = None,
        has_target: Tensor | None = None,
    ) -> ReferringLossTerms:
        """Compute the loss; see `referring_loss`."""
        return referring_loss(
            mask_logits,
            mask_targets,
            pred_boxes,
            target_boxes,
            dice_weight=self.dice_weight,
            focal_weight=self.focal_weight,
            l1_weight=self.l1_weight,
            giou_weight=self.giou_weight,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            empty_box=self.empty_box,
            presence_logits=presence_logits,
            has_target=has_target,
            presence_weight=self.presence_weight,
            reduce_counts=self.reduce_counts,
        )
