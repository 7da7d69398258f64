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
from einops import rearrange
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

_CHUNK_ELEMS = 1 << 24  # float elements per chunk on the fallback pooling path (64 MB)
_WORDS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def _float_cell_counts(masks: Tensor, rows: Tensor, cols: Tensor, h: int, w: int) -> Tensor:
    """Fallback of `_cell_counts` (cells over 255 rows tall): float pooling, in chunks."""
    n, big_h, big_w = masks.shape
    r = F.one_hot(rows, h).float()  # (H, h)
    c = F.one_hot(cols, w).float()  # (W, w)
    chunk = max(1, _CHUNK_ELEMS // max(1, big_h * big_w))
    out = [
        torch.einsum("nHW,Hh,Ww->nhw", masks[start : start + chunk].float(), r, c)
        for start in range(0, n, chunk)
    ]
    return torch.cat(out) if out else masks.new_zeros((0, h, w), dtype=torch.float32)


def _cell_counts(masks: Tensor, h: int, w: int) -> Tensor:
    """Pixels of each bool mask in every cell of the `h x w` grid that nearest-upsampling defines.

    Row `y` falls in cell row `floor(y * h / H)` (column likewise). The masks are summed as
    packed bytes: a bool tensor stores one 0/1 byte per pixel, so adding machine words of 2-8
    bytes adds 2-8 pixels at once, byte by byte, without carries while a cell spans at most 255
    rows. Rows are summed this way, then the per-byte counts are summed over each cell's columns.
    The extra memory is `N_s x h x W` counts, never a float copy of the masks.

    Returns:
        Counts `(N_s, h, w)` (float32, exact).
    """
    n, big_h, big_w = masks.shape
    dev = masks.device
    rows = torch.div(torch.arange(big_h, device=dev) * h, big_h, rounding_mode="floor")
    cols = torch.div(torch.arange(big_w, device=dev) * w, big_w, rounding_mode="floor")
    if n == 0:
        return torch.zeros(0, h, w, device=dev)
    if -(-big_h // h) > 255:  # a byte could overflow: count in floats
        return _float_cell_counts(masks, rows, cols, h, w)
    nbytes = next(b for b in _WORDS if big_w % b == 0)
    words = masks.contiguous().view(torch.uint8).view(_WORDS[nbytes])  # (N_s, H, W / nbytes)
    if big_h % h == 0:
        per_row = words.view(n, h, big_h // h, -1).sum(dim=2, dtype=_WORDS[nbytes])
    else:
        per_row = words.new_zeros((n, h, words.shape[-1]))
        per_row.index_add_(1, rows, words)
    per_byte = per_row.view(torch.uint8).view(n, h, big_w)  # pixels per (cell row, column)
    if big_w % w == 0:
        counts = per_byte.view(n, h, w, big_w // w).sum(dim=-1, dtype=torch.int32)
    else:
        counts = per_byte.new_zeros((n, h, w), dtype=torch.int32)
        counts.index_add_(2, cols, per_byte.to(torch.int32))
    return counts.float()


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
    return _overlap_and_area(sam_masks, text_masks, eps)[0]


def _overlap_and_area(sam: Tensor, text: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Eq. 6 scores `(N_s, K)` and mask areas `(N_s,)` of checked bool masks."""
    counts = _cell_counts(sam, text.shape[1], text.shape[2]).flatten(1)  # (N_s, hw)
    inter = counts @ text.flatten(1).float().T  # (N_s, K)
    area = counts.sum(dim=1)
    return inter / (area[:, None] + eps), area


def _best_text(overlap: Tensor, alpha: float) -> Tensor:
    """Arg-max text mask per SAM mask where its score exceeds `alpha`, else -1."""
    if overlap.shape[1] == 0:
        return torch.full((overlap.shape[0],), -1, dtype=torch.long, device=overlap.device)
    best = overlap.max(dim=1)
    return torch.where(best.values > alpha, best.indices, torch.full_like(best.indices, -1))


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
    return _best_text(mask_text_overlap(sam_masks, text_masks, eps=eps), alpha)


def _output_rows(sam: Tensor, text: Tensor, alpha: float, eps: float) -> tuple[Tensor, int]:
    """Output row of every SAM mask (-1: empty, dropped) and the number of output rows.

    Groups are the text index for joined masks and `K + i` for unjoined mask `i`; sorting the
    groups gives the documented output order. An empty SAM mask never joins a text mask (its
    score is 0), so dropping empty masks first leaves exactly the non-empty groups.
    """
    overlap, area = _overlap_and_area(sam, text, eps)
    assign = _best_text(overlap, alpha)
    n, k = sam.shape[0], text.shape[0]
    group = torch.where(assign >= 0, assign, k + torch.arange(n, device=assign.device))
    keep = area > 0
    uniq, inverse = torch.unique(group[keep], sorted=True, return_inverse=True)
    rows = torch.full_like(group, -1)
    rows[keep] = inverse
    return rows, len(uniq)


def _unite(sam: Tensor, rows: Tensor, out: Tensor) -> None:
    """Write into `out (N_m, H, W)` the union of the SAM masks of each output row, in place.

    The first member of every row is gathered in one copy; each further member is OR-ed into its
    row in place, so nothing but the output is allocated at mask size.
    """
    n_out = out.shape[0]
    if n_out == 0:
        return
    n = sam.shape[0]
    index = torch.arange(n, device=rows.device)
    kept = rows >= 0
    first = torch.full((n_out,), n, dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(0, rows[kept], index[kept], reduce="amin")
    torch.index_select(sam, 0, first, out=out)
    extra = kept & (index != first[rows.clamp_min(0)])
    row_list = rows.tolist()
    for i in torch.nonzero(extra).flatten().tolist():
        out[row_list[i]].logical_or_(sam[i])


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
    s = check_shape(sam_masks, "N H W", name="sam_masks")
    t = check_shape(text_masks, "K h w", name="text_masks")
    _check_grids(s["H"], s["W"], t["h"], t["w"])
    check_unit_interval(alpha, name="alpha")
    sam = check_binary(sam_masks, name="sam_masks")
    text = check_binary(text_masks, name="text_masks")
    rows, n_out = _output_rows(sam, text, alpha, eps)
    out = sam.new_empty((n_out, s["H"], s["W"]))
    _unite(sam, rows, out)
    return (out, rows) if return_index else out


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
        sam = check_binary(sam_masks, name="sam_masks")
        text = check_binary(text_masks, name="text_masks")
        plans = [_output_rows(m, c, self.alpha, self.eps) for m, c in zip(sam, text, strict=True)]
        n_max = max(n_out for _, n_out in plans)
        out = torch.empty(s["B"], n_max, s["H"], s["W"], dtype=torch.bool, device=sam.device)
        for b, (rows, n_out) in enumerate(plans):
            _unite(sam[b], rows, out[b, :n_out])
            out[b, n_out:] = False  # padding; the rows above are written exactly once
        return out


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
    masks = _resample_masks(pred.low_res_logits[:, :, 0], embedding.input_size, sam, size)
    return masks & valid[..., None, None]


def _resample_masks(
    low: Tensor, input_size: tuple[int, int], sam: Any, size: tuple[int, int]
) -> Tensor:
    """Low-res logits `(B, N, 4h, 4w)` in the padded square -> bool masks `(B, N, H', W')`."""
    h_in, w_in = input_size
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
    return rearrange(up, "(b n) 1 h w -> b n h w", b=low.shape[0]) > sam.mask_threshold
