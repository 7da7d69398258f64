"""Patch merging and MaskFormer-style panoptic fusion (SAM-CP, spec sections 3.4 and 6).

A query's output is the union of the patches whose min-max normalised affinity exceeds 0.5. The
same rule gives the merged box used as the next decoder layer's query position.

Axis legend:
    b - images (B)
    k - queries (K)
    n - patches (N)
    t - classes (T)
    hw - pixels (H, W)
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from samkit._checks import (
    check_binary,
    check_positive,
    check_probabilities,
    check_shape,
    check_unit_interval,
)
from samkit.types import PanopticResult

__all__ = [
    "PanopticFusion",
    "merge_boxes",
    "merge_patches",
    "normalize_affinity",
    "query_candidates",
    "select_instances",
]


def normalize_affinity(affinity: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """Per-query min-max normalisation of `sigmoid(affinity)` over the valid patches.

    Follows SAM-CP's `with_score_norm`: `(a - min) / (max - min)` along the patch axis. A row
    whose valid values are all equal normalises to 1 (every patch is selected); padded patches
    get 0.

    Args:
        affinity: Affinity logits `(..., K, N)`.
        padding_mask: `(..., N)` bool, True at padded patches, or `None`.

    Returns:
        Normalised affinities in `[0, 1]`, `(..., K, N)`.

    Examples:
        >>> normalize_affinity(torch.tensor([[0.0, 2.0, -2.0]]))
        tensor([[0.5000, 1.0000, 0.0000]])
    """
    a = affinity.sigmoid()
    if a.shape[-1] == 0:
        return a
    if padding_mask is None:
        lo = a.amin(-1, keepdim=True)
        hi = a.amax(-1, keepdim=True)
        pad = None
    else:
        pad = padding_mask.unsqueeze(-2).expand_as(a)
        lo = a.masked_fill(pad, float("inf")).amin(-1, keepdim=True)
        hi = a.masked_fill(pad, float("-inf")).amax(-1, keepdim=True)
    span = hi - lo
    flat = span <= torch.finfo(a.dtype).tiny
    out = torch.where(flat, torch.ones_like(a), (a - lo) / torch.where(flat, 1.0, span))
    if pad is not None:
        out = out.masked_fill(pad, 0.0)
    return out


def merge_patches(
    affinity: Tensor,
    patch_masks: Tensor,
    padding_mask: Tensor | None = None,
    *,
    threshold: float = 0.5,
) -> Tensor:
    """Merge patches into one mask per query: the union of patches with normalised affinity > 0.5.

    Args:
        affinity: Affinity logits `(B, K, N)`.
        patch_masks: Binary patch masks `(B, N, H, W)`.
        padding_mask: `(B, N)` bool, True at padded patches, or `None`.
        threshold: Selection threshold on the normalised affinity.

    Returns:
        Merged masks `(B, K, H, W)` (bool).

    Raises:
        ValueError: If the shapes disagree, `patch_masks` is not binary or `threshold` is outside
            `[0, 1]`.

    Examples:
        >>> masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool); masks[0, 0, :2] = True
        >>> masks[0, 1, 2:] = True
        >>> merge_patches(torch.tensor([[[3.0, -3.0], [2.0, 2.0]]]), masks).sum((-1, -2))
        tensor([[ 8, 16]])
    """
    s = check_shape(affinity, "B K N", name="affinity")
    check_shape(patch_masks, "B N H W", name="patch_masks", known={"B": s["B"], "N": s["N"]})
    patch_masks = check_binary(patch_masks, name="patch_masks")
    threshold = check_unit_interval(threshold, name="threshold")
    selected = (normalize_affinity(affinity, padding_mask) > threshold).to(torch.float32)
    flat = rearrange(patch_masks, "b n h w -> b n (h w)").to(torch.float32)
    merged = torch.bmm(selected, flat) > 0
    return rearrange(merged, "b k (h w) -> b k h w", h=patch_masks.shape[-2])


def merge_boxes(
    affinity: Tensor,
    patch_boxes: Tensor,
    padding_mask: Tensor | None = None,
    *,
    threshold: float = 0.5,
    canvas: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
) -> Tensor:
    """Union box of the patches selected by each query (the merged-box rule of SAM-CP).

    Args:
        affinity: Affinity logits `(B, K, N)`.
        patch_boxes: Patch boxes `(B, N, 4)` as `(x0, y0, x1, y1)` (any consistent unit).
        padding_mask: `(B, N)` bool, True at padded patches, or `None`. Padded patches are
            never selected (the reference includes their zero boxes; irrelevant at batch 1).
        threshold: Selection threshold on the normalised affinity.
        canvas: Box returned for a query that selects no patch.

    Returns:
        Merged boxes `(B, K, 4)`, `(x0, y0, x1, y1)`.

    Examples:
        >>> boxes = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 4.0, 3.0]]])
        >>> merge_boxes(torch.tensor([[[5.0, 5.0]]]), boxes)
        tensor([[[0., 0., 4., 3.]]])
    """
    s = check_shape(affinity, "B K N", name="affinity")
    check_shape(patch_boxes, "B N 4", name="patch_boxes", known={"B": s["B"], "N": s["N"]})
    threshold = check_unit_interval(threshold, name="threshold")
    fill = torch.tensor(canvas, dtype=patch_boxes.dtype, device=patch_boxes.device)
    if s["N"] == 0:
        return fill.expand(s["B"], s["K"], 4).clone()
    sel = (normalize_affinity(affinity, padding_mask) > threshold).unsqueeze(-1)  # b k n 1
    boxes = patch_boxes.unsqueeze(1)  # b 1 n 4
    big = torch.finfo(patch_boxes.dtype).max
    lo = torch.where(sel, boxes[..., :2], big).amin(2)
    hi = torch.where(sel, boxes[..., 2:], -big).amax(2)
    out = torch.cat([lo, hi], -1)
    empty = ~sel.any(2)  # b k 1
    return torch.where(empty, fill, out)


def query_candidates(
    class_probs: Tensor,
    affinity: Tensor,
    *,
    num_semantic: int,
    num_things: int,
    affinity_threshold: float = 0.3,
) -> tuple[Tensor, Tensor, Tensor]:
    """Score and label every query of one image for panoptic fusion (SAM-CP, spec section 6).

    Semantic query `s` is stuff class `num_things + s` with score `p[s, num_things + s]`; an
    instance query takes its best thing class. A query is valid when its largest affinity
    probability exceeds `affinity_threshold`. With no thing classes (`num_things = 0`) instance
    queries get score 0, label 0 and are never valid.

    Args:
        class_probs: Class probabilities `(K, T)`, queries ordered `[S semantic, instances]`.
        affinity: Affinity logits `(K, N)` over the image's valid patches.
        num_semantic: Number of semantic queries `S`.
        num_things: Number of thing classes.
        affinity_threshold: Minimum peak affinity probability.

    Returns:
        `(scores (K,), labels (K,), valid (K,))`.

    Raises:
        ValueError: On inconsistent shapes, `class_probs` outside `[0, 1]`, or `num_semantic` /
            `num_things` that do not fit `K` / `T`.

    Examples:
        >>> probs = torch.tensor([[0.1, 0.2, 0.9], [0.7, 0.3, 0.5]])
        >>> s, l, v = query_candidates(probs, torch.tensor([[2.0], [-2.0]]), num_semantic=1,
        ...                            num_things=2)
        >>> s.tolist(), l.tolist(), v.tolist()
        ([0.8999999761581421, 0.699999988079071], [2, 0], [True, False])
    """
    s = check_shape(class_probs, "K T", name="class_probs")
    check_shape(affinity, "K N", name="affinity", known={"K": s["K"]})
    check_probabilities(class_probs, name="class_probs")
    affinity_threshold = check_unit_interval(affinity_threshold, name="affinity_threshold")
    if not 0 <= num_semantic <= s["K"]:
        raise ValueError(f"num_semantic: expected 0..{s['K']} (K), got {num_semantic}")
    if not 0 <= num_things or num_things + num_semantic > s["T"]:
        raise ValueError(
            f"num_things: expected 0..{s['T'] - num_semantic} (T - num_semantic), got {num_things}"
        )
    idx = torch.arange(num_semantic, device=class_probs.device)
    sem_scores = class_probs[idx, num_things + idx]
    inst = class_probs[num_semantic:, :num_things]
    if num_things > 0:
        inst_scores, inst_labels = inst.max(-1)
    else:
        inst_scores = class_probs.new_zeros(inst.shape[0])
        inst_labels = torch.zeros(inst.shape[0], dtype=torch.long, device=class_probs.device)
    scores = torch.cat([sem_scores, inst_scores])
    labels = torch.cat([num_things + idx, inst_labels])
    if affinity.shape[1] == 0:
        valid = torch.zeros_like(scores, dtype=torch.bool)
    else:
        valid = affinity.sigmoid().amax(-1) > affinity_threshold
    if num_things == 0:
        valid[num_semantic:] = False
    return scores, labels, valid


def select_instances(
    class_probs: Tensor, masks: Tensor, *, max_per_image: int = 100
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-scoring (query, class) pairs as instance results (SAM-CP's instance branch).

    Args:
        class_probs: Thing-class probabilities of the instance queries `(K, T)` (only real
            queries: padded ones would compete for the top `max_per_image`). `T = 0` (no thing
            classes) gives no instance.
        masks: Merged query masks `(K, H, W)` (bool).
        max_per_image: How many (query, class) pairs to keep.

    Returns:
        `(masks (M, H, W), scores (M,), labels (M,))`, sorted by decreasing score.

    Raises:
        ValueError: On inconsistent shapes, probabilities outside `[0, 1]` or
            `max_per_image < 1`.

    Examples:
        >>> masks = torch.ones(1, 2, 2, dtype=torch.bool)
        >>> m, s, l = select_instances(torch.tensor([[0.9, 0.1]]), masks, max_per_image=1)
        >>> s, l
        (tensor([0.9000]), tensor([0]))
    """
    s = check_shape(class_probs, "K T", name="class_probs")
    check_shape(masks, "K H W", name="masks", known={"K": s["K"]})
    check_probabilities(class_probs, name="class_probs")
    check_positive(max_per_image, name="max_per_image")
    k, t = s["K"], s["T"]
    top = min(max_per_image, k * t)
    scores, idx = class_probs.flatten().topk(top)
    query = torch.div(idx, max(t, 1), rounding_mode="floor")
    return masks[query].bool(), scores, idx % max(t, 1)


