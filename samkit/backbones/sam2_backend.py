"""SAM 2 (Hiera image encoder) as a samkit `SamLike` backend: the image path only.

`build_sam2_backbone(variant, checkpoint=None)` builds the `sam2` package's own modules (the
Hiera trunk and FPN neck, the prompt encoder and the mask decoder, with the hyper-parameters of
its `configs/sam2.1/*.yaml` and `SAM2Base._build_sam_heads`) and wraps them in `Sam2Backbone`,
which runs SAM 2's single-image pipeline (`SAM2ImagePredictor`) on batches, with gradients:

    images (B, 3, H, W) in [0, 1] (or uint8)
      -> squash to (S, S), ImageNet mean/std -> Hiera + FPN
      -> ImageEmbedding: embeddings (B, D, h, w) (+ no_mem_embed),
         intermediates = [feat_s0 (B, D/8, 4h, 4w), feat_s1 (B, D/4, 2h, 2w)]
      -> embed_prompts -> decode (high-resolution features fused into the upscaling)
      -> MaskPrediction (B, K, M, 4h, 4w)

SAM 2's behaviours that differ from SAM and are followed here (see
`docs/backbones/sam-backends.md`):

* The image is resized to the square `S x S` **without keeping the aspect ratio** and without
  padding, so `input_size` is `(S, S)` and prompts are scaled by `S / W` and `S / H`.
* Pixels are normalised on the 0-1 scale with ImageNet statistics.
* `no_mem_embed` is added to the lowest-resolution feature map (`directly_add_no_mem_embed`).
* The two high-resolution FPN levels go through the decoder's `conv_s0` / `conv_s1` at encoding
  time (as `SAM2Base.forward_image`) and are added inside the mask upscaling.
* Boxes are encoded as two corner points placed *before* the clicks, and a padding point is
  always appended (the predictor passes boxes to the prompt encoder as points).
* The IoU head ends in a sigmoid; an object-score token leads the decoder tokens (its logit is
  not returned, as in `SAM2ImagePredictor`).
* Single-mask output (`multimask=False`) in eval mode falls back to the best of the three
  multimask outputs when the single mask is unstable (`dynamic_multimask_via_stability`, on in
  `build_sam2`): set `Sam2Backbone.dynamic_multimask = False` to turn it off.
* `SAM2ImagePredictor` clamps the low-resolution logits it returns to `[-32, 32]`; samkit does
  not (the clamp would cut gradients). Upsampled `logits` are unclamped in both.
"""

# b - images in a batch (B)
# k - prompts per image (K)
# n - tokens / points per prompt (N)
# m - masks per prompt (M)
# d - channels (D); c - channels of the upscaled mask features
# h w - embedding grid; H W - image pixels or the upscaled grid where stated

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from samkit._checks import as_float, as_image, check_shape
from samkit.backbones._optional import import_optional
from samkit.backbones._sam_build import load_strict, read_state_dict
from samkit.backbones._sam_ops import dense_positional_encoding, embed_boxes, embed_points
from samkit.backbones.sam import _check_point_labels, _compute_dtype, _SamPipeline
from samkit.types import ImageEmbedding, MaskPrediction, Prompts

__all__ = ["SAM2_VARIANTS", "Sam2Backbone", "Sam2VariantSpec", "build_sam2_backbone"]

EXTRA = "sam2"
INSTALL_HINT = (
    "The sam2 wheel pins its own torch; to keep yours: "
    "pip install --no-deps sam2 hydra-core iopath omegaconf antlr4-python3-runtime"
)

# ImageNet statistics on the 0-1 scale (sam2/utils/transforms.py:SAM2Transforms).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Parameters of the official SAM 2 checkpoints that only the video path uses (memory attention,
# memory encoder, object pointers, temporal encodings); `load_checkpoint` drops exactly these.
VIDEO_ONLY_KEYS = (
    "memory_attention.",
    "memory_encoder.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "mask_downsample.",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "no_obj_ptr",
    "no_obj_embed_spatial",
)
# Official checkpoint prefix -> samkit attribute.
_RENAMES = (("sam_prompt_encoder.", "prompt_encoder."), ("sam_mask_decoder.", "mask_decoder."))


