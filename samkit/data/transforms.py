"""The size transform of the readers: resize the longest side to `S`, pad to `S x S`.

This is SAM's own input convention (`ResizeLongestSide` + bottom/right padding), applied to a
whole sample so that masks stay aligned with the image: the image is resized bilinearly (with
antialiasing when shrinking) and every label map or mask is sampled at the pixel *centres* of
the resized grid (`nearest-exact`), which is the same geometric mapping. Padding goes to the
bottom and right: image 0, semantic 255 (ignore), panoptic 0 (void), masks False.

Sampling masks this way commutes with unions and intersections (a referring target resized is
the union of its resized instances), but an object thinner than a pixel of the resized grid
can vanish: its mask is then empty and its segment `area` 0 (kept, not dropped, so indices into
the instance list stay valid; `PanopticQuality` ignores empty ground truth).
"""

# axis legend
# c - colour channels (3)
# h w - pixels before resizing (`H`, `W`); s - the output side `S`
# m - any leading mask dimension (`M`)

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from samkit.data._items import PanopticSample, ReferringSample, SemanticSample

__all__ = ["IGNORE_LABEL", "resize_image", "resize_labels", "resize_sample", "resized_shape"]

IGNORE_LABEL = 255
"""The semantic label of unlabelled (and padded) pixels in every samkit sample."""

SampleT = TypeVar("SampleT", PanopticSample, SemanticSample, ReferringSample)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """`(h, w)` after scaling the longest side of `height x width` to `size`.

    Args:
        height: Image height `H`.
        width: Image width `W`.
        size: Target longest side `S`.

    Returns:
        `(round(H * S / max(H, W)), round(W * S / max(H, W)))`, each at least 1.

    Examples:
        >>> resized_shape(480, 640, 128)
        (96, 128)
    """
    if size < 1:
        raise ValueError(f"size: expected a positive int, got {size}")
    scale = size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_image(image: Tensor, size: int) -> Tensor:
    """Resize a `(C, H, W)` float image (longest side `size`) and zero-pad it to `(C, S, S)`."""
    h, w = resized_shape(int(image.shape[-2]), int(image.shape[-1]), size)
    out = F.interpolate(
        image[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True
    )[0].clamp_(0.0, 1.0)
    return F.pad(out, (0, size - w, 0, size - h), value=0.0)


def resize_labels(labels: Tensor, size: int, *, fill: int | bool) -> Tensor:
    """Resize `(..., H, W)` labels or masks by pixel-centre sampling and pad with `fill`.

    Any dtype works (bool masks, long ids); values are copied, never interpolated.

    Args:
        labels: `(..., H, W)` tensor.
        size: Target longest side `S`.
        fill: Value of the padding.

    Returns:
        `(..., S, S)` tensor of the same dtype.
    """
    H, W = int(labels.shape[-2]), int(labels.shape[-1])
    h, w = resized_shape(H, W, size)
    rows = ((torch.arange(h, dtype=torch.float64) + 0.5) * (H / h)).floor().long().clamp_(max=H - 1)
    cols = ((torch.arange(w, dtype=torch.float64) + 0.5) * (W / w)).floor().long().clamp_(max=W - 1)
    out = labels.new_full((*labels.shape[:-2], size, size), fill)
    out[..., :h, :w] = labels[..., rows.to(labels.device)[:, None], cols.to(labels.device)[None]]
    return out


def _boxes(masks: Tensor) -> Tensor:
    """`(M, 4)` xyxy boxes of `(M, H, W)` masks; zeros for empty masks."""
    from torchvision.ops import masks_to_boxes  # lazy: torchvision.ops loads torch._dynamo

    boxes = torch.zeros(masks.shape[0], 4, dtype=torch.float32)
    nonempty = masks.flatten(1).any(1)
    if nonempty.any():
        boxes[nonempty] = masks_to_boxes(masks[nonempty]).float()
    return boxes


def resize_sample(sample: SampleT, size: int) -> SampleT:
    """Apply the size transform to a whole sample, keeping every mask aligned with the image.

    Args:
        sample: A `PanopticSample`, `SemanticSample` or `ReferringSample`.
        size: Target side `S`: the longest side is scaled to `S`, then padded to `S x S`.

    Returns:
        A new sample of the same type with `(3, S, S)` image and `(S, S)` maps; segment areas
        and the referring box are recomputed.
    """
    image = resize_image(sample.image, size)
    if isinstance(sample, SemanticSample):
        semantic = resize_labels(sample.semantic, size, fill=IGNORE_LABEL)
        return replace(sample, image=image, semantic=semantic)  # type: ignore[call-arg]
    if isinstance(sample, ReferringSample):
        target = resize_labels(sample.target_mask, size, fill=False)
        box = _boxes(target[None])[0] if sample.has_target else torch.zeros(4)
        return replace(  # type: ignore[call-arg]
            sample,
            image=image,
            target_mask=target,
            target_box=box.to(sample.target_box.dtype),
            instance_masks=resize_labels(sample.instance_masks, size, fill=False),
        )
    panoptic = resize_labels(sample.panoptic, size, fill=0)
    segment_masks = resize_labels(sample.segment_masks, size, fill=False)
    areas = segment_masks.flatten(1).sum(1).tolist()
    return replace(
        sample,
        image=image,
        instance_masks=resize_labels(sample.instance_masks, size, fill=False),
        semantic=resize_labels(sample.semantic, size, fill=IGNORE_LABEL),
        panoptic=panoptic,
        segments=[replace(s, area=int(a)) for s, a in zip(sample.segments, areas, strict=True)],
        segment_masks=segment_masks,
        part_masks=None
        if sample.part_masks is None
        else resize_labels(sample.part_masks, size, fill=False),
    )
