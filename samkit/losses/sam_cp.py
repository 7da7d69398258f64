"""SAM-CP training loss on every decoder layer (spec section 5.3).

Per layer and image: instance queries are matched to ground-truth things (Hungarian, spec 5.2);
the class loss is a sigmoid focal loss over the thing channels (matched queries get their class,
unmatched ones background, ignored matches weight 0); the affinity loss ("mask focal loss") is a
focal loss on the matched queries' affinity rows against the part labels, each row weighted by
1 / #parts; the dice loss compares each matched row with its parts. Semantic query `s` always
stands for stuff class `s`: a binary focal loss on its own class channel, plus the same affinity
and dice losses when the class is present.

Axis legend:
    l - decoder layers (L)
    k - queries (K)
    n - patches (N)
    t - classes (T)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from samkit._checks import check_shape, check_unit_interval
from samkit.losses._normalizer import normalizer
from samkit.losses.segmentation import dice_loss, sigmoid_focal_loss
from samkit.matching import HungarianPatchMatcher
from samkit.types import PatchTargets, SAMCPOutput

__all__ = ["SAMCPLoss", "sam_cp_loss"]

_KEYS = ("cls", "affinity", "dice", "sem_cls", "sem_affinity", "sem_dice")


def sam_cp_loss(
    output: SAMCPOutput,
    targets: list[PatchTargets],
    *,
    matcher: HungarianPatchMatcher | None = None,
    class_weight: float = 2.0,
    affinity_weight: float = 1.0,
    dice_weight: float = 1.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduce_counts: bool = False,
) -> dict[str, Tensor]:
    """SAM-CP loss summed over decoder layers.

    Only each image's real queries and patches enter the matching and the losses (padded slots,
    `output.padding_mask`, are dropped), so an image's terms do not depend on the other images
    of the batch; merged boxes are normalised by each image's own size (`output.sizes`).

    Args:
        output: Model outputs (`affinities (L, B, K, N)`, `class_logits (L, B, K, T)`).
        targets: One `PatchTargets` per image, built on the same (unpadded) patches.
        matcher: The Hungarian matcher (default `HungarianPatchMatcher()`).
        class_weight: Weight of the focal class losses (2.0).
        affinity_weight: Weight of the affinity focal losses (1.0).
        dice_weight: Weight of the dice losses (1.0).
        alpha: Focal alpha.
        gamma: Focal gamma.
        reduce_counts: Under DDP, sum the per-layer counts that normalise the terms (matched
            things, present stuff classes) over all ranks, as DETR does with `num_boxes`, so
            that `W` processes with batch `b` each take the step of one process with batch
            `W * b`. Every rank must then call the loss in step (as a training step does);
            without an initialised process group it changes nothing.

    Returns:
        Dict with `loss` (the weighted total) and the unweighted per-term sums over layers
        `cls`, `affinity`, `dice`, `sem_cls`, `sem_affinity`, `sem_dice`.

    Raises:
        ValueError: If the number of targets differs from the batch size, a target does not
            match its image's patch count or stuff classes, or `alpha` is outside `[0, 1]`.
    """
    num_layers, b = output.affinities.shape[:2]
    if len(targets) != b:
        raise ValueError(f"targets: expected {b} PatchTargets (one per image), got {len(targets)}")
    check_unit_interval(alpha, name="alpha")
    if not gamma >= 0:
        raise ValueError(f"gamma: expected a number >= 0, got {gamma}")
    for i, tgt in enumerate(targets):
        n = int((~output.padding_mask[i]).sum())
        check_shape(tgt.thing_parts, "N G", name=f"targets[{i}].thing_parts", known={"N": n})
        check_shape(
            tgt.semantic_parts,
            "S N",
            name=f"targets[{i}].semantic_parts",
            known={"S": output.num_semantic, "N": n},
        )
    matcher = matcher or HungarianPatchMatcher()
    zero = output.affinities.sum() * 0.0
    terms = {key: zero for key in _KEYS}
    for layer in range(num_layers):
        parts = _layer_terms(output, targets, layer, matcher, alpha, gamma, reduce_counts)
        terms = {key: terms[key] + parts[key] for key in _KEYS}
    weights = {
        "cls": class_weight,
        "affinity": affinity_weight,
        "dice": dice_weight,
        "sem_cls": class_weight,
        "sem_affinity": affinity_weight,
        "sem_dice": dice_weight,
    }
    total = sum((weights[k] * terms[k] for k in _KEYS), zero)
    return {"loss": total, **terms}


def _layer_terms(
    output: SAMCPOutput,
    targets: list[PatchTargets],
    layer: int,
    matcher: HungarianPatchMatcher,
    alpha: float,
    gamma: float,
    reduce_counts: bool,
) -> dict[str, Tensor]:
    s, c = output.num_semantic, output.num_things
    zero = output.affinities.sum() * 0.0
    sums = {key: zero for key in _KEYS}
    num_matched, num_sem_pos = 0, 0  # the class loss is normalised by the matches too
    sizes = output.sizes
    query_valid = ~output.query_padding_mask
    for i, tgt in enumerate(targets):
        valid = ~output.padding_mask[i]
        aff = output.affinities[layer, i][query_valid[i]][:, valid]  # real queries x patches
        logits = output.class_logits[layer, i][query_valid[i]]
        inst_aff, inst_cls = aff[s:], logits[s:, :c]
        boxes = matcher.merged_boxes(inst_aff.detach(), output.patch_boxes[i][valid], sizes[i])
        q_idx, g_idx = matcher(
            inst_cls.detach(),
            inst_aff.detach(),
            boxes,
            tgt.thing_parts,
            tgt.thing_labels,
            tgt.thing_boxes,
        )
        keep = tgt.thing_valid[g_idx]
        ignored = q_idx[~keep]
        q_idx, g_idx = q_idx[keep], g_idx[keep]
        cls_target = torch.zeros_like(inst_cls)
        cls_target[q_idx, tgt.thing_labels[g_idx]] = 1.0
        cls_weight = torch.ones_like(inst_cls[:, :1])
        cls_weight[ignored] = 0.0
        fl = sigmoid_focal_loss(inst_cls, cls_target, alpha=alpha, gamma=gamma, reduction="none")
        sums["cls"] = sums["cls"] + (fl * cls_weight).sum()
        num_matched += len(q_idx)
        part_rows = tgt.thing_parts[:, g_idx].T  # m n
        a_loss, d_loss = _affinity_terms(inst_aff[q_idx], part_rows, alpha, gamma)
        sums["affinity"] = sums["affinity"] + a_loss
        sums["dice"] = sums["dice"] + d_loss
        sem_logits = torch.diagonal(logits[:s, c : c + s]) if s > 0 else logits.new_zeros(0)
        sem_t = tgt.semantic_positive.to(sem_logits.dtype)
        sfl = sigmoid_focal_loss(sem_logits, sem_t, alpha=alpha, gamma=gamma, reduction="sum")
        sums["sem_cls"] = sums["sem_cls"] + sfl
        pos = tgt.semantic_positive.nonzero().flatten()
        num_sem_pos += len(pos)
        a_loss, d_loss = _affinity_terms(aff[pos], tgt.semantic_parts[pos], alpha, gamma)
        sums["sem_affinity"] = sums["sem_affinity"] + a_loss
        sums["sem_dice"] = sums["sem_dice"] + d_loss
    things = normalizer(num_matched, like=zero, reduce_counts=reduce_counts)
    stuff = normalizer(num_sem_pos, like=zero, reduce_counts=reduce_counts)
    norm = {
        "cls": things,
        "affinity": things,
        "dice": things,
        "sem_cls": stuff,
        "sem_affinity": stuff,
        "sem_dice": stuff,
    }
    return {key: sums[key] / norm[key] for key in _KEYS}


def _affinity_terms(
    affinity: Tensor, parts: Tensor, alpha: float, gamma: float
) -> tuple[Tensor, Tensor]:
    """Summed affinity focal loss (rows weighted by 1/#parts, -1 entries ignored) and dice."""
    if affinity.shape[0] == 0 or affinity.shape[1] == 0:
        zero = affinity.sum() * 0.0
        return zero, zero
    valid = (parts >= 0).to(affinity.dtype)
    target = parts.clamp(min=0).to(affinity.dtype)
    weight = valid / target.sum(1, keepdim=True).clamp(min=1)
    fl = sigmoid_focal_loss(affinity, target, alpha=alpha, gamma=gamma, reduction="none")
    dl = dice_loss(affinity, target, spatial_dims=1, eps=1.0, reduction="sum")
    return (fl * weight).sum(), dl


class SAMCPLoss(nn.Module):
    """Module form of `sam_cp_loss`.

    Examples:
        >>> from samkit.types import PatchTargets, SAMCPOutput
        >>> out = SAMCPOutput(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2),
        ...                   torch.tensor([[[0.0, 0, 4, 4], [4.0, 0, 8, 4]]]),
        ...                   torch.zeros(1, 2, dtype=torch.bool), 1, 1, (4, 8))
        >>> tgt = PatchTargets(torch.tensor([[1], [0]]), torch.tensor([0]),
        ...                    torch.tensor([[0.0, 0, 0.5, 1]]), torch.tensor([True]),
        ...                    torch.tensor([[0.0, 1.0]]), torch.tensor([True]))
        >>> SAMCPLoss()(out, [tgt])["loss"].item() > 0
        True
    """

    def __init__(
        self,
        *,
        matcher: HungarianPatchMatcher | None = None,
        class_weight: float = 2.0,
        affinity_weight: float = 1.0,
        dice_weight: float = 1.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        reduce_counts: bool = False,
    ) -> None:
        """Create the loss; see `sam_cp_loss` for the arguments."""
        super().__init__()
        self.matcher = matcher or HungarianPatchMatcher()
        self.class_weight = class_weight
        self.affinity_weight = affinity_weight
        self.dice_weight = dice_weight
        self.alpha = alpha
        self.gamma = gamma
        self.reduce_counts = reduce_counts

    def forward(self, output: SAMCPOutput, targets: list[PatchTargets]) -> dict[str, Tensor]:
        """Compute the loss dict; see `sam_cp_loss`."""
        return sam_cp_loss(
            output,
            targets,
            matcher=self.matcher,
            class_weight=self.class_weight,
            affinity_weight=self.affinity_weight,
            dice_weight=self.dice_weight,
            alpha=self.alpha,
            gamma=self.gamma,
            reduce_counts=self.reduce_counts,
        )
