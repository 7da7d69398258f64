"""SAM-MI's Shallow Mask Aggregation (SMAgg) and the point-prompt mask proposals it consumes.

SMAgg merges over-segmented SAM masks: each SAM mask joins the text mask `M^text_k` that covers
more than `alpha` of it (eq. 6), the members of each text mask are united (eq. 7), and SAM masks
that join nothing stay as they are. Because `M^text` lives on the coarse cost grid, the overlaps
are computed exactly by area-pooling the SAM masks onto that grid and one `(N_s x hw) @ (hw x K)`
product, never materialising `N_s x K x H x W`. Spec `sam-mi.md` §3.3.

Axis legend (einops): b - images (B), n - SAM masks (N_s), k - classes (K or T), h w - grids.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from samkit._checks import check_binary, check_positive, check_shape, check_unit_interval

__all__ = [
    "ShallowMaskAggregator",
    "mask_text_overlap",
    "match_masks_to_text",
    "pad_masks",
    "point_masks",
    "shallow_mask_aggregation",
]

_CHUNK_ELEMS = 1 << 24  # float elements per chunk when pooling masks (64 MB)


def _cell_counts(masks: Tensor, h: int, w: int) -> Tensor:
    """Pixels of each mask in every cell of the `h x w` grid that nearest-upsampling defines."""
    n, big_h, big_w = masks.shape
    chunk = max(1, _CHUNK_ELEMS // max(1, big_h * big_w))
    out = []
    divisible = big_h % h == 0 and big_w % w == 0
    if not divisible:
        rows = torch.div(torch.arange(big_h, device=masks.device) * h, big_h, rounding_mode="floor")
        cols = torch.div(torch.arange(big_w, device=masks.device) * w, big_w, rounding_mode="floor")
        r = F.one_hot(rows, h).float()  # (H, h)
        c = F.one_hot(cols, w).float()  # (W, w)
    for start in range(0, n, chunk):
        m = masks[start : start + chunk].float()
        if divisible:
            out.append(reduce(m, "n (h i) (w j) -> n h w", "sum", h=h, w=w))
        else:
            out.append(torch.einsum("nHW,Hh,Ww->nhw", m, r, c))
    if not out:
        return masks.new_zeros((0, h, w), dtype=torch.float32)
    return torch.cat(out)


def _check_grids(big_h: int, big_w: int, h: int, w: int) -> None:
    """`text_masks` `(h, w)` must be no finer than `sam_masks` `(H, W)` on both axes."""
    if h > big_h or w > big_w:
        raise ValueError(
            f"text_masks: expected a grid no finer than sam_masks' (H, W) = {(big_h, big_w)}, "
            f"got (h, w) = {(h, w)}"
        )


def mask_text_overlap(sam_masks: Tensor, text_masks: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Matching scores `O(i, k) = |M_i^sam & M_k^text| / (|M_i^sam| + eps)` (SAM-MI eq. 6).

    `text_masks` are taken at their grid resolution and upsampled to the SAM masks' size by
    nearest neighbour (pixel `y` falls in cell `floor(y * h / H)`); the intersection is computed
    exactly from per-cell pixel counts.

    Args:
        sam_masks: SAM masks `(N_s, H, W)` (bool or {0, 1}).
        text_masks: Text masks `(K, h, w)` (bool or {0, 1}) with `h <= H`, `w <= W`.
        eps: Added to the denominator.

    Returns:
        Scores `(N_s, K)` in `[0, 1]` (float32).

    Raises:
        ValueError: If a mask set is not binary or `text_masks` is finer than `sam_masks`.

    Examples:
        >>> sam = torch.zeros(1, 4, 4, dtype=torch.bool); sam[0, :, :3] = True
        >>> text = torch.tensor([[[1, 0], [1, 0]], [[0, 1], [0, 1]]]).bool()
        >>> mask_text_overlap(sam, text, eps=0.0)
        tensor([[0.6667, 0.3333]])
    """
    s = check_shape(sam_masks, "N H W", name="sam_masks")
    t = check_shape(text_masks, "K h w", name="text_masks")
    _check_grids(s["H"], s["W"], t["h"], t["w"])
    sam_masks = check_binary(sam_masks, name="sam_masks")
    text_masks = check_binary(text_masks, name="text_masks")
    counts = _cell_counts(sam_masks, t["h"], t["w"]).flatten(1)  # (N_s, hw)
    inter = counts @ text_masks.flatten(1).float().T  # (N_s, K)
    return inter / (counts.sum(dim=1, keepdim=True) + eps)