@dataclass(frozen=True)
class Sam2VariantSpec:
    """Hyper-parameters of one SAM 2 image path (the fields SAM 2's configs vary).

    The prompt encoder and mask decoder constants (`mask_in_chans=16`, a 2-layer two-way
    transformer with an MLP of 2048 and 8 heads, an IoU head of width 256) are those of
    `SAM2Base._build_sam_heads` for every variant.
    """

    image_size: int  # S: side of the square model input (1024 for the official models)
    embed_dim: int  # Hiera width of the first stage (doubles at each stage)
    num_heads: int  # Hiera heads of the first stage (double at each stage)
    stages: tuple[int, ...]  # Hiera blocks per stage
    global_att_blocks: tuple[int, ...]  # Hiera blocks with global attention
    window_spec: tuple[int, ...]  # window size per stage for the other blocks
    window_pos_embed_bkg_spatial_size: tuple[int, int]  # background positional embedding size
    prompt_dim: int = 256  # D: FPN width, prompt and decoder tokens

    @property
    def channel_list(self) -> list[int]:
        """Widths of the Hiera stages, deepest first (`Hiera.channel_list`)."""
        return [self.embed_dim * 2**i for i in reversed(range(len(self.stages)))]


_HIERA_T = Sam2VariantSpec(1024, 96, 1, (1, 2, 7, 2), (5, 7, 9), (8, 4, 14, 7), (7, 7))
_HIERA_S = Sam2VariantSpec(1024, 96, 1, (1, 2, 11, 2), (7, 10, 13), (8, 4, 14, 7), (7, 7))
_HIERA_B = Sam2VariantSpec(1024, 112, 2, (2, 3, 16, 3), (12, 16, 20), (8, 4, 14, 7), (14, 14))
_HIERA_L = Sam2VariantSpec(1024, 144, 2, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8), (7, 7))

SAM2_VARIANTS: dict[str, Sam2VariantSpec] = {
    # SAM 2.1 and SAM 2 share the image path; only their video modules differ.
    "sam2.1_hiera_tiny": _HIERA_T,
    "sam2.1_hiera_small": _HIERA_S,
    "sam2.1_hiera_base_plus": _HIERA_B,
    "sam2.1_hiera_large": _HIERA_L,
    "sam2_hiera_tiny": _HIERA_T,
    "sam2_hiera_small": _HIERA_S,
    "sam2_hiera_base_plus": _HIERA_B,
    "sam2_hiera_large": _HIERA_L,
    # Random weights for tests: 256 px input, a 5-block Hiera of width 16, D = 32, a 16x16
    # embedding grid and 64x64 low-res masks (the grid of SAM's "tiny").
    "sam2-tiny-random": Sam2VariantSpec(256, 16, 1, (1, 1, 2, 1), (3,), (8, 4, 4, 2), (4, 4), 32),
}
"""SAM 2 presets by name: the official checkpoints' file stems, plus `sam2-tiny-random`."""


def _sam2_modules() -> dict[str, Any]:
    """The sam2 classes the backbone is built from (raises naming the `sam2` extra)."""
    what = "SAM 2 backbones"
    hiera = import_optional(
        "sam2.modeling.backbones.hieradet", extra=EXTRA, what=what, install=INSTALL_HINT
    )
    encoder = import_optional("sam2.modeling.backbones.image_encoder", extra=EXTRA, what=what)
    position = import_optional("sam2.modeling.position_encoding", extra=EXTRA, what=what)
    prompt = import_optional("sam2.modeling.sam.prompt_encoder", extra=EXTRA, what=what)
    decoder = import_optional("sam2.modeling.sam.mask_decoder", extra=EXTRA, what=what)
    transformer = import_optional("sam2.modeling.sam.transformer", extra=EXTRA, what=what)
    return {
        "Hiera": hiera.Hiera,
        "ImageEncoder": encoder.ImageEncoder,
        "FpnNeck": encoder.FpnNeck,
        "PositionEmbeddingSine": position.PositionEmbeddingSine,
        "PromptEncoder": prompt.PromptEncoder,
        "MaskDecoder": decoder.MaskDecoder,
        "TwoWayTransformer": transformer.TwoWayTransformer,
    }


