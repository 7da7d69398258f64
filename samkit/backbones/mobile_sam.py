"""MobileSAM as a samkit `SamLike` backend: a TinyViT image encoder with SAM's prompt path.

Zhang et al., "Faster Segment Anything: Towards Lightweight SAM for Mobile Applications", 2023.
MobileSAM distils SAM's ViT-H encoder into a 5 M-parameter TinyViT and keeps SAM's prompt
encoder and mask decoder unchanged. `build_mobile_sam_backbone(variant, checkpoint=None)` builds
the TinyViT that the `segment-anything-hq` package ships (`segment_anything_hq.modeling.
tiny_vit_sam`, the same module and parameter names as MobileSAM's own package, which is not on
PyPI) with segment_anything's `PromptEncoder` and `MaskDecoder`, so the official `mobile_sam.pt`
loads strictly, and wraps them in `MobileSamBackbone`, a `SamBackbone`: the frame (long side to
1024, padding), pixel statistics and decoding are SAM's.

TinyViT's own constraints, followed here: the input is 1024 px and the embedding grid 64x64 with
`D = 256` for every variant (the encoder reshapes to 64x64 and its neck is 256 wide); the last
stage is 320, 448 or 576 wide; in eval mode the attention biases are cached (`Attention.ab`,
refreshed by `.eval()`), so they get gradients only in training mode; its convolutions carry
BatchNorm.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from einops import rearrange
from torch import Tensor, nn

from samkit._checks import check_shape
from samkit.backbones._sam_build import build_prompt_path
from samkit.backbones.sam import SamBackbone, _compute_dtype
from samkit.types import ImageEmbedding

__all__ = [
    "MOBILE_SAM_VARIANTS",
    "MobileSamBackbone",
    "MobileSamVariantSpec",
    "build_mobile_sam_backbone",
]

EXTRA = "hq"
INSTALL_HINT = (
    "MobileSAM's TinyViT comes from segment-anything-hq; by hand: "
    "pip install --no-deps segment-anything-hq (and timm)"
)
IMG_SIZE = 1024  # TinyViT reshapes its last stage to 64x64 tokens: the input is 1024 px
PROMPT_DIM = 256  # width of TinyViT's neck


@dataclass(frozen=True)
class MobileSamVariantSpec:
    """Hyper-parameters of a MobileSAM: its TinyViT and the SAM decoder sizes."""

    embed_dims: tuple[int, ...]  # TinyViT stage widths (the last must be 320, 448 or 576)
    depths: tuple[int, ...]  # TinyViT blocks per stage
    num_heads: tuple[int, ...]  # TinyViT attention heads per stage (stage 0 is convolutional)
    window_sizes: tuple[int, ...]  # TinyViT attention window per stage
    mlp_ratio: float = 4.0  # TinyViT MLP width ratio
    decoder_mlp_dim: int = 2048  # TwoWayTransformer MLP width
    decoder_num_heads: int = 8  # TwoWayTransformer heads
    iou_head_hidden_dim: int = 256  # hidden width of the IoU prediction MLP
    mask_in_chans: int = 16  # hidden channels of the mask-prompt downscaler


MOBILE_SAM_VARIANTS: dict[str, MobileSamVariantSpec] = {
    # ChaoningZhang/MobileSAM, mobile_sam/build_sam.py (registry key vit_t)
    "mobile_sam": MobileSamVariantSpec(
        embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 5, 10),
        window_sizes=(7, 7, 14, 7),
    ),
    # Random weights for tests: one block per stage, narrow early stages, a small decoder MLP.
    # TinyViT fixes the 1024 px input, the 64x64 grid and D = 256, so it is not fast to decode.
    "mobile_sam-tiny-random": MobileSamVariantSpec(
        embed_dims=(8, 16, 16, 320),
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 2),
        window_sizes=(7, 7, 14, 7),
        mlp_ratio=1.0,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    ),
}
"""MobileSAM presets: `mobile_sam` (the official `mobile_sam.pt`) and `mobile_sam-tiny-random`."""


def build_tiny_vit(spec: MobileSamVariantSpec) -> nn.Module:
    """The TinyViT image encoder of `spec`, with MobileSAM's fixed arguments."""
    from samkit.backbones.hq_sam import import_hq_module

    module = import_hq_module(
        "modeling.tiny_vit_sam", what="MobileSAM backbones", install=INSTALL_HINT
    )
    return module.TinyViT(  # type: ignore[no-any-return]
        img_size=IMG_SIZE,
        in_chans=3,
        num_classes=1000,
        embed_dims=list(spec.embed_dims),
        depths=list(spec.depths),
        num_heads=list(spec.num_heads),
        window_sizes=list(spec.window_sizes),
        mlp_ratio=spec.mlp_ratio,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


def encode_tiny_vit(
    sam: SamBackbone, images: Tensor, intermediates: Sequence[int], *, keep_early: bool
) -> ImageEmbedding:
    """`encode` with segment_anything_hq's TinyViT, which returns `(features, [early])`.

    Args:
        sam: A backbone whose `image_encoder` is that TinyViT.
        images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8 (divided by 255).
        intermediates: Must be empty (TinyViT has no ViT blocks to tap).
        keep_early: Keep the early feature, the output of TinyViT's second stage, as
            `intermediates[0] (B, C, 64, 64)` (what Light HQ-SAM fuses).

    Raises:
        ValueError: If `images` is not a valid image batch or `intermediates` is given.
    """
    if intermediates:
        raise ValueError("intermediates: TinyViT has no ViT blocks to tap")
    sizes = check_shape(images, "B 3 H W", name="images")
    x, input_size = sam.preprocess(images)
    original = (sizes["H"], sizes["W"])
    weight = sam.image_encoder.patch_embed.seq[0].c.weight
    h, w = sam.embedding_size
    if sizes["B"] == 0:
        width = int(sam.image_encoder.layers[2].dim)  # the early feature's channels
        early = [weight.new_zeros(0, width, h, w)] if keep_early else []
        emb = weight.new_zeros(0, sam.prompt_dim, h, w)
        return ImageEmbedding(emb, input_size, original, intermediates=early)
    out, interm = sam.image_encoder(x.to(_compute_dtype(x, weight)))
    early = [rearrange(interm[0], "b h w c -> b c h w")] if keep_early else []
    return ImageEmbedding(out, input_size, original, intermediates=early)


class MobileSamBackbone(SamBackbone):
    """MobileSAM: TinyViT image encoder, SAM's prompt encoder and mask decoder, batched.

    A `SamBackbone` (so it implements `SamLike`) whose `encode` runs TinyViT. Official
    `mobile_sam.pt` checkpoints load strictly. Numerically it equals segment_anything's
    `SamPredictor` on the same modules, which is what MobileSAM's predictor is
    (`tests/backbones/test_mobile_sam.py`).

    Examples:
        >>> sam = build_mobile_sam_backbone("mobile_sam-tiny-random")
        >>> emb = sam.encode(torch.rand(1, 3, 48, 64))
        >>> emb.embeddings.shape
        torch.Size([1, 256, 64, 64])
    """

    def to_segment_anything(self) -> Any:
        """Not available: segment_anything's `Sam` expects a tensor from the encoder."""
        raise NotImplementedError(
            "MobileSamBackbone's TinyViT returns (features, intermediates); wrap it to use "
            "segment_anything's Sam"
        )

    def encode(self, images: Tensor, *, intermediates: Sequence[int] = ()) -> ImageEmbedding:
        """Embed a batch of equally sized images with TinyViT.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8 (divided by 255).
            intermediates: Must be empty (TinyViT has no ViT blocks to tap).

        Returns:
            `ImageEmbedding` with `embeddings (B, 256, 64, 64)`.

        Raises:
            ValueError: If `images` is not a valid image batch or `intermediates` is given.
        """
        return encode_tiny_vit(self, images, intermediates, keep_early=False)


def build_mobile_sam_backbone(
    variant: str | MobileSamVariantSpec = "mobile_sam",
    checkpoint: str | os.PathLike[str] | None = None,
) -> MobileSamBackbone:
    """Build a MobileSAM backbone (TinyViT + SAM's prompt encoder and mask decoder).

    Needs the `hq` extra (`segment-anything-hq` ships the TinyViT encoder).

    Args:
        variant: `"mobile_sam"`, `"mobile_sam-tiny-random"` or a `MobileSamVariantSpec`.
        checkpoint: A local `mobile_sam.pt` (a state dict with `image_encoder.*`,
            `prompt_encoder.*`, `mask_decoder.*`), read with `weights_only=True` and loaded
            strictly; `None` keeps random weights.

    Returns:
        The `MobileSamBackbone` on the CPU, in eval mode, every parameter trainable.

    Raises:
        ImportError: If `segment_anything_hq` is missing (the message names `samkit[hq]`).
        ValueError: For an unknown variant.
        FileNotFoundError: If `checkpoint` does not exist.
        RuntimeError: If the checkpoint does not match the variant.

    Examples:
        >>> sam = build_mobile_sam_backbone("mobile_sam-tiny-random")
        >>> sam.img_size, sam.prompt_dim, sam.embedding_size
        (1024, 256, (64, 64))
    """
    if isinstance(variant, MobileSamVariantSpec):
        spec = variant
    elif variant in MOBILE_SAM_VARIANTS:
        spec = MOBILE_SAM_VARIANTS[variant]
    else:
        raise ValueError(
            f"unknown MobileSAM variant {variant!r}; expected one of {sorted(MOBILE_SAM_VARIANTS)}"
        )
    prompt_encoder, mask_decoder = build_prompt_path(
        prompt_dim=PROMPT_DIM,
        grid=IMG_SIZE // 16,
        img_size=IMG_SIZE,
        mask_in_chans=spec.mask_in_chans,
        decoder_mlp_dim=spec.decoder_mlp_dim,
        decoder_num_heads=spec.decoder_num_heads,
        iou_head_hidden_dim=spec.iou_head_hidden_dim,
    )
    sam = MobileSamBackbone(
        image_encoder=build_tiny_vit(spec),  # type: ignore[arg-type]
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
    )
    if checkpoint is not None:
        sam.load_checkpoint(checkpoint)
    return sam.eval()  # also refreshes TinyViT's cached attention biases
