"""HQ-SAM as a samkit `SamLike` backend: SAM with an HQ output token and fused ViT features.

Ke et al., "Segment Anything in High Quality", NeurIPS 2023. `build_hq_sam_backbone(variant,
checkpoint=None)` builds SAM's ViT image encoder and prompt encoder (segment_anything, which
HQ-SAM leaves unchanged) and the `MaskDecoderHQ` of the `segment-anything-hq` package, and wraps
them in `HQSamBackbone`, a `SamBackbone` whose decoder adds HQ-SAM's two pieces:

* the **HQ output token** (`hf_token`, with its own hypernetwork MLP `hf_mlp`), decoded against
* the **HQ feature**: the decoder's upscaled SAM feature refined by `embedding_maskfeature`,
  plus the global-local fusion `embedding_encoder(image embedding)` +
  `compress_vit_feat(early ViT feature)`, the early feature being the output of the encoder's
  first global-attention block (`ImageEmbedding.intermediates[0]`).

HQ-SAM's behaviours followed here (as `segment_anything_hq.SamPredictor`):

* The output mask is the SAM mask **plus** the HQ mask; with `hq_token_only=True` it is the HQ
  mask alone.
* With `multimask=True` HQ-SAM still returns **one** mask per prompt (`M = 1`): the SAM
  multimask output with the highest predicted IoU (plus the HQ mask), with that IoU.
* The IoU prediction is SAM's (the HQ token has none).

Light HQ-SAM (`hq_vit_tiny`, the official `sam_hq_vit_tiny.pth`) is MobileSAM's TinyViT with
HQ-SAM's decoder: `LightHQSamBackbone` fuses the output of TinyViT's second stage (160 channels
on the 64x64 grid) where HQ-SAM fuses a ViT block's.
"""

# b - images in a batch (B)
# k - prompts per image (K)
# m - masks per prompt / mask tokens (M)
# d - channels (D); c - channels of the upscaled mask features (D / 8)
# h w - embedding grid; H W - upscaled grid

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from samkit._checks import as_float, check_shape
from samkit.backbones._optional import import_optional
from samkit.backbones._sam_build import (
    SAM_VARIANTS,
    SamVariantSpec,
    build_sam_parts,
)
from samkit.backbones.mobile_sam import (
    IMG_SIZE,
    MOBILE_SAM_VARIANTS,
    PROMPT_DIM,
    MobileSamVariantSpec,
    build_tiny_vit,
    encode_tiny_vit,
)
from samkit.backbones.sam import SamBackbone
from samkit.types import ImageEmbedding, MaskPrediction

__all__ = ["HQ_SAM_VARIANTS", "HQSamBackbone", "LightHQSamBackbone", "build_hq_sam_backbone"]

EXTRA = "hq"
INSTALL_HINT = "Or by hand (it has no torch pin to keep): pip install --no-deps segment-anything-hq"

HQ_SAM_VARIANTS: dict[str, SamVariantSpec | MobileSamVariantSpec] = {
    "hq_vit_b": SAM_VARIANTS["vit_b"],
    "hq_vit_l": SAM_VARIANTS["vit_l"],
    "hq_vit_h": SAM_VARIANTS["vit_h"],
    # Light HQ-SAM: MobileSAM's TinyViT with the HQ decoder (segment_anything_hq's vit_tiny)
    "hq_vit_tiny": MOBILE_SAM_VARIANTS["mobile_sam"],
    # Random weights for tests: SAM's `tiny` (128 px, 16x16 grid, ViT width 32, D = 32).
    "hq-tiny-random": SAM_VARIANTS["tiny"],
    # Random weights for tests: Light HQ-SAM on `mobile_sam-tiny-random`'s TinyViT.
    "hq_vit_tiny-tiny-random": MOBILE_SAM_VARIANTS["mobile_sam-tiny-random"],
}
"""HQ-SAM presets: the official `sam_hq_vit_{b,l,h,tiny}.pth` architectures (`hq_vit_tiny` is
Light HQ-SAM, a `MobileSamVariantSpec`), plus `hq-tiny-random` and `hq_vit_tiny-tiny-random`."""