def match_masks_to_text(
    sam_masks: Tensor, text_masks: Tensor, *, alpha: float = 0.5, eps: float = 1e-6
) -> Tensor:
    """Text mask each SAM mask joins (eq. 7's `[O(i, k) > alpha]`), or -1.

    A SAM mask joins its best-matching text mask when that score exceeds `alpha`. With disjoint
    text masks and `alpha >= 0.5` at most one score can exceed `alpha`, so this is exactly eq. 7;
    for smaller `alpha` the arg-max keeps the one-level tree of the paper's figure (each SAM mask
    links to at most one text mask).

    Args:
        sam_masks: SAM masks `(N_s, H, W)`.
        text_masks: Text masks `(K, h, w)`.
        alpha: Aggregation threshold `alpha_sma`.
        eps: Denominator guard of eq. 6.

    Returns:
        Text-mask index per SAM mask `(N_s,)` (long), -1 where none.

    Raises:
        ValueError: If `alpha` is outside `[0, 1]`, or as `mask_text_overlap`.

    Examples:
        >>> sam = torch.zeros(2, 4, 4, dtype=torch.bool); sam[0, :, :3] = True; sam[1, :, 2:] = 1
        >>> text = torch.tensor([[[1, 0], [1, 0]], [[0, 1], [0, 1]]]).bool()
        >>> match_masks_to_text(sam, text).tolist()
        [0, 1]
    """
    check_unit_interval(alpha, name="alpha")
    overlap = mask_text_overlap(sam_masks, text_masks, eps=eps)
    if overlap.shape[1] == 0:
        return torch.full((overlap.shape[0],), -1, dtype=torch.long, device=overlap.device)
    best = overlap.max(dim=1)
    return torch.where(best.values > alpha, best.indices, torch.full_like(best.indices, -1))


