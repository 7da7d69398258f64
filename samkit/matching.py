"""SAM-CP label assignment: patch "parts" of ground-truth segments and Hungarian query matching.

Follows SAM-CP, spec section 5: a patch is a *part* of a ground-truth segment when most of it lies
inside the segment (intersection over the patch, for boxes and masks); instance queries are
matched one-to-one to ground-truth things with a focal class cost, a mask-focal affinity cost, a
dice cost and box L1 / GIoU costs; semantic query `s` always stands for stuff class `s`.

Axis legend:
    n - patches (N)
    g - ground-truth segments (G)
    q - instance queries (Q)
    hw - pixels
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_iou, generalized_box_iou

from samkit._checks import check_binary, check_shape, check_unit_interval
from samkit.losses.segmentation import pairwise_dice_loss
from samkit.modules.merging import merge_boxes
from samkit.proposals import mask_boxes
from samkit.types import Patches, PatchTargets

__all__ = [
    "HungarianPatchMatcher",
    "PartAssigner",
    "build_patch_targets",
    "patch_overlaps",
]


def _box_iop(patch_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """Box intersection over the patch box area `(N, G)`."""
    lt = torch.maximum(patch_boxes[:, None, :2], gt_boxes[None, :, :2])
    rb = torch.minimum(patch_boxes[:, None, 2:], gt_boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (patch_boxes[:, 2:] - patch_boxes[:, :2]).clamp(min=0).prod(-1)
    return inter / area.clamp(min=1e-6)[:, None]


def patch_overlaps(
    patch_masks: Tensor, patch_boxes: Tensor, gt_masks: Tensor, gt_boxes: Tensor
) -> tuple[Tensor, Tensor]:
    """Overlaps between patches and ground-truth segments used by the part assignment.

    Args:
        patch_masks: Patch masks `(N, H, W)` (bool).
        patch_boxes: Patch boxes `(N, 4)`, `(x0, y0, x1, y1)`.
        gt_masks: Ground-truth masks `(G, H, W)` (bool).
        gt_boxes: Ground-truth boxes `(G, 4)`.

    Returns:
        `(iop, iou)`, both `(N, G)`: `iop = min(IoP_box, IoP_mask)` (intersection over the patch)
        and `iou` the box IoU.

    Raises:
        ValueError: On inconsistent shapes or non-binary masks.

    Examples:
        >>> m = torch.zeros(1, 4, 4, dtype=torch.bool); m[0, :2] = True
        >>> g = torch.ones(1, 4, 4, dtype=torch.bool)
        >>> pb, gb = torch.tensor([[0.0, 0, 4, 2]]), torch.tensor([[0.0, 0, 4, 4]])
        >>> iop, iou = patch_overlaps(m, pb, g, gb)
        >>> iop.item(), iou.item()
        (1.0, 0.5)
    """
    s = check_shape(patch_masks, "N H W", name="patch_masks")
    g = check_shape(gt_masks, "G H W", name="gt_masks", known={"H": s["H"], "W": s["W"]})
    check_shape(patch_boxes, "N 4", name="patch_boxes", known=s)
    check_shape(gt_boxes, "G 4", name="gt_boxes", known=g)
    patch_masks = check_binary(patch_masks, name="patch_masks")
    gt_masks = check_binary(gt_masks, name="gt_masks")
    pm = patch_masks.flatten(1).float()
    inter = pm @ gt_masks.flatten(1).float().T
    iop_mask = inter / pm.sum(1).clamp(min=1)[:, None]
    iop = torch.minimum(_box_iop(patch_boxes.float(), gt_boxes.float()), iop_mask)
    return iop, box_iou(patch_boxes.float(), gt_boxes.float())


class PartAssigner:
    """Labels every (patch, ground truth) pair as part (1), negative (0) or ignored (-1).

    Rules (SAM-CP, spec section 5.1; vectorised over patches x ground truths): overlap
    `O = min(IoP_box, IoP_mask)`; `O < neg_thr` -> 0, `O >= pos_thr` -> 1; *high-IoU part*: a
    patch whose box IoU `U` with the ground truth is > `min_pos_iou` and higher than that of every
    current part becomes a part; *low quality*: a ground truth with no part gets its highest-`U`
    patch as a part iff that `U > min_pos_iou` (else 0). Deviation: "no part" is tested directly
    (the reference treats an all-ignored column as already assigned).

    Examples:
        >>> assigner = PartAssigner()
        >>> assigner(torch.tensor([[0.9], [0.3], [0.6]]), torch.tensor([[0.2], [0.1], [0.7]]))
        tensor([[1],
                [0],
                [1]])
    """

    def __init__(
        self,
        *,
        pos_thr: float = 0.8,
        neg_thr: float = 0.5,
        min_pos_iou: float = 0.5,
        high_iou_part: bool = True,
        low_quality: bool = True,
    ) -> None:
        """Create the assigner.

        Args:
            pos_thr: Overlap at or above which a patch is a part (tau, 0.8).
            neg_thr: Overlap below which a patch is negative.
            min_pos_iou: Box IoU needed by the high-IoU-part and low-quality rules.
            high_iou_part: Enable the high-IoU-part rule.
            low_quality: Enable the low-quality rule.
        """
        self.pos_thr = check_unit_interval(pos_thr, name="pos_thr")
        self.neg_thr = check_unit_interval(neg_thr, name="neg_thr")
        self.min_pos_iou = check_unit_interval(min_pos_iou, name="min_pos_iou")
        self.high_iou_part = high_iou_part
        self.low_quality = low_quality

    def __call__(self, overlaps: Tensor, box_ious: Tensor) -> Tensor:
        """Assign.

        Args:
            overlaps: `min(IoP_box, IoP_mask)` `(N, G)`.
            box_ious: Box IoU `(N, G)`.

        Returns:
            Part labels `(N, G)` (long) in `{-1, 0, 1}`.
        """
        s = check_shape(overlaps, "N G", name="overlaps")
        check_shape(box_ious, "N G", name="box_ious", known=s)
        out = torch.full_like(overlaps, -1, dtype=torch.long)
        if s["N"] == 0 or s["G"] == 0:
            return out.fill_(0) if s["G"] == 0 else out
        out[overlaps < self.neg_thr] = 0
        out[overlaps >= self.pos_thr] = 1
        if self.high_iou_part:
            part_best = torch.where(out == 1, box_ious, torch.zeros_like(box_ious)).amax(0)
            out[(box_ious > part_best) & (box_ious > self.min_pos_iou)] = 1
        if self.low_quality:
            no_part = ~(out == 1).any(0)
            best_iou, best = box_ious.max(0)
            cols = no_part.nonzero().flatten()
            out[best[cols], cols] = (best_iou[cols] > self.min_pos_iou).long()
        return out

    def assign(
        self, patch_masks: Tensor, patch_boxes: Tensor, gt_masks: Tensor, gt_boxes: Tensor
    ) -> Tensor:
        """Compute the overlaps with `patch_overlaps` and assign; returns `(N, G)`."""
        return self(*patch_overlaps(patch_masks, patch_boxes, gt_masks, gt_boxes))


def _focal_costs(prob: Tensor, alpha: float, gamma: float) -> tuple[Tensor, Tensor]:
    eps = 1e-12
    neg = -(1 - prob + eps).log() * (1 - alpha) * prob.pow(gamma)
    pos = -(prob + eps).log() * alpha * (1 - prob).pow(gamma)
    return pos, neg


class HungarianPatchMatcher:
    """One-to-one matching of instance queries to ground-truth things (SAM-CP, spec section 5.2).

    Cost = 4 focal class cost + 2 mask-focal affinity cost (averaged over the ground truth's
    parts) + 2 dice cost + 2 box L1 + 2 (-GIoU), boxes being the merged boxes of the queries;
    solved with `scipy.optimize.linear_sum_assignment`.

    Examples:
        >>> matcher = HungarianPatchMatcher()
        >>> aff = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])
        >>> parts = torch.tensor([[0, 1], [1, 0]])
        >>> boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]])
        >>> q, g = matcher(torch.zeros(2, 3), aff, boxes, parts, torch.tensor([0, 1]),
        ...                boxes.flip(0))
        >>> q.tolist(), g.tolist()
        ([0, 1], [1, 0])
    """

    def __init__(
        self,
        *,
        class_cost: float = 4.0,
        affinity_cost: float = 2.0,
        dice_cost: float = 2.0,
        box_cost: float = 2.0,
        giou_cost: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        weighted: bool = True,
    ) -> None:
        """Create the matcher.

        Args:
            class_cost: Weight of the focal class cost.
            affinity_cost: Weight of the mask-focal affinity cost.
            dice_cost: Weight of the dice cost.
            box_cost: Weight of the L1 cost between normalised boxes.
            giou_cost: Weight of the negative-GIoU cost.
            alpha: Focal alpha.
            gamma: Focal gamma.
            weighted: Average the affinity cost over the ground truth's parts instead of all
                patches.
        """
        self.class_cost = class_cost
        self.affinity_cost = affinity_cost
        self.dice_cost = dice_cost
        self.box_cost = box_cost
        self.giou_cost = giou_cost
        self.alpha = check_unit_interval(alpha, name="alpha")
        if not gamma >= 0:
            raise ValueError(f"gamma: expected a number >= 0, got {gamma}")
        self.gamma = gamma
        self.weighted = weighted

    @torch.no_grad()
    def cost_matrix(
        self,
        class_logits: Tensor,
        affinity: Tensor,
        boxes: Tensor,
        parts: Tensor,
        gt_labels: Tensor,
        gt_boxes: Tensor,
    ) -> Tensor:
        """The matching cost.

        Args:
            class_logits: Thing-class logits of the instance queries `(Q, C)`.
            affinity: Affinity logits of the instance queries over the patches `(Q, N)`.
            boxes: Merged query boxes `(Q, 4)`, normalised `(x0, y0, x1, y1)`.
            parts: Part labels `(N, G)` from `PartAssigner` (-1 counts as 0).
            gt_labels: Ground-truth classes `(G,)`.
            gt_boxes: Ground-truth boxes `(G, 4)`, normalised `(x0, y0, x1, y1)`.

        Returns:
            Cost `(Q, G)`.
        """
        s = check_shape(affinity, "Q N", name="affinity")
        check_shape(class_logits, "Q C", name="class_logits", known=s)
        check_shape(parts, "N G", name="parts", known=s)
        pos, neg = _focal_costs(class_logits.sigmoid(), self.alpha, self.gamma)
        cost_cls = (pos - neg)[:, gt_labels]
        t = parts.clamp(min=0).T.to(affinity.dtype)  # g n
        apos, aneg = _focal_costs(affinity.sigmoid(), self.alpha, self.gamma)
        cost_aff = apos @ t.T + aneg @ (1 - t).T
        if self.weighted:
            cost_aff = cost_aff / t.sum(1).clamp(min=1)[None, :]
        else:
            cost_aff = cost_aff / max(s["N"], 1)
        cost_dice = pairwise_dice_loss(affinity, t, eps=1.0)
        cost_box = torch.cdist(boxes.to(affinity.dtype), gt_boxes.to(affinity.dtype), p=1)
        cost_giou = -generalized_box_iou(boxes.to(affinity.dtype), gt_boxes.to(affinity.dtype))
        return (
            self.class_cost * cost_cls
            + self.affinity_cost * cost_aff
            + self.dice_cost * cost_dice
            + self.box_cost * cost_box
            + self.giou_cost * cost_giou
        )

    def __call__(
        self,
        class_logits: Tensor,
        affinity: Tensor,
        boxes: Tensor,
        parts: Tensor,
        gt_labels: Tensor,
        gt_boxes: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Match; returns `(query_indices, gt_indices)`, each `(min(Q, G),)` (long).

        Arguments are those of `cost_matrix`.
        """
        q, g = affinity.shape[0], parts.shape[1]
        dev = affinity.device
        if q == 0 or g == 0:
            empty = torch.zeros(0, dtype=torch.long, device=dev)
            return empty, empty.clone()
        cost = self.cost_matrix(class_logits, affinity, boxes, parts, gt_labels, gt_boxes)
        cost_np = np.nan_to_num(cost.float().cpu().numpy(), nan=1e8, posinf=1e8, neginf=-1e8)
        rows, cols = linear_sum_assignment(cost_np)
        return (
            torch.as_tensor(rows, dtype=torch.long, device=dev),
            torch.as_tensor(cols, dtype=torch.long, device=dev),
        )

    def merged_boxes(
        self, affinity: Tensor, patch_boxes: Tensor, image_size: tuple[int, int]
    ) -> Tensor:
        """Normalised merged boxes `(Q, 4)` of affinity rows `(Q, N)` over pixel boxes `(N, 4)`."""
        h, w = image_size
        norm = patch_boxes / patch_boxes.new_tensor([w, h, w, h])
        return merge_boxes(affinity[None], norm[None])[0]