def import_hq_module(
    name: str, *, what: str = "HQ-SAM backbones", install: str = INSTALL_HINT
) -> Any:
    """Import `segment_anything_hq.<name>` (naming the `hq` extra when it is missing).

    Importing the package registers its TinyViT models in timm's registry; the warnings that
    timm raises about it (deprecated import paths, overwritten names) are silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Importing from timm", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Overwriting tiny_vit", category=UserWarning)
        return import_optional(
            f"segment_anything_hq.{name}",
            extra=EXTRA,
            what=what,
            install=install,
        )


def build_mask_decoder_hq(
    spec: SamVariantSpec | MobileSamVariantSpec, *, vit_dim: int
) -> nn.Module:
    """HQ-SAM's `MaskDecoderHQ` for `spec`, as `segment_anything_hq.build_sam`'s builders.

    A `MobileSamVariantSpec` (Light HQ-SAM) has MobileSAM's 2-block, 256-wide decoder.
    """
    hq = import_hq_module("modeling.mask_decoder_hq")
    from segment_anything.modeling import TwoWayTransformer

    if isinstance(spec, MobileSamVariantSpec):
        depth, width = 2, PROMPT_DIM
    else:
        depth, width = spec.decoder_depth, spec.prompt_dim
    return hq.MaskDecoderHQ(  # type: ignore[no-any-return]
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=depth,
            embedding_dim=width,
            mlp_dim=spec.decoder_mlp_dim,
            num_heads=spec.decoder_num_heads,
        ),
        transformer_dim=width,
        iou_head_depth=3,
        iou_head_hidden_dim=spec.iou_head_hidden_dim,
        vit_dim=vit_dim,
    )


def predict_masks_hq(
    mask_decoder: Any,
    image_embeddings: Tensor,
    early_features: Tensor,
    image_pe: Tensor,
    sparse: Tensor,
    dense: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`MaskDecoderHQ.predict_masks` (with `forward`'s feature fusion) for `K` prompts per image.

    Args:
        mask_decoder: HQ-SAM's `MaskDecoderHQ`.
        image_embeddings: `(B, D, h, w)`.
        early_features: The first global-attention block's output `(B, D_vit, h', w')`.
        image_pe: `(1, D, h, w)`.
        sparse: `(B, K, N, D)`.
        dense: `(B, K, D, h, w)`.

    Returns:
        SAM mask logits `(B, K, 4, 4h, 4w)`, HQ mask logits `(B, K, 1, 4h, 4w)`, IoU
        `(B, K, 4)`, SAM mask tokens `(B, K, 4, D)` and the HQ token `(B, K, 1, D)`.
    """
    dec = mask_decoder
    b, k = sparse.shape[:2]
    h, w = image_embeddings.shape[-2:]
    # global-local fusion, once per image (broadcast over the K prompts below)
    hq_features = dec.embedding_encoder(image_embeddings) + dec.compress_vit_feat(early_features)
    output_tokens = torch.cat(
        [dec.iou_token.weight, dec.mask_tokens.weight, dec.hf_token.weight], dim=0
    )
    output_tokens = repeat(output_tokens.to(sparse.dtype), "t d -> bk t d", bk=b * k)
    tokens = torch.cat([output_tokens, rearrange(sparse, "b k n d -> (b k) n d")], dim=1)
    src = repeat(image_embeddings, "b d h w -> (b k) d h w", k=k)
    src = src + rearrange(dense, "b k d h w -> (b k) d h w")
    pos = image_pe.to(src.dtype).expand(b * k, -1, -1, -1)
    hs, src_out = dec.transformer(src, pos, tokens)
    num_sam = dec.num_mask_tokens - 1  # SAM's 4 mask tokens; the HQ token comes last
    iou_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :]
    up_sam = dec.output_upscaling(rearrange(src_out, "bk (h w) d -> bk d h w", h=h, w=w))
    up_hq = rearrange(dec.embedding_maskfeature(up_sam), "(b k) c H W -> b k c H W", b=b, k=k)
    up_hq = up_hq + hq_features[:, None]
    up_sam = rearrange(up_sam, "(b k) c H W -> b k c H W", b=b, k=k)
    hyper_sam = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)],
        dim=1,
    )  # (bk, 4, c)
    hyper_hq = dec.hf_mlp(mask_tokens_out[:, num_sam, :])[:, None]  # (bk, 1, c)
    uh, uw = up_sam.shape[-2:]

    def masks_of(hyper: Tensor, up: Tensor) -> Tensor:
        hyper = rearrange(hyper, "(b k) m c -> b k m c", b=b, k=k)
        out = hyper @ rearrange(up, "b k c H W -> b k c (H W)")
        return rearrange(out, "b k m (H W) -> b k m H W", H=uh, W=uw)

    iou = rearrange(dec.iou_prediction_head(iou_out), "(b k) m -> b k m", b=b, k=k)
    tokens_out = rearrange(mask_tokens_out, "(b k) m d -> b k m d", b=b, k=k)
    return (
        masks_of(hyper_sam, up_sam),
        masks_of(hyper_hq, up_hq),
        iou,
        tokens_out[:, :, :num_sam],
        tokens_out[:, :, num_sam:],
    )