def shallow_mask_aggregation(
    sam_masks: Tensor,
    text_masks: Tensor,
    *,
    alpha: float = 0.5,
    eps: float = 1e-6,
    return_index: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Merge SAM masks that fall in the same text mask (SAM-MI eq. 6-7).

    Output order: one aggregate per text mask that received members (ascending text index), then
    the SAM masks that joined nothing, in input order. Empty outputs (an aggregate or SAM mask with
    no pixels) are dropped. The result does not depend on the order of the SAM masks (up to the
    order of the unaggregated ones).

    Args:
        sam_masks: SAM masks `(N_s, H, W)` (bool or {0, 1}).
        text_masks: Text masks `(K, h, w)` on the coarse grid.
        alpha: Aggregation threshold `alpha_sma`.
        eps: Denominator guard of eq. 6.
        return_index: Also return, per SAM mask, the output row that contains it (-1 if dropped
            because empty).

    Returns:
        Aggregated masks `(N_m, H, W)` (bool, `N_m <= N_s`), and the index `(N_s,)` if asked.

    Raises:
        ValueError: If a mask set is not binary, `text_masks` is finer than `sam_masks` or
            `alpha` is outside `[0, 1]`.

    Examples:
        >>> sam = torch.zeros(3, 4, 4, dtype=torch.bool)
        >>> sam[0, :2, :2] = sam[1, 2:, :2] = sam[2, :, 2:] = True
        >>> text = torch.tensor([[[1, 0], [1, 0]], [[0, 0], [0, 0]]]).bool()
        >>> out = shallow_mask_aggregation(sam, text)
        >>> out.shape, out[0, :, :2].all().item(), torch.equal(out[1], sam[2])
        (torch.Size([2, 4, 4]), True, True)
    """
    assign = match_masks_to_text(sam_masks, text_masks, alpha=alpha, eps=eps)
    n = sam_masks.shape[0]
    k = text_masks.shape[0]
    # group ids: text index for aggregated masks, k + i for unaggregated mask i
    group = torch.where(assign >= 0, assign, k + torch.arange(n, device=assign.device))
    uniq, inverse = torch.unique(group, sorted=True, return_inverse=True)
    binary = sam_masks.bool()
    out = binary.new_zeros((len(uniq), *binary.shape[1:]))
    for row in range(len(uniq)):
        out[row] = binary[inverse == row].any(dim=0)
    nonempty = out.flatten(1).any(dim=1)
    out = out[nonempty]
    if not return_index:
        return out
    new_row = torch.cumsum(nonempty.long(), 0) - 1
    index = torch.where(nonempty[inverse], new_row[inverse], torch.full_like(inverse, -1))
    return out, index


def pad_masks(masks: list[Tensor]) -> Tensor:
    """Stack per-image mask sets `(N_i, H, W)` into `(B, max N_i, H, W)`, padding with empty masks.

    Args:
        masks: One bool tensor `(N_i, H, W)` per image (same `H, W`).

    Returns:
        `(B, N, H, W)` bool; padded slots are all False (a zero-area mask means "no mask").

    Raises:
        ValueError: If `masks` is empty or the images' masks differ in `(H, W)`.

    Examples:
        >>> pad_masks([torch.ones(2, 3, 3, dtype=torch.bool), torch.ones(0, 3, 3).bool()]).shape
        torch.Size([2, 2, 3, 3])
    """
    if not masks:
        raise ValueError("masks: expected at least one image's (N_i, H, W) masks, got none")
    s = check_shape(masks[0], "N H W", name="masks[0]")
    for i, m in enumerate(masks[1:], start=1):
        check_shape(m, "N H W", name=f"masks[{i}]", known={"H": s["H"], "W": s["W"]})
    n = max(m.shape[0] for m in masks)
    out = masks[0].new_zeros((len(masks), n, *masks[0].shape[1:]), dtype=torch.bool)
    for i, m in enumerate(masks):
        out[i, : m.shape[0]] = m.bool()
    return out


class ShallowMaskAggregator(nn.Module):
    """Batched, padded `shallow_mask_aggregation` (parameter-free).

    Examples:
        >>> agg = ShallowMaskAggregator(alpha=0.5)
        >>> sam = torch.zeros(2, 3, 8, 8, dtype=torch.bool); sam[:, 0, :4] = sam[:, 1, 4:] = True
        >>> text = torch.zeros(2, 2, 2, 2, dtype=torch.bool); text[:, 0] = True
        >>> agg(sam, text).shape  # per image: both SAM masks join class 0
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, *, alpha: float = 0.5, eps: float = 1e-6) -> None:
        """Create the aggregator.

        Args:
            alpha: Aggregation threshold `alpha_sma` (paper: 0.5).
            eps: Denominator guard of eq. 6.
        """
        super().__init__()
        check_unit_interval(alpha, name="alpha")
        self.alpha, self.eps = alpha, eps

    def forward(self, sam_masks: Tensor, text_masks: Tensor) -> Tensor:
        """Aggregate each image's SAM masks.

        Args:
            sam_masks: Binary SAM masks `(B, N_s, H, W)`; all-False masks are padding.
            text_masks: Binary text masks `(B, K, h, w)`, no finer than the SAM masks.

        Returns:
            Aggregated masks `(B, N_m, H, W)` (bool), padded with all-False masks; `(0, 0, H, W)`
            for an empty batch.

        Raises:
            ValueError: If the batch sizes differ, a mask set is not binary or `text_masks` is
                finer than `sam_masks`.
        """
        s = check_shape(sam_masks, "B N H W", name="sam_masks")
        t = check_shape(text_masks, "B K h w", name="text_masks", known={"B": s["B"]})
        _check_grids(s["H"], s["W"], t["h"], t["w"])
        if s["B"] == 0:
            return torch.zeros(0, 0, s["H"], s["W"], dtype=torch.bool, device=sam_masks.device)
        per_image = [
            shallow_mask_aggregation(m, t, alpha=self.alpha, eps=self.eps)
            for m, t in zip(sam_masks, text_masks, strict=True)
        ]
        return pad_masks(per_image)  # type: ignore[arg-type]