def build_sam2_parts(spec: Sam2VariantSpec) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Build SAM 2's image encoder, prompt encoder and mask decoder for `spec`.

    Mirrors `configs/sam2.1/sam2.1_hiera_*.yaml` (scalp 1, FPN top-down levels 2 and 3 with
    nearest interpolation) and `SAM2Base._build_sam_heads` with `build_sam2`'s
    post-processing switches (dynamic multimask via stability, delta 0.05, threshold 0.98).
    """
    m = _sam2_modules()
    d = spec.prompt_dim
    trunk = m["Hiera"](
        embed_dim=spec.embed_dim,
        num_heads=spec.num_heads,
        stages=spec.stages,
        global_att_blocks=spec.global_att_blocks,
        window_spec=spec.window_spec,
        window_pos_embed_bkg_spatial_size=spec.window_pos_embed_bkg_spatial_size,
    )
    neck = m["FpnNeck"](
        position_encoding=m["PositionEmbeddingSine"](
            num_pos_feats=d, normalize=True, scale=None, temperature=10000
        ),
        d_model=d,
        backbone_channel_list=spec.channel_list,
        fpn_top_down_levels=[2, 3],
        fpn_interp_model="nearest",
    )
    image_encoder = m["ImageEncoder"](trunk=trunk, neck=neck, scalp=1)
    grid = spec.image_size // 16  # SAM2Base.backbone_stride
    prompt_encoder = m["PromptEncoder"](
        embed_dim=d,
        image_embedding_size=(grid, grid),
        input_image_size=(spec.image_size, spec.image_size),
        mask_in_chans=16,
    )
    mask_decoder = m["MaskDecoder"](
        num_multimask_outputs=3,
        transformer=m["TwoWayTransformer"](depth=2, embedding_dim=d, mlp_dim=2048, num_heads=8),
        transformer_dim=d,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
        use_high_res_features=True,
        iou_prediction_use_sigmoid=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        use_multimask_token_for_obj_ptr=True,
        dynamic_multimask_via_stability=True,
        dynamic_multimask_stability_delta=0.05,
        dynamic_multimask_stability_thresh=0.98,
    )
    return image_encoder, prompt_encoder, mask_decoder


def convert_sam2_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an official SAM 2 state dict onto `Sam2Backbone`'s keys.

    `sam_prompt_encoder.*` / `sam_mask_decoder.*` become `prompt_encoder.*` / `mask_decoder.*`;
    the video-only parameters in `VIDEO_ONLY_KEYS` are dropped; every other key is kept as is,
    so that a strict load reports anything unexpected. A state dict already in samkit's layout
    passes through unchanged.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(VIDEO_ONLY_KEYS):
            continue
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


class Sam2Backbone(_SamPipeline):
    """SAM 2's image encoder, prompt encoder and mask decoder with samkit's batched API.

    Implements `samkit.backbones.sam.SamLike`. The components are `sam2` modules, so official
    `sam2.1_hiera_*.pt` checkpoints load (their video-only parameters are dropped, everything
    else strictly). Numerically it equals `sam2.SAM2ImagePredictor` on one image (pinned by
    `tests/backbones/test_sam2_backend.py`), and it handles `B` images with `K` prompts each.

    `freeze`: `no_mem_embed` follows the image encoder; the decoder's `conv_s0` / `conv_s1`
    (which `encode` applies to the high-resolution features) follow the mask decoder.

    Examples:
        >>> sam = build_sam2_backbone("sam2-tiny-random")
        >>> emb = sam.encode(torch.rand(2, 3, 96, 128))
        >>> emb.embeddings.shape, [t.shape[1:] for t in emb.intermediates]
        (torch.Size([2, 32, 16, 16]), [torch.Size([4, 64, 64]), torch.Size([8, 32, 32])])
        >>> prompts = Prompts(points=torch.rand(2, 5, 1, 2) * 96, labels=torch.ones(2, 5, 1))
        >>> pred = sam.predict(emb, prompts, multimask=True)
        >>> pred.low_res_logits.shape, pred.logits.shape, pred.tokens.shape
        (torch.Size([2, 5, 3, 64, 64]), torch.Size([2, 5, 3, 96, 128]), torch.Size([2, 5, 3, 32]))
    """

    pixel_std: Tensor
    _frozen_with: ClassVar[dict[str, tuple[str, ...]]] = {"image_encoder": ("no_mem_embed",)}

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        no_mem_embed: Tensor | None = None,
        dynamic_multimask: bool = True,
    ) -> None:
        """Wrap already built SAM 2 components.

        Args:
            image_encoder: A sam2 `ImageEncoder` (Hiera trunk + FPN neck, `scalp=1`).
            prompt_encoder: A sam2 `PromptEncoder`.
            mask_decoder: A sam2 `MaskDecoder` with `use_high_res_features=True`.
            no_mem_embed: Initial value `(1, 1, D)` of the token added to the image embedding;
                `None` draws it as `SAM2Base` does (truncated normal, std 0.02).
            dynamic_multimask: Follow SAM 2's single-mask fallback to the best multimask output
                when the single mask is unstable (eval mode only, as upstream).
        """
        super().__init__()
        if not getattr(mask_decoder, "use_high_res_features", False):
            raise ValueError("mask_decoder: expected a sam2 MaskDecoder with high-res features")
        # typed Any: sam2 ships no type information
        self.image_encoder: Any = image_encoder
        self.prompt_encoder: Any = prompt_encoder
        self.mask_decoder: Any = mask_decoder
        d = int(prompt_encoder.embed_dim)  # type: ignore[arg-type]
        if no_mem_embed is None:
            no_mem_embed = nn.init.trunc_normal_(torch.zeros(1, 1, d), std=0.02)
        self.no_mem_embed = nn.Parameter(no_mem_embed.detach().clone())
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(-1, 1, 1), False)
        size = prompt_encoder.input_image_size
        self.img_size: int = int(size[0])  # type: ignore[index]
        self.prompt_dim: int = d
        grid = prompt_encoder.image_embedding_size
        self.embedding_size: tuple[int, int] = (int(grid[0]), int(grid[1]))  # type: ignore[index]
        self.dynamic_multimask = dynamic_multimask

    # ------------------------------------------------------------------ building / weights

    @property
    def num_multimask_outputs(self) -> int:
        """Number of masks `M` returned with `multimask=True` (3)."""
        return int(self.mask_decoder.num_multimask_outputs)  # type: ignore[arg-type]

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Load an official SAM 2 checkpoint (`sam2.1_hiera_*.pt`, weights under `"model"`).

        The file is read with `torch.load(weights_only=True)` (or safetensors) on the CPU; the
        video-only parameters are dropped (`VIDEO_ONLY_KEYS`) and the rest is loaded strictly.

        Args:
            path: Local checkpoint file; never downloaded.

        Raises:
            FileNotFoundError: If `path` does not exist.
            RuntimeError: Listing missing and unexpected keys, or on a shape mismatch (e.g. the
                checkpoint of another variant).
        """
        state = convert_sam2_state_dict(read_state_dict(path))
        load_strict(self, state, source=repr(str(path)))

    # ------------------------------------------------------------------ frames

    def preprocess(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Resize to `(S, S)` (aspect ratio not kept) and normalise with ImageNet statistics.

        The resize is bilinear with antialiasing, as torchvision's `Resize` in `SAM2Transforms`.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8 (divided by 255).

        Returns:
            The model input `(B, 3, S, S)` (float32, float64 for a float64 model) and
            `input_size = (S, S)`: SAM 2 does not pad.

        Raises:
            ValueError: If `images` is not a valid `(B, 3, H, W)` image batch.
            TypeError: If `images` is neither uint8 nor floating.
        """
        sizes = check_shape(images, "B 3 H W", name="images")
        s = self.img_size
        work = torch.float64 if self.pixel_mean.dtype == torch.float64 else torch.float32
        x = as_image(images, name="images", dtype=work)
        if (sizes["H"], sizes["W"]) != (s, s) and sizes["B"] > 0:
            x = F.interpolate(x, (s, s), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.pixel_mean.to(work)) / self.pixel_std.to(work)
        return x, (s, s)

    def transform_coords(self, coords: Tensor, original_size: tuple[int, int]) -> Tensor:
        """Map `(x, y)` pixels of an `original_size` image to the `(S, S)` input frame.

        Args:
            coords: Coordinates `(..., 2)`.
            original_size: `(H, W)` of the original image.

        Returns:
            Float coordinates `(..., 2)`: `x * S / W`, `y * S / H`.
        """
        check_shape(coords, "... 2", name="coords")
        s = self.img_size
        scale = torch.tensor([s / original_size[1], s / original_size[0]], device=coords.device)
        out = coords.float() if not coords.is_floating_point() else coords
        return out * scale.to(out.dtype)

    def transform_boxes(self, boxes: Tensor, original_size: tuple[int, int]) -> Tensor:
        """Map `(x0, y0, x1, y1)` boxes `(..., 4)` to the `(S, S)` input frame."""
        check_shape(boxes, "... 4", name="boxes")
        corners = rearrange(boxes, "... (c two) -> ... c two", two=2)
        return rearrange(self.transform_coords(corners, original_size), "... c two -> ... (c two)")

    def postprocess_masks(
        self, masks: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Tensor:
        """Resize low-res masks `(..., 4h, 4w)` straight to `original_size` (no padding to crop).

        Same as `SAM2Transforms.postprocess_masks` without its optional hole filling.

        Args:
            masks: Mask logits `(..., 4h, 4w)`.
            input_size: Must be `(S, S)`: SAM 2 squashes the image, it does not pad it.
            original_size: `(H, W)` of the original image.

        Returns:
            Mask logits `(..., H, W)`.

        Raises:
            ValueError: If `input_size` is not `(S, S)`.
        """
        check_shape(masks, "... h w", name="masks")
        s = self.img_size
        if tuple(input_size) != (s, s):
            raise ValueError(f"input_size: SAM 2 inputs are not padded, expected {(s, s)}")
        lead = masks.shape[:-2]
        x = masks.reshape(math.prod(lead), 1, *masks.shape[-2:])
        x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
        return x.reshape(*lead, *x.shape[-2:])

    # ------------------------------------------------------------------ encoder

    def encode(self, images: Tensor) -> ImageEmbedding:
        """Embed a batch of equally sized images (`SAM2ImagePredictor.set_image_batch`).

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8.

        Returns:
            `ImageEmbedding` with `embeddings (B, D, h, w)` (the stride-16 FPN level plus
            `no_mem_embed`), `input_size = (S, S)`, `original_size` and `intermediates =
            [feat_s0 (B, D/8, 4h, 4w), feat_s1 (B, D/4, 2h, 2w)]`, the high-resolution levels
            already projected by the decoder's `conv_s0` / `conv_s1`.

        Raises:
            ValueError: If `images` is not a valid `(B, 3, H, W)` image batch.
        """
        sizes = check_shape(images, "B 3 H W", name="images")
        x, input_size = self.preprocess(images)
        original = (sizes["H"], sizes["W"])
        weight = self.no_mem_embed
        if sizes["B"] == 0:
            h, w = self.embedding_size
            d = self.prompt_dim
            return ImageEmbedding(
                embeddings=weight.new_zeros(0, d, h, w),
                input_size=input_size,
                original_size=original,
                intermediates=[
                    weight.new_zeros(0, d // 8, 4 * h, 4 * w),
                    weight.new_zeros(0, d // 4, 2 * h, 2 * w),
                ],
            )
        x = x.to(_compute_dtype(x, weight))
        fpn = self.image_encoder(x)["backbone_fpn"]  # strides 4, 8, 16
        dec = self.mask_decoder
        feat_s0 = dec.conv_s0(fpn[0])
        feat_s1 = dec.conv_s1(fpn[1])
        emb = fpn[2] + rearrange(weight, "1 1 d -> 1 d 1 1").to(fpn[2].dtype)
        return ImageEmbedding(
            embeddings=emb,
            input_size=input_size,
            original_size=original,
            intermediates=[feat_s0, feat_s1],
        )

    # ------------------------------------------------------------------ prompts

    def dense_pe(self) -> Tensor:
        """Positional encoding of the embedding grid, `(1, D, h, w)` (`get_dense_pe`).

        Computed as SAM's (`_sam_ops.dense_positional_encoding`: float32 Fourier features, in
        the prompt encoder's dtype), so a bfloat16 model works (`get_dense_pe` multiplies
        float32 coordinates by the bfloat16 Gaussian matrix and fails).
        """
        return dense_positional_encoding(self.prompt_encoder)  # type: ignore[arg-type]

    def embed_prompts(
        self, prompts: Prompts, *, batch_shape: tuple[int, int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Embed `K` prompt slots per image, in SAM 2's token order, batched over `(B, K)`.

        Tokens: the two box corners (if any), the points (if any), then a padding point
        whenever a box or a point was given (SAM 2's predictor always pads), then
        `prompts.sparse_embeddings`. Dense: the encoded mask input, `prompts.dense_embeddings`,
        or `no_mask_embed` everywhere.

        Args:
            prompts: Prompts in the `(S, S)` input frame, leading axes `(B, K)`.
            batch_shape: `(B, K)` to use when `prompts` is empty.

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
        pe: Any = self.prompt_encoder
        weight = pe.no_mask_embed.weight
        parts: list[Tensor] = []
        if prompts.boxes is not None:
            parts.append(embed_boxes(pe, prompts.boxes))
        if prompts.points is not None and prompts.labels is not None:
            _check_point_labels(prompts.labels, name="prompts.labels")
            parts.append(embed_points(pe, prompts.points, prompts.labels, pad=False))
        if parts:
            parts.append(repeat(pe.not_a_point_embed.weight, "1 d -> b k 1 d", b=b, k=k))
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
            dense = rearrange(pe.mask_downscaling(flat), "(b k) d h w -> b k d h w", b=b, k=k)
        else:
            dense = repeat(weight[0], "d -> b k d h w", b=b, k=k, h=h, w=w)
        return sparse, dense

    # ------------------------------------------------------------------ decoder

    def _predict_masks(
        self, emb: Tensor, feats: Sequence[Tensor], sparse: Tensor, dense: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """SAM 2's `MaskDecoder.predict_masks` for `K` prompts on each of `B` images.

        Returns all `1 + 3` mask logits `(B, K, 4, 4h, 4w)`, IoU `(B, K, 4)` and mask tokens
        `(B, K, 4, D)`. The high-resolution features are broadcast over `K`, not copied.
        """
        dec = self.mask_decoder
        b, k = sparse.shape[:2]
        h, w = emb.shape[-2:]
        output_tokens = torch.cat(
            [dec.obj_score_token.weight, dec.iou_token.weight, dec.mask_tokens.weight], dim=0
        )
        output_tokens = repeat(output_tokens.to(sparse.dtype), "t d -> bk t d", bk=b * k)
        tokens = torch.cat([output_tokens, rearrange(sparse, "b k n d -> (b k) n d")], dim=1)
        src = repeat(emb, "b d h w -> (b k) d h w", k=k)
        src = src + rearrange(dense, "b k d h w -> (b k) d h w")
        pos = self.dense_pe().to(src.dtype).expand(b * k, -1, -1, -1)
        hs, src_out = dec.transformer(src, pos, tokens)
        iou_out = hs[:, 1, :]  # token 0 is the object-score token
        mask_tokens_out = hs[:, 2 : 2 + dec.num_mask_tokens, :]
        feat_s0, feat_s1 = (f.to(src.dtype) for f in feats)
        dc1, ln1, act1, dc2, act2 = dec.output_upscaling
        x = dc1(rearrange(src_out, "bk (h w) d -> bk d h w", h=h, w=w))
        x = rearrange(x, "(b k) c H W -> b k c H W", b=b, k=k) + feat_s1[:, None]
        x = act1(ln1(rearrange(x, "b k c H W -> (b k) c H W")))
        x = rearrange(dc2(x), "(b k) c H W -> b k c H W", b=b, k=k) + feat_s0[:, None]
        upscaled = act2(x)  # (b, k, c, 4h, 4w)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)],
            dim=1,
        )  # (bk, m, c)
        hyper_in = rearrange(hyper_in, "(b k) m c -> b k m c", b=b, k=k)
        uh, uw = upscaled.shape[-2:]
        masks = hyper_in @ rearrange(upscaled, "b k c H W -> b k c (H W)")
        masks = rearrange(masks, "b k m (H W) -> b k m H W", H=uh, W=uw)
        iou = rearrange(dec.iou_prediction_head(iou_out), "(b k) m -> b k m", b=b, k=k)
        mask_tokens = rearrange(mask_tokens_out, "(b k) m d -> b k m d", b=b, k=k)
        return masks, iou, mask_tokens

    def decode(
        self,
        embedding: ImageEmbedding,
        sparse: Tensor,
        dense: Tensor,
        *,
        multimask: bool = False,
        upsample: bool = True,
    ) -> MaskPrediction:
        """Decode `K` prompts on each of `B` images (SAM 2's mask decoder, batched).

        Args:
            embedding: `Sam2Backbone.encode` output (its `intermediates` are the two
                high-resolution feature maps).
            sparse: Sparse prompt tokens `(B, K, N, D)`.
            dense: Dense prompt embeddings `(B, K, D, h, w)`.
            multimask: Return the 3 ambiguity masks instead of the single mask. Without it, in
                eval mode and with `dynamic_multimask`, an unstable single mask is replaced by
                the multimask output with the highest predicted IoU (SAM 2's rule).
            upsample: Also return `logits` at the original image size.

        Returns:
            `MaskPrediction` with `low_res_logits (B, K, M, 4h, 4w)` (not clamped),
            `iou_scores (B, K, M)` (sigmoid outputs), `tokens (B, K, M, D)` and, with
            `upsample`, `logits (B, K, M, H, W)`; `M` is 3 with `multimask`, else 1.

        Raises:
            ValueError: If the shapes disagree or `embedding` lacks the high-res features.
        """
        weight = self.mask_decoder.iou_token.weight
        s, emb, sparse, dense = self._decoder_inputs(embedding, sparse, dense, weight=weight)
        d = self.prompt_dim
        feats = embedding.intermediates
        if len(feats) != 2:
            raise ValueError(
                "embedding.intermediates: expected SAM 2's two high-resolution feature maps "
                f"(from Sam2Backbone.encode), got {len(feats)} tensors"
            )
        known = {"B": s["B"], "C": d // 8, "H": 4 * s["h"], "W": 4 * s["w"]}
        check_shape(feats[0], "B C H W", name="embedding.intermediates[0]", known=known)
        known = {"B": s["B"], "C": d // 4, "H": 2 * s["h"], "W": 2 * s["w"]}
        check_shape(feats[1], "B C H W", name="embedding.intermediates[1]", known=known)
        masks, iou, tokens = self._predict_masks(emb, feats, sparse, dense)
        if multimask:
            low_res, iou, tokens = masks[:, :, 1:], iou[:, :, 1:], tokens[:, :, 1:]
        elif self.dynamic_multimask and not self.mask_decoder.training:
            low_res, iou, tokens = self._stable_single_mask(masks, iou, tokens)
        else:
            low_res, iou, tokens = masks[:, :, :1], iou[:, :, :1], tokens[:, :, :1]
        return self._mask_prediction(embedding, low_res, iou, tokens, upsample=upsample)

    def _stable_single_mask(
        self, masks: Tensor, iou: Tensor, tokens: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """SAM 2's `_dynamic_multimask_via_stability`, batched, also picking the mask token.

        The single mask (token 0) is kept where its stability score (upstream's
        `_get_stability_scores`) reaches the decoder's threshold, else the multimask output with
        the highest predicted IoU replaces it. Returns `M = 1` masks, IoU and tokens.
        """
        best = iou[:, :, 1:].argmax(dim=-1, keepdim=True) + 1  # (b, k, 1)
        stable = (
            self.mask_decoder._get_stability_scores(masks[:, :, 0])
            >= self.mask_decoder.dynamic_multimask_stability_thresh
        )[..., None]  # (b, k, 1)
        pick = torch.where(stable, torch.zeros_like(best), best)

        def gather(x: Tensor) -> Tensor:
            idx = pick.reshape(*pick.shape, *([1] * (x.dim() - 3))).expand(
                *pick.shape, *x.shape[3:]
            )
            return torch.gather(x, 2, idx)

        return gather(masks), gather(iou), gather(tokens)


def build_sam2_backbone(
    variant: str | Sam2VariantSpec = "sam2.1_hiera_tiny",
    checkpoint: str | os.PathLike[str] | None = None,
) -> Sam2Backbone:
    """Build a SAM 2 image backbone from the `sam2` package's modules.

    Variants: the official image paths `sam2.1_hiera_{tiny,small,base_plus,large}` (and the
    same for SAM 2.0, `sam2_hiera_*`), named after their checkpoint files; `sam2-tiny-random`
    (256 px input, a 5-block Hiera of width 16, `D = 32`) for tests; or a `Sam2VariantSpec`.
    Needs the `sam2` extra.

    Args:
        variant: A name from `SAM2_VARIANTS` or a `Sam2VariantSpec`.
        checkpoint: A local official checkpoint (`sam2.1_hiera_tiny.pt`, a dict with the
            weights under `"model"`) read with `weights_only=True`; `None` keeps random weights.

    Returns:
        The `Sam2Backbone` on the CPU, in eval mode, every parameter trainable.

    Raises:
        ImportError: If `sam2` is not installed (the message names `samkit[sam2]`).
        ValueError: For an unknown variant.
        FileNotFoundError: If `checkpoint` does not exist.
        RuntimeError: If the checkpoint does not match the variant (keys or shapes).

    Examples:
        >>> sam = build_sam2_backbone("sam2-tiny-random")
        >>> sam.img_size, sam.prompt_dim, sam.embedding_size
        (256, 32, (16, 16))
    """
    if isinstance(variant, Sam2VariantSpec):
        spec = variant
    elif variant in SAM2_VARIANTS:
        spec = SAM2_VARIANTS[variant]
    else:
        raise ValueError(
            f"unknown SAM 2 variant {variant!r}; expected one of {sorted(SAM2_VARIANTS)}"
        )
    image_encoder, prompt_encoder, mask_decoder = build_sam2_parts(spec)
    sam = Sam2Backbone(
        image_encoder=image_encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder
    )
    if checkpoint is not None:
        sam.load_checkpoint(checkpoint)
    return sam.eval()
