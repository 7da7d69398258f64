"""Private tensor math of `samkit.backbones.sam`: SAM's prompt encoding and mask decoding, batched.

Each function re-implements one upstream segment_anything routine around that routine's public
submodules so that it works on `(B, K)` prompt batches, stays free of data-dependent branches
(`torch.compile(fullgraph=True)` friendly) and keeps coordinates in float32 for low-precision
models. The equivalence with upstream is pinned by `tests/backbones/test_sam.py`.
"""

# b - images in a batch (B)
# k - prompts per image (K)
# n - tokens / points per prompt (N)
# t - decoder output tokens (1 IoU token + mask tokens)
# m - masks (mask tokens)
# d - channels (D); c - channels of the upscaled mask features (D / 8)
# h w - embedding grid (or the upscaled grid where stated)

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange, repeat
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder
from torch import Tensor

__all__: list[str] = []


def work_dtype(prompt_encoder: PromptEncoder) -> torch.dtype:
    """Dtype of coordinates and Fourier features: float32 (float64 for a float64 model)."""
    gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    return torch.float64 if gaussian.dtype == torch.float64 else torch.float32


def fourier_features(prompt_encoder: PromptEncoder, unit: Tensor) -> Tensor:
    """SAM's random-Fourier encoding of `(..., 2)` `(x, y)` in `[0, 1]` -> `(..., D)`.

    Computed in the dtype of `unit`, returned in the prompt encoder's dtype
    (`PositionEmbeddingRandom._pe_encoding`).
    """
    gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix  # (2, D/2)
    x = 2 * unit - 1
    x = x @ gaussian.to(x.dtype)
    x = 2 * math.pi * x
    out = torch.cat([torch.sin(x), torch.cos(x)], dim=-1)
    return out.to(prompt_encoder.no_mask_embed.weight.dtype)


def dense_positional_encoding(prompt_encoder: PromptEncoder) -> Tensor:
    """Encoding of the cell centres of the embedding grid, `(1, D, h, w)` (`get_dense_pe`)."""
    h, w = prompt_encoder.image_embedding_size
    gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    device, dtype = gaussian.device, work_dtype(prompt_encoder)
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
    return rearrange(fourier_features(prompt_encoder, grid), "h w d -> 1 d h w")


def encode_coords(prompt_encoder: PromptEncoder, coords: Tensor) -> Tensor:
    """Fourier encoding of `(..., 2)` `(x, y)` pixels in the SAM input frame -> `(..., D)`."""
    h_in, w_in = prompt_encoder.input_image_size
    size = torch.tensor([w_in, h_in], device=coords.device, dtype=coords.dtype)
    return fourier_features(prompt_encoder, coords / size)


def embed_points(
    prompt_encoder: PromptEncoder, points: Tensor, labels: Tensor, *, pad: bool
) -> Tensor:
    """Embed `(B, K, N, 2)` points with `(B, K, N)` labels into `(B, K, N[+1], D)` tokens.

    Branch-free version of `PromptEncoder._embed_points`: label -1 is padding (the positional
    part is zeroed and `not_a_point_embed` added), 0 background, 1 foreground; with `pad` a
    padding point is appended, as upstream does when no box is given.
    """
    pe = prompt_encoder
    dtype = pe.no_mask_embed.weight.dtype
    points = points.to(work_dtype(pe)) + 0.5  # shift to the pixel centre
    labels = labels.to(points.device)
    if pad:
        b, k = points.shape[:2]
        points = torch.cat([points, points.new_zeros(b, k, 1, 2)], dim=2)
        labels = torch.cat([labels, labels.new_full((b, k, 1), -1)], dim=2)
    emb = encode_coords(pe, points)
    lab = labels.unsqueeze(-1)
    emb = torch.where(lab == -1, torch.zeros_like(emb), emb)
    emb = emb + (lab == -1).to(dtype) * pe.not_a_point_embed.weight[0]
    emb = emb + (lab == 0).to(dtype) * pe.point_embeddings[0].weight[0]
    emb = emb + (lab == 1).to(dtype) * pe.point_embeddings[1].weight[0]
    return emb


