"""EfficientViT-SAM as a samkit `SamLike` backend: an EfficientViT encoder with SAM's prompt path.

Zhang et al., "EfficientViT-SAM: Accelerated Segment Anything Model Without Accuracy Loss",
2024 (MIT Han lab). EfficientViT-SAM replaces SAM's ViT-H with an EfficientViT backbone and a
convolutional neck, and keeps SAM's prompt encoder and mask decoder. `build_efficientvit_sam_
backbone(variant, checkpoint=None)` builds the encoder from the `efficientsam` package
(`EfficientViTLargeBackbone`, `SamNeck`, `EfficientViTSamImageEncoder`, the classes behind its
`create_efficientvit_sam_model`) with segment_anything's `PromptEncoder` and `MaskDecoder`, so
the official `efficientvit_sam_{l0,l1,l2,xl0,xl1}.pt` load strictly, and wraps them in
`EfficientVitSamBackbone`, a `SamBackbone`.

The package's preprocessing contract, followed here (`EfficientViTSam.transform` and
`EfficientViTSamPredictor`):

* The **encoder input** is the image resized so its long side is `encoder_size` (512 for the L
  models, 1024 for the XL ones), normalised with SAM's pixel statistics and padded
  bottom/right to `encoder_size x encoder_size`.
* The **prompt frame** stays SAM's 1024 px letterbox, whatever the encoder size: points and
  boxes are scaled to the image resized to long side 1024, and masks are upscaled to 1024,
  cropped to that size and resized to the original (`img_size` is 1024).
* The neck resamples every stage to 64x64, so the embedding grid is 64x64 with `D = 256` for
  every variant (and for any `encoder_size`).
* Every normalisation layer (BatchNorm and LayerNorm, the decoder's included) has `eps = 1e-6`
  (`create_efficientvit_sam_model` sets it with `set_norm_eps`).

The package resizes a uint8 image with PIL and rounds the result to uint8 before normalising;
samkit resizes the float image (antialiased bilinear, as `SamBackbone.preprocess`), so on an
image whose long side is not `encoder_size` the encoder inputs differ by that rounding (under
one grey level); an image that needs no resize gives the package's input exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder
from torch import Tensor, nn

from samkit._checks import check_shape
from samkit.backbones._optional import import_optional
from samkit.backbones._sam_build import PIXEL_MEAN, PIXEL_STD, build_prompt_path
from samkit.backbones.sam import SamBackbone, _compute_dtype, _letterbox
from samkit.types import ImageEmbedding

__all__ = [
    "EFFICIENTVIT_SAM_VARIANTS",
    "EfficientVitSamBackbone",
    "EfficientVitSamVariantSpec",
    "build_efficientvit_sam_backbone",
]

EXTRA = "efficientvit"
INSTALL_HINT = "Or by hand (its torch requirement is unpinned): pip install --no-deps efficientsam"
PROMPT_SIZE = 1024  # the prompt frame of every EfficientViT-SAM
PROMPT_DIM = 256  # EfficientViTSamImageEncoder ends in a 256-wide LayerNorm
GRID = 64  # SamNeck resamples every stage to 64x64
NORM_EPS = 1e-6  # create_efficientvit_sam_model: set_norm_eps(model, 1e-6)

# EfficientViTLargeBackbone's defaults (the L models use them)
_L_BLOCKS = ("res", "fmb", "fmb", "mb", "att")
_L_EXPAND = (1.0, 4.0, 4.0, 4.0, 6.0)
_L_FEWER_NORM = (False, False, False, True, True)
_XL_BLOCKS = ("res", "fmb", "fmb", "fmb", "att@3", "att@3")
_XL_EXPAND = (1.0, 4.0, 4.0, 4.0, 4.0, 6.0)
_XL_FEWER_NORM = (False, False, False, False, True, True)


@dataclass(frozen=True)
class EfficientVitSamVariantSpec:
    """Hyper-parameters of an EfficientViT-SAM: backbone stages, neck, input size, decoder."""

    widths: tuple[int, ...]  # backbone stage widths (stage 0 is the stem)
    depths: tuple[int, ...]  # blocks per stage
    blocks: tuple[str, ...]  # block type per stage: "res", "fmb", "mb", "att" or "att@3"
    expand_ratios: tuple[float, ...]  # expansion ratio per stage
    fewer_norm: tuple[bool, ...]  # per stage: norm only after the last conv of a block
    neck_depth: int  # fused-MBConv blocks in SamNeck
    neck_expand_ratio: float  # their expansion ratio
    encoder_size: int  # long side of the encoder input (512 for L, 1024 for XL)
    neck_width: int = 256  # SamNeck head width
    qkv_dim: int = 32  # width of an attention head in the "att" stages
    decoder_mlp_dim: int = 2048  # TwoWayTransformer MLP width
    decoder_num_heads: int = 8  # TwoWayTransformer heads
    iou_head_hidden_dim: int = 256  # hidden width of the IoU prediction MLP
    mask_in_chans: int = 16  # hidden channels of the mask-prompt downscaler

    @property
    def neck_inputs(self) -> tuple[tuple[str, int], ...]:
        """The backbone stages SamNeck fuses (the last three, deepest first) and their widths."""
        last = len(self.widths) - 1
        return tuple((f"stage{i}", self.widths[i]) for i in range(last, last - 3, -1))


def _large(depths: tuple[int, ...], neck_depth: int) -> EfficientVitSamVariantSpec:
    return EfficientVitSamVariantSpec(
        widths=(32, 64, 128, 256, 512),
        depths=depths,
        blocks=_L_BLOCKS,
        expand_ratios=_L_EXPAND,
        fewer_norm=_L_FEWER_NORM,
        neck_depth=neck_depth,
        neck_expand_ratio=1.0,
        encoder_size=512,
    )


def _xlarge(depths: tuple[int, ...], neck_depth: int) -> EfficientVitSamVariantSpec:
    return EfficientVitSamVariantSpec(
        widths=(32, 64, 128, 256, 512, 1024),
        depths=depths,
        blocks=_XL_BLOCKS,
        expand_ratios=_XL_EXPAND,
        fewer_norm=_XL_FEWER_NORM,
        neck_depth=neck_depth,
        neck_expand_ratio=4.0,
        encoder_size=1024,
    )


EFFICIENTVIT_SAM_VARIANTS: dict[str, EfficientVitSamVariantSpec] = {
    # efficientsam/models/efficientvit/sam.py: efficientvit_sam_{l0,l1,l2,xl0,xl1}
    "efficientvit_sam_l0": _large((1, 1, 1, 4, 4), neck_depth=4),
    "efficientvit_sam_l1": _large((1, 1, 1, 6, 6), neck_depth=8),
    "efficientvit_sam_l2": _large((1, 2, 2, 8, 8), neck_depth=12),
    "efficientvit_sam_xl0": _xlarge((0, 1, 1, 2, 3, 3), neck_depth=6),
    "efficientvit_sam_xl1": _xlarge((1, 2, 2, 4, 6, 6), neck_depth=12),
    # Random weights for tests: an L-shaped backbone, one block per stage, narrow, on 128 px
    # input, with the official decoder (the package's `build_efficientvit_sam` fixes it). The
    # neck fixes the 64x64 grid and D = 256, so it is not fast to decode.
    "efficientvit_sam-tiny-random": EfficientVitSamVariantSpec(
        widths=(8, 16, 16, 32, 32),
        depths=(1, 1, 1, 1, 1),
        blocks=_L_BLOCKS,
        expand_ratios=_L_EXPAND,
        fewer_norm=_L_FEWER_NORM,
        neck_depth=1,
        neck_expand_ratio=1.0,
        encoder_size=128,
        neck_width=16,
        qkv_dim=16,
    ),
}
"""EfficientViT-SAM presets: the official `efficientvit_sam_{l0,l1,l2,xl0,xl1}.pt` architectures
(the package's `efficientvit-sam-l0`, ...) and `efficientvit_sam-tiny-random`."""


def import_efficientvit_module(name: str) -> Any:
    """Import `efficientsam.<name>` (naming the `efficientvit` extra when it is missing)."""
    return import_optional(
        f"efficientsam.{name}",
        extra=EXTRA,
        what="EfficientViT-SAM backbones",
        install=INSTALL_HINT,
    )


def build_efficientvit_encoder(spec: EfficientVitSamVariantSpec) -> nn.Module:
    """The package's `EfficientViTSamImageEncoder` (backbone + SamNeck + LayerNorm) of `spec`."""
    backbone = import_efficientvit_module("models.efficientvit.backbone")
    sam = import_efficientvit_module("models.efficientvit.sam")
    fids, widths = zip(*spec.neck_inputs, strict=True)
    return sam.EfficientViTSamImageEncoder(  # type: ignore[no-any-return]
        backbone.EfficientViTLargeBackbone(
            width_list=list(spec.widths),
            depth_list=list(spec.depths),
            block_list=list(spec.blocks),
            expand_list=list(spec.expand_ratios),
            fewer_norm_list=list(spec.fewer_norm),
            qkv_dim=spec.qkv_dim,
        ),
        sam.SamNeck(
            fid_list=list(fids),
            in_channel_list=list(widths),
            head_width=spec.neck_width,
            head_depth=spec.neck_depth,
            expand_ratio=spec.neck_expand_ratio,
            middle_op="fmb",
        ),
    )


class EfficientVitSamBackbone(SamBackbone):
    """EfficientViT-SAM: EfficientViT encoder, SAM's prompt encoder and mask decoder, batched.

    A `SamBackbone` (so it implements `SamLike`) whose `encode` runs the EfficientViT encoder on
    the image letterboxed to `encoder_size`, while prompts and masks live in SAM's 1024 px frame
    (`img_size`). Official `efficientvit_sam_*.pt` checkpoints load strictly. Numerically it
    equals the package's `EfficientViTSamPredictor` (`tests/backbones/test_efficientvit_sam.py`).

    Examples:
        >>> sam = build_efficientvit_sam_backbone("efficientvit_sam-tiny-random")
        >>> emb = sam.encode(torch.rand(1, 3, 48, 64))
        >>> emb.embeddings.shape, emb.input_size
        (torch.Size([1, 256, 64, 64]), (768, 1024))
    """

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        encoder_size: int,
    ) -> None:
        """Wrap already built components.

        Args:
            image_encoder: The package's `EfficientViTSamImageEncoder`.
            prompt_encoder: segment_anything's `PromptEncoder` (1024 px frame, 64x64 grid).
            mask_decoder: segment_anything's `MaskDecoder`.
            encoder_size: Long side (and padded side) of the encoder input.
        """
        super().__init__(
            image_encoder=image_encoder,  # type: ignore[arg-type]
            prompt_encoder=prompt_encoder,
            mask_decoder=mask_decoder,
            pixel_mean=PIXEL_MEAN,
            pixel_std=PIXEL_STD,
            img_size=int(prompt_encoder.input_image_size[0]),
        )
        self.encoder_size = int(encoder_size)

    def to_segment_anything(self) -> Any:
        """Not available: segment_anything's `Sam` feeds the encoder a 1024 px input."""
        raise NotImplementedError(
            "EfficientVitSamBackbone encodes at encoder_size; use efficientsam's EfficientViTSam"
        )

    def preprocess(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Letterbox to the encoder input; report the resized size in the 1024 px prompt frame.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8 (divided by 255).

        Returns:
            The encoder input `(B, 3, E, E)` (`E = encoder_size`) and `input_size`, the size of
            the image resized to long side `img_size` (where prompts and masks live).

        Raises:
            ValueError: If `images` is not a valid image batch.
        """
        x, _ = _letterbox(images, self.encoder_size, self.pixel_mean, self.pixel_std)
        return x, self._resized_size((images.shape[-2], images.shape[-1]))

    def encode(self, images: Tensor, *, intermediates: Sequence[int] = ()) -> ImageEmbedding:
        """Embed a batch of equally sized images with the EfficientViT encoder.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8 (divided by 255).
            intermediates: Must be empty (the encoder has no ViT blocks to tap).

        Returns:
            `ImageEmbedding` with `embeddings (B, 256, 64, 64)`; `input_size` is in the 1024 px
            prompt frame.

        Raises:
            ValueError: If `images` is not a valid image batch or `intermediates` is given.
        """
        if intermediates:
            raise ValueError("intermediates: EfficientViT-SAM's encoder has no ViT blocks to tap")
        sizes = check_shape(images, "B 3 H W", name="images")
        x, input_size = self.preprocess(images)
        original = (sizes["H"], sizes["W"])
        weight = self.image_encoder.norm.weight
        if sizes["B"] == 0:
            h, w = self.embedding_size
            return ImageEmbedding(weight.new_zeros(0, self.prompt_dim, h, w), input_size, original)
        dtype = _compute_dtype(x, weight)
        half = dtype in (torch.bfloat16, torch.float16)
        if half and not torch.is_autocast_enabled(x.device.type):
            # The package upcasts its attention and upsampling outputs to float32 (made for
            # autocast), so a half-precision model runs its encoder under autocast in its dtype.
            with torch.autocast(x.device.type, dtype=dtype):
                out = self.image_encoder(x.to(dtype)).to(dtype)
        else:
            out = self.image_encoder(x.to(dtype))
        return ImageEmbedding(embeddings=out, input_size=input_size, original_size=original)


def build_efficientvit_sam_backbone(
    variant: str | EfficientVitSamVariantSpec = "efficientvit_sam_l0",
    checkpoint: str | os.PathLike[str] | None = None,
) -> EfficientVitSamBackbone:
    """Build an EfficientViT-SAM backbone (EfficientViT encoder + SAM's prompt path).

    Needs the `efficientvit` extra (the `efficientsam` package ships the encoder).

    Args:
        variant: `"efficientvit_sam_l0"`, `"efficientvit_sam_l1"`, `"efficientvit_sam_l2"`,
            `"efficientvit_sam_xl0"`, `"efficientvit_sam_xl1"`, `"efficientvit_sam-tiny-random"`
            or an `EfficientVitSamVariantSpec`.
        checkpoint: A local `efficientvit_sam_*.pt` (a state dict with `image_encoder.*`,
            `prompt_encoder.*`, `mask_decoder.*`, optionally under `state_dict`), read with
            `weights_only=True` and loaded strictly; `None` keeps random weights.

    Returns:
        The `EfficientVitSamBackbone` on the CPU, in eval mode, every parameter trainable.

    Raises:
        ImportError: If `efficientsam` is missing (the message names `samkit[efficientvit]`).
        ValueError: For an unknown variant.
        FileNotFoundError: If `checkpoint` does not exist.
        RuntimeError: If the checkpoint does not match the variant.

    Examples:
        >>> sam = build_efficientvit_sam_backbone("efficientvit_sam-tiny-random")
        >>> sam.img_size, sam.encoder_size, sam.prompt_dim, sam.embedding_size
        (1024, 128, 256, (64, 64))
    """
    if isinstance(variant, EfficientVitSamVariantSpec):
        spec = variant
    elif variant in EFFICIENTVIT_SAM_VARIANTS:
        spec = EFFICIENTVIT_SAM_VARIANTS[variant]
    else:
        raise ValueError(
            f"unknown EfficientViT-SAM variant {variant!r}; "
            f"expected one of {sorted(EFFICIENTVIT_SAM_VARIANTS)}"
        )
    norm = import_efficientvit_module("models.nn.norm")
    prompt_encoder, mask_decoder = build_prompt_path(
        prompt_dim=PROMPT_DIM,
        grid=GRID,
        img_size=PROMPT_SIZE,
        mask_in_chans=spec.mask_in_chans,
        decoder_mlp_dim=spec.decoder_mlp_dim,
        decoder_num_heads=spec.decoder_num_heads,
        iou_head_hidden_dim=spec.iou_head_hidden_dim,
    )
    sam = EfficientVitSamBackbone(
        image_encoder=build_efficientvit_encoder(spec),
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        encoder_size=spec.encoder_size,
    )
    norm.set_norm_eps(sam, NORM_EPS)  # as create_efficientvit_sam_model, decoder included
    if checkpoint is not None:
        sam.load_checkpoint(checkpoint)
    return sam.eval()