class PanopticFusion(nn.Module):
    """MaskFormer-style fusion of scored query masks into panoptic and semantic maps.

    Keeps candidates whose score exceeds `object_mask_threshold` (and whose affinity peak is
    valid), assigns each pixel to the candidate with the highest `score * mask`, drops segments
    that keep less than `overlap_threshold` of their mask, merges stuff segments of the same class,
    and numbers thing instances separately. Follows SAM-CP, spec section 6. Deviation: the
    kept-area ratio counts only pixels inside the candidate's own mask (the reference also counts
    pixels where every probability is 0, which all go to candidate 0).

    Examples:
        >>> fusion = PanopticFusion(num_things=1)
        >>> masks = torch.zeros(2, 4, 4, dtype=torch.bool); masks[0, :2] = True; masks[1, 2:] = True
        >>> out = fusion(torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), masks)
        >>> out.panoptic.unique().tolist(), [s["category_id"] for s in out.segments]
        ([1, 2], [0, 1])
    """

    def __init__(
        self,
        *,
        num_things: int,
        object_mask_threshold: float = 0.3,
        overlap_threshold: float = 0.8,
        max_per_image: int = 100,
        void_label: int = 255,
    ) -> None:
        """Create the fusion.

        Args:
            num_things: Classes `[0, num_things)` are things, the rest stuff (0: stuff only).
            object_mask_threshold: Minimum candidate score, in `[0, 1]`.
            overlap_threshold: Minimum fraction of its mask a segment must keep, in `[0, 1]`.
            max_per_image: Candidates kept (top scores) before fusion.
            void_label: Semantic label of unassigned pixels.

        Raises:
            ValueError: On a threshold outside `[0, 1]`, `num_things < 0` or
                `max_per_image < 1`.
        """
        super().__init__()
        if num_things < 0:
            raise ValueError(f"num_things: expected an int >= 0, got {num_things}")
        self.num_things = num_things
        self.object_mask_threshold = check_unit_interval(
            object_mask_threshold, name="object_mask_threshold"
        )
        self.overlap_threshold = check_unit_interval(overlap_threshold, name="overlap_threshold")
        self.max_per_image = check_positive(max_per_image, name="max_per_image")
        self.void_label = void_label

    def forward(
        self,
        scores: Tensor,
        labels: Tensor,
        masks: Tensor,
        valid: Tensor | None = None,
        *,
        instances: tuple[Tensor, Tensor, Tensor] | None = None,
        num_things: int | None = None,
    ) -> PanopticResult:
        """Fuse candidates of one image.

        Args:
            scores: Candidate scores `(K,)`.
            labels: Candidate class ids `(K,)`.
            masks: Candidate masks `(K, H, W)` (bool).
            valid: Optional `(K,)` bool; False drops a candidate (e.g. affinity peak <= 0.3).
            instances: Optional precomputed instance results `(masks, scores, labels)`; by
                default the kept thing segments are returned as instances.
            num_things: Overrides the module's `num_things` for this call (a custom
                vocabulary).

        Returns:
            A `PanopticResult`.

        Raises:
            ValueError: If the shapes disagree or `masks` is not binary.
        """
        s = check_shape(masks, "K H W", name="masks")
        check_shape(scores, "K", name="scores", known=s)
        check_shape(labels, "K", name="labels", known=s)
        if valid is not None:
            check_shape(valid, "K", name="valid", known=s)
        masks = check_binary(masks, name="masks")
        num_things = self.num_things if num_things is None else num_things
        h, w = s["H"], s["W"]
        keep = scores > self.object_mask_threshold
        if valid is not None:
            keep = keep & valid
        idx = keep.nonzero().flatten()
        idx = idx[scores[idx].argsort(descending=True)[: self.max_per_image]]
        sc, lb, mk = scores[idx], labels[idx], masks[idx].bool()
        panoptic = torch.zeros(h, w, dtype=torch.long, device=masks.device)
        semantic = torch.full_like(panoptic, self.void_label)
        segments: list[dict] = []
        if len(idx) > 0:
            prob = sc[:, None, None] * mk
            owner = prob.argmax(0)
            stuff_ids: dict[int, int] = {}
            for k in range(len(idx)):
                area_mask = int(mk[k].sum())
                region = (owner == k) & mk[k]
                area = int(region.sum())
                if area_mask == 0 or area == 0 or area / area_mask < self.overlap_threshold:
                    continue
                cat = int(lb[k])
                isthing = cat < num_things
                if not isthing and cat in stuff_ids:
                    seg_id = stuff_ids[cat]
                    segments[seg_id - 1]["area"] += area
                else:
                    seg_id = len(segments) + 1
                    segments.append(
                        {
                            "id": seg_id,
                            "category_id": cat,
                            "isthing": isthing,
                            "score": float(sc[k]),
                            "area": area,
                        }
                    )
                    if not isthing:
                        stuff_ids[cat] = seg_id
                panoptic[region] = seg_id
                semantic[region] = cat
        if instances is None:
            things = [sg for sg in segments if sg["isthing"]]
            inst_masks = torch.stack([panoptic == sg["id"] for sg in things]) if things else None
            instances = (
                inst_masks
                if inst_masks is not None
                else torch.zeros(0, h, w, dtype=torch.bool, device=masks.device),
                torch.tensor([sg["score"] for sg in things], device=masks.device),
                torch.tensor([sg["category_id"] for sg in things], device=masks.device).long(),
            )
        return PanopticResult(
            panoptic=panoptic,
            segments=segments,
            semantic=semantic,
            instance_masks=instances[0],
            instance_scores=instances[1],
            instance_labels=instances[2],
        )