class HQSamBackbone(SamBackbone):
    """HQ-SAM: SAM's encoders and HQ-SAM's mask decoder with samkit's batched API.

    Implements `samkit.backbones.sam.SamLike`; official `sam_hq_vit_{b,l,h}.pth` checkpoints
    load strictly. `encode` also keeps the output of the first global-attention ViT block
    (`intermediates[0]`), which `decode` fuses into the HQ feature. Numerically it equals
    `segment_anything_hq.SamPredictor` on one image (`tests/backbones/test_hq_sam.py`).

    To train only HQ-SAM's new parameters, as the paper does, freeze everything and unfreeze
    `hq_parameters()`.

    Examples:
        >>> sam = build_hq_sam_backbone("hq-tiny-random")
        >>> emb = sam.encode(torch.rand(2, 3, 96, 128))
        >>> emb.embeddings.shape, emb.intermediates[0].shape
        (torch.Size([2, 32, 16, 16]), torch.Size([2, 32, 16, 16]))
        >>> from samkit.types import Prompts
        >>> prompts = Prompts(points=torch.rand(2, 5, 1, 2) * 96, labels=torch.ones(2, 5, 1))
        >>> pred = sam.predict(emb, prompts, multimask=True)  # HQ-SAM: one mask per prompt
        >>> pred.low_res_logits.shape, pred.logits.shape
        (torch.Size([2, 5, 1, 64, 64]), torch.Size([2, 5, 1, 96, 128]))
    """

    HQ_PARAMETERS = (
        "hf_token",
        "hf_mlp",
        "compress_vit_feat",
        "embedding_encoder",
        "embedding_maskfeature",
    )
    """Names of the mask decoder's submodules that HQ-SAM adds (and trains)."""

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        early_block: int,
        hq_token_only: bool = False,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
    ) -> None:
        """Wrap already built components.

        Args:
            image_encoder: segment_anything's `ImageEncoderViT`.
            prompt_encoder: segment_anything's `PromptEncoder`.
            mask_decoder: segment_anything_hq's `MaskDecoderHQ` (its `vit_dim` equal to the ViT
                width).
            early_block: Index of the ViT block whose output is fused (HQ-SAM: the first
                global-attention block).
            hq_token_only: Return the HQ mask alone instead of SAM mask + HQ mask.
            pixel_mean: Per-channel mean on the 0-255 scale (SAM's by default).
            pixel_std: Per-channel std on the 0-255 scale (SAM's by default).
        """
        extra = {}
        if pixel_mean is not None:
            extra["pixel_mean"] = pixel_mean
        if pixel_std is not None:
            extra["pixel_std"] = pixel_std
        super().__init__(
            image_encoder=image_encoder,  # type: ignore[arg-type]
            prompt_encoder=prompt_encoder,  # type: ignore[arg-type]
            mask_decoder=mask_decoder,  # type: ignore[arg-type]
            **extra,  # type: ignore[arg-type]
        )
        depth = len(image_encoder.blocks)  # type: ignore[arg-type]
        if not -depth <= early_block < depth:
            raise ValueError(f"early_block: expected a block index in [{-depth}, {depth})")
        self.early_block = early_block % depth
        self.hq_token_only = hq_token_only

    @property
    def num_multimask_outputs(self) -> int:
        """Masks per prompt with `multimask=True`: 1 (HQ-SAM keeps the best one)."""
        return 1

    def hq_parameters(self) -> list[nn.Parameter]:
        """The parameters HQ-SAM adds to SAM's mask decoder (what its paper trains)."""
        return [
            p
            for name, p in self.mask_decoder.named_parameters()
            if name.split(".")[0] in self.HQ_PARAMETERS
        ]

    def to_segment_anything(self) -> Any:
        """Not available: segment_anything's `Sam` cannot run HQ-SAM's decoder."""
        raise NotImplementedError(
            "HQSamBackbone has no segment_anything equivalent; use segment_anything_hq's Sam"
        )

    def encode(self, images: Tensor, *, intermediates: Sequence[int] = ()) -> ImageEmbedding:
        """Embed images; `intermediates[0]` is the early ViT feature HQ-SAM fuses.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8.
            intermediates: Further ViT blocks whose outputs to keep, after the early one.

        Returns:
            `ImageEmbedding` with `embeddings (B, D, h, w)` and `intermediates`: the output of
            block `early_block` `(B, D_vit, h, w)`, then the requested blocks.
        """
        return super().encode(images, intermediates=(self.early_block, *intermediates))

    def decode(
        self,
        embedding: ImageEmbedding,
        sparse: Tensor,
        dense: Tensor,
        *,
        multimask: bool = False,
        upsample: bool = True,
    ) -> MaskPrediction:
        """Decode `K` prompts on each of `B` images with HQ-SAM's decoder, batched.

        Args:
            embedding: `encode` output (its `intermediates[0]` is the early ViT feature).
            sparse: Sparse prompt tokens `(B, K, N, D)`.
            dense: Dense prompt embeddings `(B, K, D, h, w)`.
            multimask: Pick the best of SAM's three ambiguity masks (by predicted IoU) instead
                of its single-mask token; either way `M = 1`, as in HQ-SAM.
            upsample: Also return `logits` at the original image size.

        Returns:
            `MaskPrediction` with `low_res_logits (B, K, 1, 4h, 4w)` (SAM mask + HQ mask, or
            the HQ mask alone with `hq_token_only`), `iou_scores (B, K, 1)`, `tokens
            (B, K, 1, D)` (the HQ token with `hq_token_only`, else the chosen SAM mask token)
            and, with `upsample`, `logits (B, K, 1, H, W)`.

        Raises:
            ValueError: If the shapes disagree or the early ViT feature is missing.
        """
        weight = self.mask_decoder.iou_token.weight
        s, emb, sparse, dense = self._decoder_inputs(embedding, sparse, dense, weight=weight)
        if not embedding.intermediates:
            raise ValueError(
                "embedding.intermediates: HQ-SAM needs the early ViT feature; "
                "encode the images with HQSamBackbone.encode"
            )
        early = embedding.intermediates[0]
        check_shape(early, "B C h w", name="embedding.intermediates[0]", known={"B": s["B"]})
        early = as_float(early, name="embedding.intermediates[0]", dtype=emb.dtype)
        sam_masks, hq_masks, iou, sam_tokens, hq_token = predict_masks_hq(
            self.mask_decoder, emb, early, self.dense_pe(), sparse, dense
        )
        if multimask:
            pick = iou[:, :, 1:].argmax(dim=-1, keepdim=True) + 1  # (b, k, 1)
        else:
            pick = torch.zeros_like(iou[:, :, :1], dtype=torch.long)
        iou = torch.gather(iou, 2, pick)
        if self.hq_token_only:
            low_res, tokens = hq_masks, hq_token
        else:
            idx = pick[..., None, None].expand(-1, -1, -1, *sam_masks.shape[-2:])
            low_res = torch.gather(sam_masks, 2, idx) + hq_masks
            idx = pick[..., None].expand(-1, -1, -1, sam_tokens.shape[-1])
            tokens = torch.gather(sam_tokens, 2, idx)
        return self._mask_prediction(embedding, low_res, iou, tokens, upsample=upsample)


