"""Segment Anything as a batched, differentiable, typed backbone.

`build_sam_backbone(variant, checkpoint=None)` (variants `vit_b`, `vit_l`, `vit_h`, `tiny`) builds
segment_anything's own `ImageEncoderViT`, `PromptEncoder` and `MaskDecoder` and wraps them in
`SamBackbone`, which offers the whole SAM pipeline on tensors without going through
`Sam.forward` (which is `no_grad` and decodes one image per call):

    images (B, 3, H, W), float in [0, 1] or uint8 in [0, 255]
      -> preprocess -> encode -> ImageEmbedding (B, D, h, w)
      -> embed_prompts(Prompts (B, K, ...)) -> sparse (B, K, N, D), dense (B, K, D, h, w)
      -> decode -> MaskPrediction (B, K, M, 4h, 4w) [+ (B, K, M, H, W) at original size]

`SamLike` is the protocol every SAM-style backend (HQ-SAM, SAM 2, MobileSAM, EfficientSAM)
must satisfy to be used by samkit's systems.

Input contract (`samkit._checks`): uint8 images are divided by 255, float images must be finite
and in `[0, 1]`; any float dtype gives the float32 result (or follows autocast); an empty batch
(`B = 0`) gives empty outputs of the documented shapes; point labels must be -1, 0 or 1.
"""

# b - images in a batch (B)
# k - prompts per image (K)
# n - tokens / points per prompt (N)
# m - masks per prompt (M)
# d - channels (D)
# h w - embedding grid; H W - image pixels

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor, nn

from samkit._checks import as_float, as_image, check_positive, check_shape
from samkit.backbones._sam_build import (
    PIXEL_MEAN,
    PIXEL_STD,
    SAM_VARIANTS,
    SamVariantSpec,
    build_sam_parts,
    load_strict,
    read_state_dict,
)
from samkit.backbones._sam_ops import (
    dense_positional_encoding,
    embed_boxes,
    embed_points,
    encoder_forward,
    predict_masks_batched,
)
from samkit.backbones._shipped import SHIPPED_PRESETS, shipped_state_dict
from samkit.types import ImageEmbedding, MaskPrediction, Prompts

if TYPE_CHECKING:
    from samkit.backbones.sam2_backend import Sam2Backbone

__all__ = ["SAM_VARIANTS", "SamBackbone", "SamLike", "SamVariantSpec", "build_sam_backbone"]

POINT_LABELS = (-1, 0, 1)
"""The point labels of SAM's `PromptEncoder`: -1 padding, 0 background, 1 foreground."""


def _check_point_labels(labels: Tensor, *, name: str) -> None:
    """Raise a `ValueError` naming `name` unless every label is -1, 0 or 1.

    The check reads the values (a device sync); it is skipped while `torch.compile` traces, so
    compiled prompt decoding stays free of data-dependent branches.
    """
    if labels.numel() == 0 or torch.compiler.is_compiling():
        return
    ok = (labels == -1) | (labels == 0) | (labels == 1)
    if not bool(ok.all()):
        bad = labels[~ok].reshape(-1)[0]
        raise ValueError(
            f"{name}: expected SAM point labels in {{-1, 0, 1}} (-1 padding, 0 background, "
            f"1 foreground), got {bad.item():g}"
        )


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype to feed a module with `weight`: its own, or `x`'s under autocast."""
    if torch.is_autocast_enabled(x.device.type):
        return x.dtype
    return weight.dtype


def _letterbox(
    images: Tensor, side: int, pixel_mean: Tensor, pixel_std: Tensor
) -> tuple[Tensor, tuple[int, int]]:
    """SAM's input transform: long side to `side`, normalise, pad bottom/right to `side`.

    The body of `SamBackbone.preprocess`, for a given `side` (EfficientViT-SAM's encoder takes
    512 px while its prompt frame stays 1024 px). Float64 statistics give a float64 result.

    Args:
        images: RGB images `(B, 3, H, W)`, float in `[0, 1]` or uint8.
        side: Side of the square output.
        pixel_mean: Per-channel mean on the 0-255 scale, `(3, 1, 1)`.
        pixel_std: Per-channel std on the 0-255 scale, `(3, 1, 1)`.

    Returns:
        The padded input `(B, 3, side, side)` and the resized size `(h_in, w_in)` inside it.
    """
    sizes = check_shape(images, "B 3 H W", name="images")
    h, w = ResizeLongestSide.get_preprocess_shape(sizes["H"], sizes["W"], side)
    input_size = (int(h), int(w))
    # resize and normalise in (at least) float32: antialiased resizing has no half kernels
    work = torch.float64 if pixel_mean.dtype == torch.float64 else torch.float32
    x = as_image(images, name="images", dtype=work)
    if input_size != (sizes["H"], sizes["W"]):
        x = F.interpolate(x, input_size, mode="bilinear", align_corners=False, antialias=True)
    mean = pixel_mean.to(x.dtype)
    std = pixel_std.to(x.dtype)
    x = (x * 255.0 - mean) / std
    x = F.pad(x, (0, side - input_size[1], 0, side - input_size[0]))
    return x, input_size