def embed_boxes(prompt_encoder: PromptEncoder, boxes: Tensor) -> Tensor:
    """Embed `(B, K, 4)` boxes into two corner tokens `(B, K, 2, D)` (`_embed_boxes`)."""
    pe = prompt_encoder
    corners = rearrange(boxes.to(work_dtype(pe)) + 0.5, "b k (c two) -> b k c two", two=2)
    corner_types = torch.cat([pe.point_embeddings[2].weight, pe.point_embeddings[3].weight])
    return encode_coords(pe, corners) + corner_types


def predict_masks_batched(
    mask_decoder: MaskDecoder,
    image_embeddings: Tensor,
    image_pe: Tensor,
    sparse: Tensor,
    dense: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """`MaskDecoder.predict_masks` for `K` prompts on each of `B` images.

    Args:
        mask_decoder: SAM's mask decoder.
        image_embeddings: `(B, D, h, w)`.
        image_pe: `(1, D, h, w)`.
        sparse: `(B, K, N, D)`.
        dense: `(B, K, D, h, w)`.

    Returns:
        Mask logits `(B, K, M, 4h, 4w)`, IoU predictions `(B, K, M)` and the decoder's mask
        tokens `(B, K, M, D)`, for all `M = 1 + num_multimask_outputs` mask tokens.
    """
    dec = mask_decoder
    b, k = sparse.shape[:2]
    h, w = image_embeddings.shape[-2:]
    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    output_tokens = repeat(output_tokens.to(sparse.dtype), "t d -> bk t d", bk=b * k)
    tokens = torch.cat([output_tokens, rearrange(sparse, "b k n d -> (b k) n d")], dim=1)
    # each image's embedding is repeated for its own K prompts
    src = repeat(image_embeddings, "b d h w -> (b k) d h w", k=k)
    src = src + rearrange(dense, "b k d h w -> (b k) d h w")
    pos = image_pe.to(src.dtype).expand(b * k, -1, -1, -1)
    hs, src_out = dec.transformer(src, pos, tokens)
    iou_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :]
    upscaled = dec.output_upscaling(
        rearrange(src_out, "bk (h w) d -> bk d h w", bk=b * k, h=h, w=w)
    )
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)],
        dim=1,
    )  # (bk, m, c)
    uh, uw = upscaled.shape[-2:]
    masks = hyper_in @ rearrange(upscaled, "bk c h w -> bk c (h w)")
    # every axis size is given, so an empty batch (b * k = 0) reshapes too
    masks = rearrange(masks, "(b k) m (h w) -> b k m h w", b=b, k=k, h=uh, w=uw)
    iou = rearrange(dec.iou_prediction_head(iou_out), "(b k) m -> b k m", b=b, k=k)
    mask_tokens = rearrange(mask_tokens_out, "(b k) m d -> b k m d", b=b, k=k)
    return masks, iou, mask_tokens


def encoder_forward(
    image_encoder: ImageEncoderViT, x: Tensor, intermediates: Sequence[int]
) -> tuple[Tensor, list[Tensor]]:
    """`ImageEncoderViT.forward`, also returning the outputs of the listed blocks.

    Args:
        image_encoder: SAM's ViT image encoder.
        x: Model input `(B, 3, S, S)`.
        intermediates: Block indices whose outputs to return (negative indices count from the
            end).

    Returns:
        The neck output `(B, D, h, w)` and the block outputs, each `(B, D_vit, h, w)`, in the
        order of `intermediates`.
    """
    depth = len(image_encoder.blocks)
    wanted = [i % depth for i in intermediates]
    x = image_encoder.patch_embed(x)  # (b, h, w, d_vit)
    if image_encoder.pos_embed is not None:
        x = x + image_encoder.pos_embed
    taps: dict[int, Tensor] = {}
    for i, block in enumerate(image_encoder.blocks):
        x = block(x)
        if i in wanted:
            taps[i] = rearrange(x, "b h w d -> b d h w")
    out = image_encoder.neck(rearrange(x, "b h w d -> b d h w"))
    return out, [taps[i] for i in wanted]