class LightHQSamBackbone(HQSamBackbone):
    """Light HQ-SAM: MobileSAM's TinyViT, SAM's prompt encoder and HQ-SAM's mask decoder.

    An `HQSamBackbone` whose `encode` runs TinyViT (as `MobileSamBackbone`, 1024 px input,
    64x64 grid, `D = 256`) and keeps the output of its second stage as the early feature
    (`intermediates[0] (B, C, 64, 64)`, `C` = the third stage width, 160 for `hq_vit_tiny`).
    The official `sam_hq_vit_tiny.pth` loads strictly. Numerically it equals
    `segment_anything_hq.SamPredictor` on the same model (`tests/backbones/test_hq_sam.py`).

    Examples:
        >>> sam = build_hq_sam_backbone("hq_vit_tiny-tiny-random")
        >>> emb = sam.encode(torch.rand(1, 3, 48, 64))
        >>> emb.embeddings.shape, emb.intermediates[0].shape
        (torch.Size([1, 256, 64, 64]), torch.Size([1, 16, 64, 64]))
    """

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        hq_token_only: bool = False,
    ) -> None:
        """Wrap already built components.

        Args:
            image_encoder: segment_anything_hq's `TinyViT`.
            prompt_encoder: segment_anything's `PromptEncoder`.
            mask_decoder: segment_anything_hq's `MaskDecoderHQ` (its `vit_dim` equal to TinyViT's
                third stage width).
            hq_token_only: Return the HQ mask alone instead of SAM mask + HQ mask.
        """
        # SamBackbone's initialiser: TinyViT has no ViT blocks for HQSamBackbone's early_block
        SamBackbone.__init__(
            self,
            image_encoder=image_encoder,  # type: ignore[arg-type]
            prompt_encoder=prompt_encoder,  # type: ignore[arg-type]
            mask_decoder=mask_decoder,  # type: ignore[arg-type]
        )
        self.hq_token_only = hq_token_only

    def encode(self, images: Tensor, *, intermediates: Sequence[int] = ()) -> ImageEmbedding:
        """Embed images with TinyViT; `intermediates[0]` is the early feature HQ-SAM fuses.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8.
            intermediates: Must be empty (TinyViT has no ViT blocks to tap).

        Returns:
            `ImageEmbedding` with `embeddings (B, 256, 64, 64)` and `intermediates`: TinyViT's
            second stage output `(B, C, 64, 64)`.

        Raises:
            ValueError: If `images` is not a valid image batch or `intermediates` is given.
        """
        return encode_tiny_vit(self, images, intermediates, keep_early=True)