@runtime_checkable
class SamLike(Protocol):
    """What a SAM-style backend must provide to be plugged into samkit's systems.

    The contract is SAM's "encode the image once, embed prompts, decode low-res mask logits and
    IoU" pipeline, on batches: `B` images with `K` prompts each. All methods are differentiable
    (no `torch.no_grad` inside); tensors follow the legend in `samkit.types`.

    A backend adapter (HQ-SAM, SAM 2, MobileSAM, EfficientSAM, ...) implements:

    * `img_size`: side `S` of the square model input; point and box prompts live in the SAM input
      frame (the image resized so its long side is `S`).
    * `prompt_dim`: width `D` of image embeddings and prompt tokens.
    * `embedding_size`: the embedding grid `(h, w)`; low-res masks are `(4h, 4w)`.
    * `mask_threshold`: logit threshold of a foreground pixel.
    * `preprocess(images)`: `(B, 3, H, W)` in `[0, 1]` -> model input `(B, 3, S, S)` and the size
      of the resized image inside it.
    * `encode(images)` -> `ImageEmbedding` with `embeddings (B, D, h, w)`.
    * `transform_coords` / `transform_boxes`: original frame -> SAM input frame.
    * `dense_pe()`: the positional encoding of the embedding grid, `(1, D, h, w)`.
    * `embed_prompts(prompts)`: `Prompts` -> `(sparse (B, K, N, D), dense (B, K, D, h, w))`.
    * `decode(embedding, sparse, dense, multimask=..., upsample=...)` -> `MaskPrediction` with
      `low_res_logits (B, K, M, 4h, 4w)`, `iou_scores (B, K, M)` and, with `upsample`,
      `logits (B, K, M, H, W)`; `M` is 3 with `multimask` and 1 without.
    * `predict(embedding, prompts, ...)`: `embed_prompts` followed by `decode`.
    * `predict_points(embedding, points (B, N, 2), labels, ...)`: one prompt per point, in
      batches; `K = N`.
    * `postprocess_masks(masks (..., 4h, 4w), input_size, original_size)` -> `(..., H, W)`.

    Examples:
        >>> sam = build_sam_backbone("tiny")
        >>> isinstance(sam, SamLike)
        True
    """

    img_size: int
    prompt_dim: int
    embedding_size: tuple[int, int]
    mask_threshold: float

    def preprocess(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Resize, normalise and pad `(B, 3, H, W)` images to the model input `(B, 3, S, S)`."""
        ...

    def encode(self, images: Tensor) -> ImageEmbedding:
        """Embed `(B, 3, H, W)` images in `[0, 1]`."""
        ...

    def transform_coords(self, coords: Tensor, original_size: tuple[int, int]) -> Tensor:
        """Map `(..., 2)` `(x, y)` pixels from the original frame to the SAM input frame."""
        ...

    def transform_boxes(self, boxes: Tensor, original_size: tuple[int, int]) -> Tensor:
        """Map `(..., 4)` boxes from the original frame to the SAM input frame."""
        ...

    def dense_pe(self) -> Tensor:
        """Positional encoding of the embedding grid, `(1, D, h, w)`."""
        ...

    def embed_prompts(self, prompts: Prompts) -> tuple[Tensor, Tensor]:
        """Embed prompts into `(sparse (B, K, N, D), dense (B, K, D, h, w))`."""
        ...

    def decode(
        self,
        embedding: ImageEmbedding,
        sparse: Tensor,
        dense: Tensor,
        *,
        multimask: bool = False,
        upsample: bool = True,
    ) -> MaskPrediction:
        """Decode `K` prompts per image into masks."""
        ...

    def predict(
        self,
        embedding: ImageEmbedding,
        prompts: Prompts,
        *,
        multimask: bool = False,
        upsample: bool = True,
    ) -> MaskPrediction:
        """Embed and decode prompts."""
        ...

    def predict_points(
        self,
        embedding: ImageEmbedding,
        points: Tensor,
        labels: Tensor | None = None,
        *,
        batch_size: int = 64,
        multimask: bool = True,
        upsample: bool = False,
    ) -> MaskPrediction:
        """Run every point as its own prompt, `batch_size` prompts at a time."""
        ...

    def postprocess_masks(
        self, masks: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Tensor:
        """Crop the padding of `(..., 4h, 4w)` masks and resize them to `(..., H, W)`."""
        ...


class _SamPipeline(nn.Module):
    """The pipeline samkit's SAM-style backbones share, built on their own methods.

    `predict`, `predict_points` and `forward` call the backbone's `encode`, `embed_prompts` and
    `decode`; `SamBackbone` (and its subclasses) and `Sam2Backbone` derive from it.
    """

    mask_threshold: float = 0.0
    prompt_dim: int
    pixel_mean: Tensor
    _frozen_with: ClassVar[dict[str, tuple[str, ...]]] = {}
    """Component name -> further attributes that `freeze` sets with it."""

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.pixel_mean.device

    def freeze(
        self,
        *,
        image_encoder: bool = True,
        prompt_encoder: bool = True,
        mask_decoder: bool = True,
    ) -> list[str]:
        """Set which components are frozen (`requires_grad=False`); `False` unfreezes.

        SSP-SAM, for example, trains only the mask decoder:
        `sam.freeze(image_encoder=True, prompt_encoder=True, mask_decoder=False)`.

        Args:
            image_encoder: Freeze the image encoder.
            prompt_encoder: Freeze the prompt encoder.
            mask_decoder: Freeze the mask decoder.

        Returns:
            The names of the parameters that remain trainable.
        """
        flags = {
            "image_encoder": image_encoder,
            "prompt_encoder": prompt_encoder,
            "mask_decoder": mask_decoder,
        }
        for name, frozen in flags.items():
            for part in (name, *self._frozen_with.get(name, ())):
                getattr(self, part).requires_grad_(not frozen)
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def _decoder_inputs(
        self, embedding: ImageEmbedding, sparse: Tensor, dense: Tensor, *, weight: Tensor
    ) -> tuple[dict[str, int], Tensor, Tensor, Tensor]:
        """Check `decode`'s inputs and cast them to the decoder's compute dtype.

        Args:
            embedding: Image embeddings `(B, D, h, w)`.
            sparse: Sparse prompt tokens `(B, K, N, D)`.
            dense: Dense prompt embeddings `(B, K, D, h, w)`.
            weight: A decoder weight, whose dtype is the compute dtype outside autocast.

        Returns:
            The sizes `{B, K, N, D, h, w}` and the embeddings, sparse and dense tensors in the
            compute dtype.

        Raises:
            ValueError: If the shapes disagree.
        """
        emb = embedding.embeddings
        s = check_shape(emb, "B D h w", name="embedding.embeddings", known={"D": self.prompt_dim})
        s.update(check_shape(sparse, "B K N D", name="sparse", known=s))
        check_shape(dense, "B K D h w", name="dense", known=s)
        emb = as_float(emb, name="embedding.embeddings", dtype=_compute_dtype(emb, weight))
        sparse = as_float(sparse, name="sparse", dtype=emb.dtype)
        dense = as_float(dense, name="dense", dtype=emb.dtype)
        return s, emb, sparse, dense

    def _mask_prediction(
        self,
        embedding: ImageEmbedding,
        low_res: Tensor,
        iou: Tensor,
        tokens: Tensor,
        *,
        upsample: bool,
    ) -> MaskPrediction:
        """`decode`'s output: the selected masks, and their logits at the original size.

        Args:
            embedding: The embedding decoded (its `input_size` and `original_size`).
            low_res: Mask logits `(B, K, M, 4h, 4w)`.
            iou: Predicted IoU `(B, K, M)`.
            tokens: The mask tokens `(B, K, M, D)`.
            upsample: Also compute `logits (B, K, M, H, W)` with `postprocess_masks`.
        """
        logits = (
            self.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
            if upsample
            else None
        )
        return MaskPrediction(
            low_res_logits=low_res,
            iou_scores=iou,
            logits=logits,
            mask_threshold=self.mask_threshold,
            tokens=tokens,
        )

    if TYPE_CHECKING:  # provided by each backbone

        def encode(self, images: Tensor) -> ImageEmbedding: ...

        def embed_prompts(
            self, prompts: Prompts, *, batch_shape: tuple[int, int] | None = None
        ) -> tuple[Tensor, Tensor]: ...

        def decode(
            self,
            embedding: ImageEmbedding,
            sparse: Tensor,
            dense: Tensor,
            *,
            multimask: bool = False,
            upsample: bool = True,
        ) -> MaskPrediction: ...

        def postprocess_masks(
            self, masks: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
        ) -> Tensor: ...

    def predict(
        self,
        embedding: ImageEmbedding,
        prompts: Prompts,
        *,
        multimask: bool = False,
        upsample: bool = True,
    ) -> MaskPrediction:
        """Embed `prompts` and decode them on `embedding` (`embed_prompts` + `decode`).

        Args:
            embedding: Image embeddings `(B, D, h, w)`.
            prompts: Prompts with leading axes `(B, K)`, in the SAM input frame. Empty prompts
                (`Prompts()`) decode one prompt-free slot per image (`K = 1`).
            multimask: Return 3 masks per prompt instead of 1.
            upsample: Also return `logits` at the original image size.

        Returns:
            `MaskPrediction` shaped `(B, K, M, ...)`.

        Raises:
            ValueError: If the prompts' `B` differs from the embedding's.
        """
        shape = prompts.batch_shape
        if shape is not None and shape[0] != embedding.batch_size:
            raise ValueError(
                f"predict: prompts have B={shape[0]} but the embedding has B={embedding.batch_size}"
            )
        sparse, dense = self.embed_prompts(prompts, batch_shape=(embedding.batch_size, 1))
        return self.decode(embedding, sparse, dense, multimask=multimask, upsample=upsample)

    def predict_points(
        self,
        embedding: ImageEmbedding,
        points: Tensor,
        labels: Tensor | None = None,
        *,
        batch_size: int = 64,
        multimask: bool = True,
        upsample: bool = False,
    ) -> MaskPrediction:
        """Run each of `N` points per image as its own single-point prompt, in batches.

        This is how SAM's automatic mask generator queries a point grid; memory is bounded by
        `batch_size` prompts per image at a time.

        Args:
            embedding: Image embeddings `(B, D, h, w)`.
            points: Points `(B, N, 2)` in the SAM input frame.
            labels: Labels `(B, N)`; defaults to all foreground (1).
            batch_size: Prompts decoded per image at once.
            multimask: Return 3 masks per point instead of 1.
            upsample: Also return `logits` at the original size (memory heavy for many points).

        Returns:
            `MaskPrediction` with `K = N`: `low_res_logits (B, N, M, 4h, 4w)`,
            `iou_scores (B, N, M)`, `tokens (B, N, M, D)`.

        Raises:
            ValueError: On mismatched shapes, a label other than -1, 0 and 1 or a non-positive
                `batch_size`.
        """
        s = check_shape(points, "B N 2", name="points", known={"B": embedding.batch_size})
        if labels is None:
            labels = points.new_ones(s["B"], s["N"])
        check_shape(labels, "B N", name="labels", known=s)
        _check_point_labels(labels, name="labels")
        check_positive(batch_size, name="batch_size")
        if s["N"] <= batch_size:  # one batch (N = 0 too); a bound, not a fixed N, when compiled
            prompts = Prompts(points=points[:, :, None, :], labels=labels[:, :, None])
            return self.predict(embedding, prompts, multimask=multimask, upsample=upsample)
        chunks: list[MaskPrediction] = []
        for start in range(0, s["N"], batch_size):
            sl = slice(start, start + batch_size)
            prompts = Prompts(points=points[:, sl, None, :], labels=labels[:, sl, None])
            chunks.append(self.predict(embedding, prompts, multimask=multimask, upsample=upsample))
        return MaskPrediction(
            low_res_logits=torch.cat([c.low_res_logits for c in chunks], dim=1),
            iou_scores=torch.cat([c.iou_scores for c in chunks], dim=1),
            logits=torch.cat([c.logits for c in chunks], dim=1) if upsample else None,  # type: ignore[misc]
            mask_threshold=self.mask_threshold,
            tokens=torch.cat([c.tokens for c in chunks], dim=1),  # type: ignore[misc]
        )

    def forward(
        self, images: Tensor, prompts: Prompts, *, multimask: bool = False, upsample: bool = True
    ) -> MaskPrediction:
        """Encode `images` and decode `prompts` on them (`encode` + `predict`).

        Args:
            images: RGB images `(B, 3, H, W)`, float in `[0, 1]` or uint8.
            prompts: Prompts with leading axes `(B, K)`, in the SAM input frame.
            multimask: Return 3 masks per prompt instead of 1.
            upsample: Also return `logits` at the original image size.

        Returns:
            `MaskPrediction` shaped `(B, K, M, ...)`.
        """
        return self.predict(self.encode(images), prompts, multimask=multimask, upsample=upsample)


class SamBackbone(_SamPipeline):
    """SAM's image encoder, prompt encoder and mask decoder with a batched, differentiable API.

    The three components are segment_anything modules (so official checkpoints load with their
    own keys `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`); the pipeline around them
    is re-implemented on tensors so that it handles `B` images with `K` prompts each, keeps
    gradients, and returns the decoder's mask tokens. Numerically it equals
    `segment_anything.SamPredictor.predict_torch` on one image.

    Examples:
        >>> sam = build_sam_backbone("tiny")
        >>> emb = sam.encode(torch.rand(2, 3, 96, 128))
        >>> emb.embeddings.shape
        torch.Size([2, 32, 16, 16])
        >>> prompts = Prompts(points=torch.rand(2, 5, 1, 2) * 96, labels=torch.ones(2, 5, 1))
        >>> pred = sam.predict(emb, prompts, multimask=True)
        >>> pred.low_res_logits.shape, pred.logits.shape, pred.tokens.shape
        (torch.Size([2, 5, 3, 64, 64]), torch.Size([2, 5, 3, 96, 128]), torch.Size([2, 5, 3, 32]))
    """

    mask_threshold: float = 0.0
    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        *,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        img_size: int | None = None,
    ) -> None:
        """Wrap already built SAM components.

        Args:
            image_encoder: A segment_anything `ImageEncoderViT` (or a module with the same
                `img_size` attribute that maps `(B, 3, S, S)` to `(B, D, h, w)`).
            prompt_encoder: A segment_anything `PromptEncoder`.
            mask_decoder: A segment_anything `MaskDecoder`.
            pixel_mean: Per-channel mean on the 0-255 scale.
            pixel_std: Per-channel std on the 0-255 scale.
            img_size: Side `S` of the prompt frame; by default the encoder's `img_size`
                (an encoder that takes another input size overrides `preprocess`).
        """
        super().__init__()
        self.image_encoder: ImageEncoderViT = image_encoder
        self.prompt_encoder: PromptEncoder = prompt_encoder
        self.mask_decoder: MaskDecoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        side = image_encoder.img_size if img_size is None else img_size
        self.img_size: int = int(side)  # type: ignore[arg-type]
        self.prompt_dim: int = int(prompt_encoder.embed_dim)  # type: ignore[arg-type]
        grid = prompt_encoder.image_embedding_size
        self.embedding_size: tuple[int, int] = (int(grid[0]), int(grid[1]))  # type: ignore[index]

    # ------------------------------------------------------------------ building / weights

    @property
    def num_multimask_outputs(self) -> int:
        """Number of masks `M` returned with `multimask=True` (3 for SAM)."""
        return int(self.mask_decoder.num_multimask_outputs)  # type: ignore[arg-type]

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Load an official SAM checkpoint (`.pth` or `.safetensors`) strictly, on the CPU first.

        Args:
            path: Local file with keys `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`.

        Raises:
            FileNotFoundError: If `path` does not exist (nothing is ever downloaded).
            RuntimeError: Listing the missing and unexpected keys, or on a shape mismatch.
        """
        load_strict(self, read_state_dict(path), source=repr(str(path)))

    def to_segment_anything(self) -> Sam:
        """A `segment_anything.modeling.Sam` that shares this backbone's modules (not copies).

        Useful to run upstream tools (`SamPredictor`, `SamAutomaticMaskGenerator`) on the same
        weights.
        """
        sam = Sam(
            image_encoder=self.image_encoder,  # type: ignore[arg-type]
            prompt_encoder=self.prompt_encoder,  # type: ignore[arg-type]
            mask_decoder=self.mask_decoder,  # type: ignore[arg-type]
            pixel_mean=self.pixel_mean.flatten().tolist(),
            pixel_std=self.pixel_std.flatten().tolist(),
        )
        return sam.to(self.device).train(self.training)

    # ------------------------------------------------------------------ frames

    def _resized_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        h, w = ResizeLongestSide.get_preprocess_shape(
            int(original_size[0]), int(original_size[1]), self.img_size
        )
        return int(h), int(w)

    def preprocess(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Resize the long side to `img_size`, normalise with SAM's statistics, pad bottom/right.

        The resize is bilinear with antialiasing, as `ResizeLongestSide.apply_image_torch`.

        Args:
            images: RGB images `(B, 3, H, W)`: float (any float dtype) in `[0, 1]`, or uint8 in
                `[0, 255]` (what `torchvision.io.read_image` gives), which is divided by 255.

        Returns:
            The model input `(B, 3, S, S)` (`S = img_size`) in float32 (float64 for a float64
            model) and `input_size = (h_in, w_in)`, the size of the resized image inside the
            padded square.

        Raises:
            ValueError: If `images` is not `(B, 3, H, W)`, has NaN/Inf pixels or float values
                outside `[0, 1]`.
            TypeError: If `images` is neither uint8 nor floating.
        """
        return _letterbox(images, self.img_size, self.pixel_mean, self.pixel_std)

    def transform_coords(self, coords: Tensor, original_size: tuple[int, int]) -> Tensor:
        """Map `(x, y)` pixel coordinates from the original frame to the SAM input frame.

        Args:
            coords: Coordinates `(..., 2)` in the original image of size `original_size`.
            original_size: `(H, W)` of the original image.

        Returns:
            Float coordinates `(..., 2)` in the SAM input frame.
        """
        check_shape(coords, "... 2", name="coords")
        new_h, new_w = self._resized_size(original_size)
        scale = torch.tensor(
            [new_w / original_size[1], new_h / original_size[0]], device=coords.device
        )
        out = coords.float() if not coords.is_floating_point() else coords
        return out * scale.to(out.dtype)

    def transform_boxes(self, boxes: Tensor, original_size: tuple[int, int]) -> Tensor:
        """Map `(x0, y0, x1, y1)` boxes from the original frame to the SAM input frame.

        Args:
            boxes: Boxes `(..., 4)` in the original image of size `original_size`.
            original_size: `(H, W)` of the original image.

        Returns:
            Float boxes `(..., 4)` in the SAM input frame.
        """
        check_shape(boxes, "... 4", name="boxes")
        corners = rearrange(boxes, "... (c two) -> ... c two", two=2)
        return rearrange(self.transform_coords(corners, original_size), "... c two -> ... (c two)")

    def postprocess_masks(
        self, masks: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Tensor:
        """Upscale low-res masks to `img_size`, crop the padding, resize to the original size.

        Same as `segment_anything.modeling.Sam.postprocess_masks`, for any leading axes.

        Args:
            masks: Mask logits `(..., 4h, 4w)`.
            input_size: `(h_in, w_in)` of the resized image inside the padded square.
            original_size: `(H, W)` of the original image.

        Returns:
            Mask logits `(..., H, W)`.
        """
        check_shape(masks, "... h w", name="masks")
        lead = masks.shape[:-2]
        x = masks.reshape(math.prod(lead), 1, *masks.shape[-2:])
        x = F.interpolate(x, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        x = x[..., : input_size[0], : input_size[1]]
        x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
        return x.reshape(*lead, *x.shape[-2:])

    # ------------------------------------------------------------------ encoder

    def encode(self, images: Tensor, *, intermediates: Sequence[int] = ()) -> ImageEmbedding:
        """Embed a batch of equally sized images.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` (any float dtype) or uint8 in
                `[0, 255]` (divided by 255). `B = 0` gives empty embeddings `(0, D, h, w)`
                without running the encoder.
            intermediates: Indices of ViT blocks whose outputs to keep (HQ-SAM uses the global
                attention blocks, e.g. `(2, 5, 8, 11)` for `vit_b`); negative indices count from
                the end.

        Returns:
            `ImageEmbedding` with `embeddings (B, D, h, w)`, `input_size`, `original_size` and
            `intermediates`, one `(B, D_vit, h, w)` per requested block.

        Raises:
            ValueError: If `images` is not `(B, 3, H, W)`, is not a valid image (NaN/Inf, float
                values outside `[0, 1]`) or a block index is out of range.
        """
        sizes = check_shape(images, "B 3 H W", name="images")
        depth = len(self.image_encoder.blocks)
        bad = [i for i in intermediates if not -depth <= i < depth]
        if bad:
            raise ValueError(
                f"intermediates: expected block indices in [{-depth}, {depth}), got {bad}"
            )
        x, input_size = self.preprocess(images)
        weight = self.image_encoder.patch_embed.proj.weight
        if sizes["B"] == 0:  # segment_anything's window attention cannot reshape an empty batch
            return self._empty_embedding(
                weight, input_size, (sizes["H"], sizes["W"]), len(intermediates)
            )
        x = x.to(_compute_dtype(x, weight))
        taps: list[Tensor] = []
        if intermediates:
            out, taps = encoder_forward(self.image_encoder, x, intermediates)
        else:
            out = self.image_encoder(x)
        return ImageEmbedding(
            embeddings=out,
            input_size=input_size,
            original_size=(sizes["H"], sizes["W"]),
            intermediates=taps,
        )

    def _empty_embedding(
        self,
        weight: Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        num_taps: int,
    ) -> ImageEmbedding:
        """The `ImageEmbedding` of an empty batch: `(0, D, h, w)`, taps `(0, D_vit, h, w)`."""
        h, w = self.embedding_size
        width = int(weight.shape[0])  # ViT width D_vit
        return ImageEmbedding(
            embeddings=weight.new_zeros(0, self.prompt_dim, h, w),
            input_size=input_size,
            original_size=original_size,
            intermediates=[weight.new_zeros(0, width, h, w) for _ in range(num_taps)],
        )

    # ------------------------------------------------------------------ prompts

    def dense_pe(self) -> Tensor:
        """Positional encoding of the embedding grid, `(1, D, h, w)` (SAM's `get_dense_pe`)."""
        return dense_positional_encoding(self.prompt_encoder)

    def embed_prompts(
        self, prompts: Prompts, *, batch_shape: tuple[int, int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Embed `K` prompt slots per image, as SAM's `PromptEncoder` does, batched over `(B, K)`.

        Points come first (with SAM's padding point when no box is given), then the two box
        corners, then `prompts.sparse_embeddings`. The dense embedding is the encoded mask input,
        `prompts.dense_embeddings` when given, or SAM's `no_mask_embed` everywhere.

        Args:
            prompts: Prompts in the SAM input frame, leading axes `(B, K)`.
            batch_shape: `(B, K)` to use when `prompts` is empty (every slot then gets no sparse
                tokens and the `no_mask_embed` dense embedding).

        Returns:
            `sparse (B, K, N, D)` (`N` may be 0) and `dense (B, K, D, h, w)`.

        Raises:
            ValueError: If `prompts` is empty and no `batch_shape` is given, a tensor has the
                wrong size, or a point label is not -1, 0 or 1.
        """
        shape = prompts.batch_shape or batch_shape
        if shape is None:
            raise ValueError("embed_prompts: prompts are empty; pass batch_shape=(B, K)")
        b, k = shape
        d = self.prompt_dim
        h, w = self.embedding_size
        weight = self.prompt_encoder.no_mask_embed.weight
        parts: list[Tensor] = []
        if prompts.points is not None and prompts.labels is not None:
            _check_point_labels(prompts.labels, name="prompts.labels")
            pad = prompts.boxes is None
            parts.append(embed_points(self.prompt_encoder, prompts.points, prompts.labels, pad=pad))
        if prompts.boxes is not None:
            parts.append(embed_boxes(self.prompt_encoder, prompts.boxes))
        if prompts.sparse_embeddings is not None:
            check_shape(
                prompts.sparse_embeddings, "B K N D", name="sparse_embeddings", known={"D": d}
            )
            parts.append(
                as_float(prompts.sparse_embeddings, name="sparse_embeddings", dtype=weight.dtype)
            )
        sparse = torch.cat(parts, dim=2) if parts else weight.new_zeros(b, k, 0, d)
        if prompts.dense_embeddings is not None:
            check_shape(
                prompts.dense_embeddings,
                "B K D h w",
                name="dense_embeddings",
                known={"D": d, "h": h, "w": w},
            )
            dense = as_float(prompts.dense_embeddings, name="dense_embeddings", dtype=weight.dtype)
        elif prompts.masks is not None:
            check_shape(prompts.masks, "B K 1 H W", name="masks", known={"H": 4 * h, "W": 4 * w})
            masks = prompts.masks
            masks = masks.to(weight.dtype) if masks.dtype == torch.bool else masks
            masks = as_float(masks, name="prompts.masks", dtype=weight.dtype)
            flat = rearrange(masks, "b k c H W -> (b k) c H W")
            dense = rearrange(
                self.prompt_encoder.mask_downscaling(flat), "(b k) d h w -> b k d h w", b=b, k=k
            )
        else:
            dense = repeat(weight[0], "d -> b k d h w", b=b, k=k, h=h, w=w)
        return sparse, dense

    # ------------------------------------------------------------------ decoder

    def decode(
        self,
        embedding: ImageEmbedding,
        sparse: Tensor,
        dense: Tensor,
        *,
        multimask: bool = False,
        upsample: bool = True,
    ) -> MaskPrediction:
        """Decode `K` prompts on each of `B` images (SAM's `MaskDecoder.predict_masks`, batched).

        Each image embedding is repeated for its own `K` prompts, so `B > 1` is handled correctly
        (the upstream decoder assumes one image per call). Differentiable.

        Args:
            embedding: Image embeddings `(B, D, h, w)` with their sizes.
            sparse: Sparse prompt tokens `(B, K, N, D)`.
            dense: Dense prompt embeddings `(B, K, D, h, w)`.
            multimask: Return SAM's 3 ambiguity masks (tokens 1..3) instead of the single mask
                (token 0).
            upsample: Also return `logits` at the original image size.

        Returns:
            `MaskPrediction` with `low_res_logits (B, K, M, 4h, 4w)`, `iou_scores (B, K, M)`,
            `tokens (B, K, M, D)` (the decoder's mask tokens) and, with `upsample`,
            `logits (B, K, M, H, W)`; `M` is 3 with `multimask`, else 1.

        Raises:
            ValueError: If the shapes of `embedding`, `sparse` and `dense` disagree.
        """
        weight = self.mask_decoder.iou_token.weight
        _, emb, sparse, dense = self._decoder_inputs(embedding, sparse, dense, weight=weight)
        masks, iou, mask_tokens = predict_masks_batched(
            self.mask_decoder, emb, self.dense_pe(), sparse, dense
        )
        sel = slice(1, None) if multimask else slice(0, 1)
        return self._mask_prediction(
            embedding, masks[:, :, sel], iou[:, :, sel], mask_tokens[:, :, sel], upsample=upsample
        )


def build_sam_backbone(
    variant: str | SamVariantSpec = "vit_b",
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    pretrained: bool = True,
) -> SamBackbone | Sam2Backbone:
    """Build a SAM backbone from segment_anything's classes, optionally loading local weights.

    Variants: `vit_b`, `vit_l`, `vit_h` (official hyper-parameters: 1024 px input, 16 px patches,
    64x64 embedding grid, `D = 256`); `tiny-synth` (128 px input, 8 px patches, a 128-d 4-block
    ViT, `D = 128`, 1.6 M parameters) with the weights samkit ships, pretrained on generated
    scenes by `samkit pretrain sam` (see `docs/pretrained.md`); and two random-weight presets
    for tests: `tiny` (128 px input, 16x16 grid, `D = 32`, 64x64 low-res masks) and `small` (the
    same encoder shape with a 64-d ViT and `D = 128`). Any other size: pass a `SamVariantSpec`.
    Without a checkpoint (and for `tiny-synth` with `pretrained=False`) the weights are random.
    The model is returned in eval mode with every parameter trainable; use `SamBackbone.freeze`
    to freeze parts.

    Other SAM families are built by name with their own builders, each behind a samkit extra
    (see `docs/backbones/sam-backends.md`): SAM 2 (`sam2.1_hiera_tiny`, ..., `sam2-tiny-random`;
    `build_sam2_backbone`, extra `sam2`), HQ-SAM (`hq_vit_b`, ..., `hq-tiny-random`;
    `build_hq_sam_backbone`, extra `hq`), MobileSAM (`mobile_sam`, `mobile_sam-tiny-random`;
    `build_mobile_sam_backbone`, extra `hq`) and EfficientViT-SAM (`efficientvit_sam_l0`, ...,
    `efficientvit_sam_xl1`, `efficientvit_sam-tiny-random`; `build_efficientvit_sam_backbone`,
    extra `efficientvit`).

    Args:
        variant: A preset name (`"vit_b"`, `"vit_l"`, `"vit_h"`, `"tiny-synth"`, `"tiny"`,
            `"small"`), a `SamVariantSpec` for a custom size, or a variant of another family.
        checkpoint: Path of a checkpoint of that variant (`.pth` or `.safetensors`), loaded
            strictly with `weights_only=True`. Never downloaded.
        pretrained: Load the shipped weights of a preset that has them (`tiny-synth`), checked
            against their recorded SHA-256; ignored when `checkpoint` is given.

    Returns:
        The `SamBackbone`, on the CPU, in eval mode.

    Raises:
        ValueError: For an unknown variant, or shipped weights whose checksum does not match.
        ImportError: For another family's variant whose upstream package is missing (the
            message names the samkit extra to install).
        FileNotFoundError: If `checkpoint` does not exist.
        RuntimeError: If the checkpoint's keys or shapes do not match the variant.

    Examples:
        >>> sam = build_sam_backbone("tiny")
        >>> sam.img_size, sam.prompt_dim, sam.embedding_size
        (128, 32, (16, 16))
        >>> from dataclasses import replace
        >>> spec = replace(SAM_VARIANTS["tiny"], encoder_depth=3, encoder_global_attn_indexes=(2,))
        >>> len(build_sam_backbone(spec).image_encoder.blocks)
        3
    """
    if isinstance(variant, SamVariantSpec):
        spec = variant
    elif variant in SAM_VARIANTS:
        spec = SAM_VARIANTS[variant]
    else:
        from samkit.backbones._families import build_family_backbone, family_variants

        other = build_family_backbone(variant, checkpoint)
        if other is None:
            known = {"SAM": sorted(SAM_VARIANTS), **family_variants()}
            raise ValueError(f"unknown SAM variant {variant!r}; expected one of {known}")
        return other  # type: ignore[return-value]
    image_encoder, prompt_encoder, mask_decoder = build_sam_parts(spec)
    sam = SamBackbone(
        image_encoder=image_encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder
    )
    if checkpoint is not None:
        sam.load_checkpoint(checkpoint)
    elif pretrained and isinstance(variant, str) and f"sam/{variant}" in SHIPPED_PRESETS:
        key = f"sam/{variant}"
        load_strict(sam, shipped_state_dict(key), source=f"shipped {key}")
    return sam.eval()
