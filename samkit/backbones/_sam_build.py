"""Private helpers of `samkit.backbones.sam`: variant presets, construction, checkpoint loading.

The presets use segment_anything's own classes with the official hyper-parameters
(`segment_anything/build_sam.py`), plus two small presets with random weights for tests and CPU
examples: `tiny` (32-d everywhere) and `small` (same 128 px / 8 px-patch encoder shape, but a
128-d mask decoder, whose 32- and 16-channel upscaling path can draw object outlines that the
4-channel path of `tiny` cannot).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    TwoWayTransformer,
)
from torch import nn

from samkit._io import read_checkpoint

__all__: list[str] = []

# SAM's pixel statistics, on the 0-255 scale (segment_anything/build_sam.py).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamVariantSpec:
    """Hyper-parameters of one SAM preset."""

    img_size: int  # side of SAM's square input frame
    patch_size: int  # ViT patch size; embedding grid = img_size // patch_size
    encoder_embed_dim: int  # ViT width
    encoder_depth: int  # number of ViT blocks
    encoder_num_heads: int  # attention heads per ViT block
    encoder_global_attn_indexes: tuple[int, ...]  # blocks with global (not windowed) attention
    window_size: int  # windowed-attention size of the other blocks
    prompt_dim: int  # D: width of the neck output, prompt and decoder tokens
    mask_in_chans: int  # hidden channels of the mask-prompt downscaler
    decoder_depth: int  # TwoWayTransformer depth
    decoder_mlp_dim: int  # TwoWayTransformer MLP width
    decoder_num_heads: int  # TwoWayTransformer heads
    iou_head_hidden_dim: int  # hidden width of the IoU prediction MLP


def _official(
    embed_dim: int, depth: int, heads: int, global_idx: tuple[int, ...]
) -> SamVariantSpec:
    return SamVariantSpec(
        img_size=1024,
        patch_size=16,
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=heads,
        encoder_global_attn_indexes=global_idx,
        window_size=14,
        prompt_dim=256,
        mask_in_chans=16,
        decoder_depth=2,
        decoder_mlp_dim=2048,
        decoder_num_heads=8,
        iou_head_hidden_dim=256,
    )


SAM_VARIANTS: dict[str, SamVariantSpec] = {
    "vit_b": _official(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": _official(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": _official(1280, 32, 16, (7, 15, 23, 31)),
    "tiny": SamVariantSpec(
        img_size=128,
        patch_size=8,
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        window_size=4,
        prompt_dim=32,
        mask_in_chans=4,
        decoder_depth=2,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    ),
    "small": SamVariantSpec(
        img_size=128,
        patch_size=8,
        encoder_embed_dim=64,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        window_size=4,
        prompt_dim=128,
        mask_in_chans=8,
        decoder_depth=2,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
    # The architecture of the shipped `tiny-synth` weights: `small` with a 128-d, 4-block
    # encoder (global attention in blocks 1 and 3) and a 16-channel mask-prompt downscaler.
    "tiny-synth": SamVariantSpec(
        img_size=128,
        patch_size=8,
        encoder_embed_dim=128,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
        window_size=8,
        prompt_dim=128,
        mask_in_chans=16,
        decoder_depth=2,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
}


def build_sam_parts(spec: SamVariantSpec) -> tuple[ImageEncoderViT, PromptEncoder, MaskDecoder]:
    """Build SAM's three components for a preset, exactly as `segment_anything._build_sam`."""
    grid = spec.img_size // spec.patch_size
    image_encoder = ImageEncoderViT(
        depth=spec.encoder_depth,
        embed_dim=spec.encoder_embed_dim,
        img_size=spec.img_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),  # type: ignore[arg-type]
        num_heads=spec.encoder_num_heads,
        patch_size=spec.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=spec.encoder_global_attn_indexes,
        window_size=spec.window_size,
        out_chans=spec.prompt_dim,
    )
    prompt_encoder, mask_decoder = build_prompt_path(
        prompt_dim=spec.prompt_dim,
        grid=grid,
        img_size=spec.img_size,
        mask_in_chans=spec.mask_in_chans,
        decoder_depth=spec.decoder_depth,
        decoder_mlp_dim=spec.decoder_mlp_dim,
        decoder_num_heads=spec.decoder_num_heads,
        iou_head_hidden_dim=spec.iou_head_hidden_dim,
    )
    return image_encoder, prompt_encoder, mask_decoder


def build_prompt_path(
    *,
    prompt_dim: int,
    grid: int,
    img_size: int,
    mask_in_chans: int,
    decoder_mlp_dim: int,
    decoder_num_heads: int,
    iou_head_hidden_dim: int,
    decoder_depth: int = 2,
) -> tuple[PromptEncoder, MaskDecoder]:
    """SAM's `PromptEncoder` and `MaskDecoder`, wired as `segment_anything._build_sam` does.

    Three multimask outputs and a 3-layer IoU head; the families that keep SAM's prompt path
    (MobileSAM, EfficientViT-SAM) build theirs with it too.
    """
    prompt_encoder = PromptEncoder(
        embed_dim=prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(img_size, img_size),
        mask_in_chans=mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=decoder_depth,
            embedding_dim=prompt_dim,
            mlp_dim=decoder_mlp_dim,
            num_heads=decoder_num_heads,
        ),
        transformer_dim=prompt_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )
    return prompt_encoder, mask_decoder


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a SAM checkpoint file (`.pth`/`.pt` or `.safetensors`) with `samkit._io`.

    Pickles are read with `torch.load(weights_only=True)` only. A dict that wraps the weights
    under `"model"` or `"state_dict"` (and has no `image_encoder.` keys itself) is unwrapped.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a readable SAM checkpoint (empty, truncated, garbage,
            pickled Python objects beyond tensors) or does not hold a dict of tensors; the
            message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"SAM checkpoint not found: {str(p)!r} (samkit never downloads weights; pass the path "
            "of a local file such as sam_vit_b_01ec64.pth)"
        )
    state = read_checkpoint(p, kind="SAM checkpoint")
    if not isinstance(state, dict):
        raise ValueError(
            f"{p}: not a readable SAM checkpoint: expected a dict, got {type(state).__name__} "
            "(a state dict of tensors, optionally under 'model' or 'state_dict')"
        )
    if not any(str(k).startswith("image_encoder.") for k in state):
        for wrapper in ("model", "state_dict"):
            inner = state.get(wrapper)
            if isinstance(inner, dict):
                state = inner
                break
    assert isinstance(state, dict)
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load a state dict strictly; the error lists every missing and unexpected key.

    Raises:
        RuntimeError: On missing or unexpected keys, or on shape mismatches.
    """
    expected = set(module.state_dict().keys())
    given = set(state.keys())
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if missing or unexpected:
        raise RuntimeError(
            f"Error loading SAM checkpoint {source}: "
            f"missing keys ({len(missing)}): {missing}; "
            f"unexpected keys ({len(unexpected)}): {unexpected}"
        )
    module.load_state_dict(state, strict=True)