def build_patch_targets(
    patches: Patches,
    segment_masks: Tensor,
    segment_labels: Tensor,
    *,
    num_things: int,
    num_stuff: int,
    assigner: PartAssigner | None = None,
    stuff_thr: float = 0.8,
    valid_iou: float = 0.5,
) -> PatchTargets:
    """Training targets of one image from its patches and ground-truth segments.

    Thing segments get part labels from `assigner` and a validity flag (>= 1 part and the union
    box of the parts has IoU > `valid_iou` with the segment's box); stuff segments of the same
    class are merged and a patch is a part of stuff class `s` when `min(IoP_box, IoP_mask)` is
    strictly above `stuff_thr` (spec sections 5.1, 5.2).

    Args:
        patches: The image's patches (`N` of them).
        segment_masks: Ground-truth segment masks `(G, H, W)` (bool), things and stuff.
        segment_labels: Their classes `(G,)`: `< num_things` thing, else stuff.
        num_things: Number of thing classes.
        num_stuff: Number of stuff classes `S`.
        assigner: The part assigner (default `PartAssigner()`).
        stuff_thr: Overlap threshold for stuff parts.
        valid_iou: IoU threshold of the validity rule.

    Returns:
        `PatchTargets`.

    Raises:
        ValueError: On inconsistent shapes or sizes, non-binary masks, class ids outside
            `[0, num_things + num_stuff)` or thresholds outside `[0, 1]`.

    Examples:
        >>> m = torch.zeros(2, 8, 8, dtype=torch.bool); m[0, :, :4] = True; m[1, :, 4:] = True
        >>> p = Patches(m, torch.tensor([[0.0, 0, 4, 8], [4.0, 0, 8, 8]]), torch.ones(2))
        >>> t = build_patch_targets(p, m, torch.tensor([0, 1]), num_things=1, num_stuff=1)
        >>> t.thing_parts.T.tolist(), t.semantic_parts.tolist()
        ([[1, 0]], [[0.0, 1.0]])
    """
    s = check_shape(segment_masks, "G H W", name="segment_masks")
    check_shape(segment_labels, "G", name="segment_labels", known=s)
    masks = check_binary(segment_masks, name="segment_masks")
    h, w = patches.image_size
    if (s["H"], s["W"]) != (h, w):
        raise ValueError(
            f"segment_masks: expected the patches' image size ({h}, {w}), got ({s['H']}, {s['W']})"
        )
    if num_things < 0 or num_stuff < 0:
        raise ValueError(
            f"num_things, num_stuff: expected ints >= 0, got {num_things} and {num_stuff}"
        )
    if s["G"] > 0:
        first, last = int(segment_labels.min()), int(segment_labels.max())
        if first < 0 or last >= num_things + num_stuff:
            raise ValueError(
                f"segment_labels: expected class ids in [0, {num_things + num_stuff}) "
                f"(num_things + num_stuff), got values in [{first}, {last}]"
            )
    stuff_thr = check_unit_interval(stuff_thr, name="stuff_thr")
    valid_iou = check_unit_interval(valid_iou, name="valid_iou")
    assigner = assigner or PartAssigner()
    things = segment_labels < num_things
    t_masks, t_labels = masks[things], segment_labels[things].long()
    t_boxes = mask_boxes(t_masks)
    p_masks, p_boxes = patches.masks.bool(), patches.boxes.float()
    iop, iou = patch_overlaps(p_masks, p_boxes, t_masks, t_boxes)
    parts = assigner(iop, iou)
    is_part = parts == 1  # n g
    big = 1e9
    if len(p_boxes):
        lo = torch.where(is_part[..., None], p_boxes[:, None, :2], big).amin(0)
        hi = torch.where(is_part[..., None], p_boxes[:, None, 2:], -big).amax(0)
        union = torch.cat([lo, hi], -1)
    else:  # no patches (the proposer found nothing): no segment has a part
        union = t_boxes.new_zeros(len(t_boxes), 4)
    has_part = is_part.any(0)
    union = torch.where(has_part[:, None], union, torch.zeros_like(union))
    union_iou = box_iou(union, t_boxes).diagonal() if len(t_boxes) else t_boxes.new_zeros(0)
    valid = has_part & (union_iou > valid_iou)
    sem_masks = torch.zeros(num_stuff, h, w, dtype=torch.bool, device=masks.device)
    for m, lab in zip(masks[~things], segment_labels[~things], strict=True):
        sem_masks[int(lab) - num_things] |= m
    present = sem_masks.flatten(1).any(1)
    sem_iop, _ = patch_overlaps(p_masks, p_boxes, sem_masks, mask_boxes(sem_masks))
    sem_parts = (sem_iop > stuff_thr) & present[None, :]
    scale = p_boxes.new_tensor([w, h, w, h])
    return PatchTargets(
        thing_parts=parts,
        thing_labels=t_labels,
        thing_boxes=t_boxes / scale,
        thing_valid=valid,
        semantic_parts=sem_parts.T.float(),
        semantic_positive=present & sem_parts.any(0),
    )