def build_hq_sam_backbone(
    variant: str | SamVariantSpec | MobileSamVariantSpec = "hq_vit_b",
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    hq_token_only: bool = False,
) -> HQSamBackbone:
    """Build an HQ-SAM backbone (SAM's encoders + `segment_anything_hq`'s `MaskDecoderHQ`).

    Variants: `hq_vit_b`, `hq_vit_l`, `hq_vit_h` (the architectures of the official
    `sam_hq_vit_{b,l,h}.pth`), `hq-tiny-random` (SAM's `tiny` sizes, for tests), or any
    `SamVariantSpec` (its first global-attention block is the early feature); Light HQ-SAM
    `hq_vit_tiny` (`sam_hq_vit_tiny.pth`: MobileSAM's TinyViT, a `LightHQSamBackbone`),
    `hq_vit_tiny-tiny-random` (for tests) or any `MobileSamVariantSpec`. Needs the `hq` extra.

    Args:
        variant: A name from `HQ_SAM_VARIANTS`, a `SamVariantSpec` or a
            `MobileSamVariantSpec` (Light HQ-SAM).
        checkpoint: A local HQ-SAM checkpoint (a state dict with `image_encoder.*`,
            `prompt_encoder.*` and `mask_decoder.*`, HQ parameters included), read with
            `weights_only=True` and loaded strictly (upstream loads with `strict=False`).
        hq_token_only: Return the HQ mask alone (HQ-SAM's `hq_token_only`).

    Returns:
        The `HQSamBackbone` on the CPU, in eval mode, every parameter trainable.

    Raises:
        ImportError: If `segment_anything_hq` is missing (the message names `samkit[hq]`).
        ValueError: For an unknown variant.
        FileNotFoundError: If `checkpoint` does not exist.
        RuntimeError: If the checkpoint does not match the variant.

    Examples:
        >>> sam = build_hq_sam_backbone("hq-tiny-random", hq_token_only=True)
        >>> sam.img_size, sam.prompt_dim, sam.early_block
        (128, 32, 1)
    """
    if isinstance(variant, SamVariantSpec | MobileSamVariantSpec):
        spec = variant
    elif variant in HQ_SAM_VARIANTS:
        spec = HQ_SAM_VARIANTS[variant]
    else:
        raise ValueError(
            f"unknown HQ-SAM variant {variant!r}; expected one of {sorted(HQ_SAM_VARIANTS)}"
        )
    if isinstance(spec, MobileSamVariantSpec):
        return _build_light_hq_sam(spec, checkpoint, hq_token_only=hq_token_only)
    if not spec.encoder_global_attn_indexes:
        raise ValueError("variant: HQ-SAM fuses a global-attention block; the spec has none")
    mask_decoder = build_mask_decoder_hq(spec, vit_dim=spec.encoder_embed_dim)
    image_encoder, prompt_encoder, _ = build_sam_parts(spec)
    sam = HQSamBackbone(
        image_encoder=image_encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        early_block=spec.encoder_global_attn_indexes[0],
        hq_token_only=hq_token_only,
    )
    if checkpoint is not None:
        sam.load_checkpoint(checkpoint)
    return sam.eval()


def _build_light_hq_sam(
    spec: MobileSamVariantSpec,
    checkpoint: str | os.PathLike[str] | None,
    *,
    hq_token_only: bool,
) -> LightHQSamBackbone:
    """Light HQ-SAM, as `segment_anything_hq.build_sam.build_sam_vit_t`."""
    from segment_anything.modeling import PromptEncoder

    grid = IMG_SIZE // 16
    sam = LightHQSamBackbone(
        image_encoder=build_tiny_vit(spec),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(IMG_SIZE, IMG_SIZE),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=build_mask_decoder_hq(spec, vit_dim=spec.embed_dims[2]),
        hq_token_only=hq_token_only,
    )
    if checkpoint is not None:
        sam.load_checkpoint(checkpoint)
    return sam.eval()  # also refreshes TinyViT's cached attention biases