def point_masks(
    sam: Any,
    embedding: Any,
    points: Tensor,
    valid: Tensor,
    *,
    size: tuple[int, int],
    batch_size: int = 64,
) -> Tensor:
    """One SAM mask per point prompt, at `size`, for a `SamLike` backend.

    Each point prompts SAM alone (`predict_points`, multimask); the candidate with the highest
    predicted IoU is kept (the [open] choice, documented default). The low-resolution logits are
    sampled bilinearly at the centres of the `size` pixels mapped into the unpadded image region
    (one interpolation instead of SAM's upsample-crop-resize, so memory stays `N x H' x W'`) and
    thresholded at the backend's `mask_threshold`; padded points give empty masks.

    Args:
        sam: A `SamLike` backend (`samkit.backbones.sam.SamBackbone` or compatible).
        embedding: Its `ImageEmbedding` of the `B` images.
        points: Points `(B, N, 2)` in SAM's input frame.
        valid: `(B, N)` bool; False marks padding.
        size: `(H', W')` of the returned masks (aligned with the original image).
        batch_size: Points decoded at once per image.

    Returns:
        Masks `(B, N, H', W')` (bool).

    Raises:
        ValueError: On mismatched shapes, a non-binary `valid`, a `size` or `batch_size` below 1.
    """
    s = check_shape(points, "B N 2", name="points")
    check_shape(valid, "B N", name="valid", known=s)
    valid = check_binary(valid, name="valid")
    check_positive(int(size[0]), name="size[0]")
    check_positive(int(size[1]), name="size[1]")
    check_positive(batch_size, name="batch_size")
    if s["N"] == 0 or s["B"] == 0:
        return torch.zeros(s["B"], s["N"], *size, dtype=torch.bool, device=points.device)
    pred = sam.predict_points(embedding, points, batch_size=batch_size, multimask=True).best()
    low = pred.low_res_logits[:, :, 0]  # (B, N, 4h, 4w) in the padded square
    h_in, w_in = embedding.input_size
    # sample the low-res map at the target pixel centres (one exact bilinear lookup, no crop
    # rounding): target pixel centre -> fraction of the unpadded region -> padded-square coords
    ys = (torch.arange(size[0], device=low.device) + 0.5) / size[0] * (h_in / sam.img_size)
    xs = (torch.arange(size[1], device=low.device) + 0.5) / size[1] * (w_in / sam.img_size)
    gy, gx = torch.meshgrid(ys * 2 - 1, xs * 2 - 1, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).to(low.dtype)
    flat = rearrange(low, "b n h w -> (b n) 1 h w")
    up = torch.cat(
        [
            F.grid_sample(
                c,
                grid.expand(c.shape[0], -1, -1, -1),
                mode="bilinear",
                padding_mode="border",
                align_corners=False,
            )
            for c in flat.split(256)
        ]
    )
    masks = rearrange(up, "(b n) 1 h w -> b n h w", b=s["B"]) > sam.mask_threshold
    return masks & valid[..., None, None]
