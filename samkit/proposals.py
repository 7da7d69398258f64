"""SAM patches for SAM-CP: a batched "segment everything" proposer and converters.

`SamPatchProposer` reproduces SAM's automatic mask generator with SAM-CP's "SAM*" settings
(48 x 48 point grid, predicted-IoU threshold 0.8, stability threshold 0.9, box NMS 0.7; spec
section 8) on top of `SamBackbone.predict_points`, for a whole batch of images at once. Patches
computed elsewhere come in through `patches_from_masks`, `patches_from_amg` (the output of
`segment_anything.SamAutomaticMaskGenerator.generate`), `patches_from_records` (the reference's
pickled proposal files) and `load_patches` (files written by `save_patches`).

Boxes are `(x0, y0, x1, y1)` pixels of the original image; boxes derived from masks here use the
exclusive far edge (`x1 = last column + 1`).

Axis legend:
    b - images (B)
    n - patches or points (N)
    m - mask candidates per point (M)
    hw - pixels (H, W)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn
from torchvision.ops import nms

from samkit._cache import CacheInfo, EmbeddingCache, check_size
from samkit._checks import (
    as_float,
    as_image,
    check_binary,
    check_positive,
    check_shape,
    check_unit_interval,
    resolve_image_sizes,
)
from samkit._io import read_checkpoint, write_atomic
from samkit.backbones._encoder_parts import sam_encoder_parts
from samkit.backbones.sam import SamLike
from samkit.modules.patch_encoder import _group_by_size
from samkit.types import Patches

__all__ = [
    "SamPatchProposer",
    "load_patches",
    "mask_boxes",
    "pad_patches",
    "patches_from_amg",
    "patches_from_masks",
    "patches_from_records",
    "point_grid",
    "save_patches",
    "stability_score",
]


def point_grid(points_per_side: int) -> Tensor:
    """Cell-centred `n x n` grid of `(x, y)` points in `[0, 1]` (SAM's `build_point_grid`).

    Args:
        points_per_side: Points along each side `n`.

    Returns:
        Points `(n * n, 2)`, row-major (x varies fastest).

    Examples:
        >>> point_grid(2)
        tensor([[0.2500, 0.2500],
                [0.7500, 0.2500],
                [0.2500, 0.7500],
                [0.7500, 0.7500]])
    """
    offset = 1 / (2 * points_per_side)
    side = torch.linspace(offset, 1 - offset, points_per_side)
    ys, xs = torch.meshgrid(side, side, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], -1)


def stability_score(logits: Tensor, *, threshold: float = 0.0, offset: float = 1.0) -> Tensor:
    """IoU between a mask thresholded at `threshold + offset` and at `threshold - offset`.

    Same as `segment_anything.utils.amg.calculate_stability_score`.

    Args:
        logits: Mask logits `(..., H, W)`.
        threshold: Mask threshold.
        offset: Threshold offset.

    Returns:
        Scores `(...)` in `[0, 1]`.

    Examples:
        >>> stability_score(torch.tensor([[[3.0, 0.5], [-3.0, -3.0]]]))
        tensor([0.5000])
    """
    inter = (logits > threshold + offset).sum((-1, -2), dtype=torch.int32)
    union = (logits > threshold - offset).sum((-1, -2), dtype=torch.int32)
    return inter / union.clamp(min=1)


def mask_boxes(masks: Tensor) -> Tensor:
    """Boxes `(..., 4)` of binary masks `(..., H, W)`, exclusive far edge; zeros for empty masks.

    Examples:
        >>> m = torch.zeros(1, 4, 4, dtype=torch.bool); m[0, 1:3, 2] = True
        >>> mask_boxes(m)
        tensor([[2., 1., 3., 3.]])
    """
    h, w = masks.shape[-2:]
    rows = masks.any(-1)  # ... h
    cols = masks.any(-2)  # ... w
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).amin(-1)
    y1 = torch.where(rows, ar_h + 1, 0).amax(-1)
    x0 = torch.where(cols, ar_w, w).amin(-1)
    x1 = torch.where(cols, ar_w + 1, 0).amax(-1)
    boxes = torch.stack([x0, y0, x1, y1], -1).float()
    empty = ~rows.any(-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)


def patches_from_masks(masks: Tensor, scores: Tensor | None = None) -> Patches:
    """Wrap binary masks `(N, H, W)` as `Patches` (boxes from the masks, scores default 1).

    Args:
        masks: Binary masks `(N, H, W)`: bool, or numbers that are all 0 or 1.
        scores: Optional patch scores `(N,)` (any finite float; SAM's predicted IoU).

    Returns:
        `Patches` with boxes from `mask_boxes`.

    Raises:
        ValueError: If `masks` holds a value other than 0 and 1, or `scores` is not `(N,)`.

    Examples:
        >>> patches_from_masks(torch.ones(2, 4, 4, dtype=torch.bool)).boxes[0]
        tensor([0., 0., 4., 4.])
    """
    s = check_shape(masks, "N H W", name="masks")
    masks = check_binary(masks, name="masks")
    if scores is None:
        scores = torch.ones(s["N"], device=masks.device)
    else:
        check_shape(scores, "N", name="scores", known=s)
        scores = as_float(scores, name="scores")
    return Patches(masks=masks, boxes=mask_boxes(masks), scores=scores)


def _decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        flat = np.zeros(h * w, dtype=bool)
        pos, val = 0, False
        for c in counts:
            flat[pos : pos + c] = val
            pos += c
            val = not val
        return flat.reshape(w, h).T
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "decoding compressed COCO RLE needs pycocotools (`pip install pycocotools`)"
        ) from err
    return mask_utils.decode(dict(rle)).astype(bool)


def _to_mask(seg: Any) -> np.ndarray:
    if isinstance(seg, Mapping):
        return _decode_rle(seg)
    if isinstance(seg, Tensor):
        return seg.detach().to("cpu").numpy().astype(bool)
    return np.asarray(seg, dtype=bool)


def patches_from_amg(records: Sequence[Mapping[str, Any]], image_size: tuple[int, int]) -> Patches:
    """Convert `SamAutomaticMaskGenerator.generate` output (any `output_mode`) to `Patches`.

    Args:
        records: Dicts with `segmentation` (bool array or RLE dict), `bbox` (XYWH) and
            `predicted_iou`.
        image_size: `(H, W)`, used when `records` is empty.

    Returns:
        `Patches` with boxes converted to `(x0, y0, x0 + w, y0 + h)`.

    Examples:
        >>> rec = {"segmentation": torch.ones(4, 4).bool().numpy(), "bbox": [0, 0, 3, 3],
        ...        "predicted_iou": 0.9}
        >>> patches_from_amg([rec], (4, 4)).num_patches
        1
    """
    if not records:
        h, w = image_size
        return Patches(torch.zeros(0, h, w, dtype=torch.bool), torch.zeros(0, 4), torch.zeros(0))
    masks = torch.from_numpy(np.stack([_to_mask(r["segmentation"]) for r in records]))
    xywh = torch.tensor([list(r["bbox"]) for r in records], dtype=torch.float32)
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    scores = torch.tensor([float(r.get("predicted_iou", 1.0)) for r in records])
    return Patches(masks=masks, boxes=boxes, scores=scores)


def patches_from_records(record: Mapping[str, Any]) -> Patches:
    """Convert one reference proposal record (`boxes` XYWH, `segmentations` RLE, `scores`).

    This is the per-image pickle layout of SAM-CP's offline proposals (spec section 8).

    Examples:
        >>> rle = {"size": [2, 2], "counts": [1, 3]}
        >>> p = patches_from_records({"boxes": [[0, 0, 2, 2]], "segmentations": [rle],
        ...                           "scores": [0.8]})
        >>> p.masks.sum().item(), p.boxes.tolist()
        (3, [[0.0, 0.0, 2.0, 2.0]])
    """
    masks = torch.from_numpy(np.stack([_decode_rle(r) for r in record["segmentations"]]))
    xywh = torch.as_tensor(np.asarray(record["boxes"], dtype=np.float32)).reshape(-1, 4)
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    scores = torch.as_tensor(np.asarray(record["scores"], dtype=np.float32)).reshape(-1)
    return Patches(masks=masks, boxes=boxes, scores=scores)


def save_patches(patches: Patches, path: str | os.PathLike[str]) -> None:
    """Write `Patches` to a safetensors file (masks as uint8), atomically.

    Args:
        patches: The patches of one image.
        path: The destination `.safetensors` file; replaced whole or not at all.
    """
    from safetensors.torch import save

    data = save(
        {
            "masks": patches.masks.to("cpu", torch.uint8).contiguous(),
            "boxes": patches.boxes.to("cpu", torch.float32).contiguous(),
            "scores": patches.scores.to("cpu", torch.float32).contiguous(),
        }
    )
    write_atomic(path, data)


def load_patches(path: str | os.PathLike[str]) -> Patches:
    """Read `Patches` written by `save_patches`.

    Args:
        path: A `.safetensors` file written by `save_patches`.

    Returns:
        The patches.

    Raises:
        FileNotFoundError: If `path` is not a file.
        ValueError: If the file is not a readable patches file (the message names it).
    """
    kind = "samkit patches file"
    d = read_checkpoint(path, kind=kind)
    missing = {"masks", "boxes", "scores"} - set(d) if isinstance(d, dict) else {"masks"}
    if missing:
        raise ValueError(f"{path}: not a readable {kind}: missing entries {sorted(missing)}")
    return Patches(masks=d["masks"].bool(), boxes=d["boxes"], scores=d["scores"])


def pad_patches(
    patches: Sequence[Patches], size: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pad per-image patches to a batch.

    Patch slots are padded at the end of each image's patches; masks of images smaller than the
    canvas are padded bottom / right with `False` (the images' own frame stays at the top left,
    so boxes need no shift).

    Args:
        patches: `B` `Patches`.
        size: The canvas `(H, W)`. Default: the images' common size (they must then agree).

    Returns:
        `(masks (B, N, H, W) bool, boxes (B, N, 4), scores (B, N), padding_mask (B, N))` with
        `N` the largest patch count and `padding_mask` True at padded slots. With no patches
        (`B = 0`) the shapes are `(0, 0, H, W)`, `(0, 0, 4)`, `(0, 0)`, `(0, 0)`, `(H, W) = size`
        or `(0, 0)`.

    Raises:
        ValueError: If the image sizes differ and no `size` is given, or an image is larger than
            `size`.

    Examples:
        >>> a = patches_from_masks(torch.ones(2, 4, 4)); b = patches_from_masks(torch.ones(0, 4, 4))
        >>> pad_patches([a, b])[3]
        tensor([[False, False],
                [ True,  True]])
        >>> pad_patches([a, patches_from_masks(torch.ones(1, 3, 2))], size=(4, 4))[0].shape
        torch.Size([2, 2, 4, 4])
    """
    sizes = [p.image_size for p in patches]
    if size is None:
        if len(set(sizes)) > 1:
            raise ValueError(
                f"patches: images of different sizes {sorted(set(sizes))} need a canvas; "
                "pass size=(H, W) to pad them bottom/right"
            )
        size = sizes[0] if sizes else (0, 0)
    h, w = int(size[0]), int(size[1])
    for i, (hi, wi) in enumerate(sizes):
        if hi > h or wi > w:
            raise ValueError(
                f"patches[{i}]: expected masks no larger than size=({h}, {w}), got ({hi}, {wi})"
            )
    b = len(patches)
    n = max((p.num_patches for p in patches), default=0)
    dev = patches[0].masks.device if patches else torch.device("cpu")
    masks = torch.zeros(b, n, h, w, dtype=torch.bool, device=dev)
    boxes = torch.zeros(b, n, 4, device=dev)
    scores = torch.zeros(b, n, device=dev)
    pad = torch.ones(b, n, dtype=torch.bool, device=dev)
    for i, p in enumerate(patches):
        k, (hi, wi) = p.num_patches, p.image_size
        masks[i, :k, :hi, :wi] = p.masks.bool()
        boxes[i, :k], scores[i, :k] = p.boxes.float(), p.scores.float()
        pad[i, :k] = False
    return masks, boxes, scores, pad


class SamPatchProposer(nn.Module):
    """SAM as a patch proposer: automatic-mask generation with SAM-CP's "SAM*" settings.

    A grid of single-point prompts is decoded in batches (`SamBackbone.predict_points`, three
    masks per point); candidates are filtered by predicted IoU and stability score, thresholded
    at the original size, boxed, and de-duplicated with box NMS. No crops, no small-region
    clean-up (both off in SAM-CP).

    Examples:
        >>> from samkit.backbones.sam import build_sam_backbone
        >>> proposer = SamPatchProposer(sam=build_sam_backbone("tiny"), points_per_side=4,
        ...                             pred_iou_thresh=0.0, stability_score_thresh=0.0)
        >>> patches = proposer(torch.rand(2, 3, 64, 64))
        >>> len(patches), patches[0].image_size
        (2, (64, 64))
    """

    sam: SamLike

    def __init__(
        self,
        *,
        sam: SamLike,
        points_per_side: int = 48,
        points_per_batch: int = 256,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.9,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        min_area: int = 0,
        encoder_batch_size: int = 8,
        image_cache_size: int = 0,
    ) -> None:
        """Create the proposer.

        Args:
            sam: A `SamBackbone` (anything with `encode`, `transform_coords`, `predict_points`,
                `postprocess_masks`, `mask_threshold`).
            points_per_side: Grid size (48 in SAM-CP, 32 in SAM).
            points_per_batch: Point prompts decoded at once per image.
            pred_iou_thresh: Minimum predicted IoU (0.8; SAM 0.88). Any finite number: SAM's IoU
                head is a regression output that can leave `[0, 1]` (-1 keeps every mask).
            stability_score_thresh: Minimum stability score (0.9; SAM 0.95), in `[0, 1]`.
            stability_score_offset: Logit offset of the stability score.
            box_nms_thresh: Box IoU above which the lower-scored duplicate is dropped, in
                `[0, 1]`.
            min_area: Drop masks with fewer pixels.
            encoder_batch_size: Images per SAM encoder call (bounds memory; 0: all at once).
            image_cache_size: Images whose SAM embeddings are cached (LRU; 0: off), keyed by
                the image's content, the call context and SAM's weights (see
                `docs/performance/caches.md`); only when `sam` is an `nn.Module`.

        Raises:
            ValueError: On a threshold outside its range, a grid / batch size below 1, or a
                negative `encoder_batch_size` / `image_cache_size`.
        """
        super().__init__()
        self.sam = sam  # registered as a submodule when it is an nn.Module
        self.points_per_side = check_positive(points_per_side, name="points_per_side")
        self.points_per_batch = check_positive(points_per_batch, name="points_per_batch")
        if not math.isfinite(pred_iou_thresh):
            raise ValueError(f"pred_iou_thresh: expected a finite number, got {pred_iou_thresh}")
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = check_unit_interval(
            stability_score_thresh, name="stability_score_thresh"
        )
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = check_unit_interval(box_nms_thresh, name="box_nms_thresh")
        self.min_area = min_area
        self.encoder_batch_size = check_size(encoder_batch_size, name="encoder_batch_size")
        check_size(image_cache_size, name="image_cache_size")
        # a SAM that is no nn.Module is never cached: its weight state cannot be read
        trackable = sam_encoder_parts(sam) is not None
        self._image_cache = EmbeddingCache(image_cache_size if trackable else 0)

    def image_cache_info(self) -> CacheInfo:
        """Hits, misses, bypasses (per image), size and capacity of the SAM embedding cache."""
        return self._image_cache.info()

    def clear_image_cache(self) -> None:
        """Drop the cached SAM embeddings."""
        self._image_cache.clear()

    @torch.no_grad()
    def forward(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[Patches]:
        """Propose patches for each image.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8 (divided by 255).
            image_sizes: The true `(h, w)` of each image when smaller images are padded
                bottom/right to `(H, W)`; default all `(H, W)`. Each image is proposed on at its
                own size (images of equal size in one SAM batch).

        Returns:
            `B` `Patches`, masks at each image's own size (`[]` for `B = 0`).

        Raises:
            ValueError: On a bad shape, out-of-range pixels or bad `image_sizes`.
        """
        images = as_image(images, name="images")
        sizes = resolve_image_sizes(images, image_sizes)
        out: list[Patches | None] = [None] * len(sizes)
        for (h, w), idx in _group_by_size(sizes).items():
            crop = images[idx, :, :h, :w]
            for i, p in zip(idx, self._propose(crop), strict=True):
                out[i] = p
        return [p for p in out if p is not None]

    def _propose(self, images: Tensor) -> list[Patches]:
        """Propose patches for equally sized images `(B, 3, H, W)` in `[0, 1]`."""
        s = check_shape(images, "B 3 H W", name="images")
        emb = self._image_cache.images(
            sam_encoder_parts(self.sam) or [],
            images,
            "sam",
            lambda i: self.sam.encode(images[i]),
            batch_size=self.encoder_batch_size,
        )
        size = (s["H"], s["W"])
        grid = point_grid(self.points_per_side).to(images.device) * images.new_tensor(
            [s["W"], s["H"]]
        )
        points = self.sam.transform_coords(grid, size).expand(s["B"], -1, -1)
        kept: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(s["B"])]
        for start in range(0, points.shape[1], self.points_per_batch):
            pred = self.sam.predict_points(
                emb,
                points[:, start : start + self.points_per_batch],
                batch_size=self.points_per_batch,
                multimask=True,
                upsample=False,
            )
            logits = rearrange(pred.low_res_logits, "b n m h w -> b (n m) h w")
            ious = rearrange(pred.iou_scores, "b n m -> b (n m)")
            for i in range(s["B"]):
                kept[i].append(self._filter(logits[i], ious[i], emb.input_size, size))
        return [self._finish(parts, size, images.device) for parts in kept]

    def _filter(
        self,
        logits: Tensor,
        ious: Tensor,
        input_size: tuple[int, int],
        size: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """IoU filter, upsample, stability filter, threshold; returns `(masks, scores)`."""
        keep = ious > self.pred_iou_thresh
        logits, ious = logits[keep], ious[keep]
        up = self.sam.postprocess_masks(logits, input_size, size)
        thr = float(self.sam.mask_threshold)
        stab = stability_score(up, threshold=thr, offset=self.stability_score_offset)
        keep = stab >= self.stability_score_thresh
        masks = up[keep] > thr
        return masks, ious[keep]

    def _finish(
        self, parts: list[tuple[Tensor, Tensor]], size: tuple[int, int], device: torch.device
    ) -> Patches:
        masks = torch.cat([m for m, _ in parts]) if parts else None
        if masks is None or masks.shape[0] == 0:
            return Patches(
                torch.zeros(0, *size, dtype=torch.bool, device=device),
                torch.zeros(0, 4, device=device),
                torch.zeros(0, device=device),
            )
        scores = torch.cat([sc for _, sc in parts]).float()
        area = masks.flatten(1).sum(1)
        keep = area > max(self.min_area, 0)
        masks, scores = masks[keep], scores[keep]
        boxes = mask_boxes(masks)
        order = nms(boxes, scores, self.box_nms_thresh)
        return Patches(masks=masks[order], boxes=boxes[order], scores=scores[order])
