"""Dense CLIP features: the per-call positional embedding and the modified last blocks.

Everything here is computed functionally from the weights of an open_clip `VisionTransformer`;
nothing in the model is replaced or mutated.
"""

# einops axis legend:
# b  - batch (images)
# n  - tokens (CLS first, then gh * gw patches)
# c  - channels (transformer width, or the joint embedding after `proj`)
# h  - attention heads
# d  - channels per head
# gh, gw - patch grid

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

DenseMode = Literal["plain", "value", "surgery"]
DENSE_MODES: tuple[str, ...] = ("plain", "value", "surgery")


def interpolate_pos_embed(
    pos_embed: Tensor, native_grid: tuple[int, int], grid: tuple[int, int]
) -> Tensor:
    """Resize the patch part of a ViT positional embedding bicubically (CLS position kept).

    Args:
        pos_embed: Positional embedding `(1 + gh0 * gw0, c)` of the native grid.
        native_grid: `(gh0, gw0)`, the grid `pos_embed` was trained for.
        grid: `(gh, gw)`, the grid wanted.

    Returns:
        `(1 + gh * gw, c)`; `pos_embed` itself when the grids agree.
    """
    if tuple(native_grid) == tuple(grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    patch = rearrange(patch_pos, "(gh gw) c -> 1 c gh gw", gh=native_grid[0], gw=native_grid[1])
    patch = F.interpolate(patch.float(), size=grid, mode="bicubic", align_corners=False)
    patch = rearrange(patch, "1 c gh gw -> (gh gw) c").to(pos_embed.dtype)
    return torch.cat([cls_pos, patch], dim=0)


def embed_images(visual: Any, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Patchify, add CLS and the (interpolated) positional embedding, apply `ln_pre`.

    Patch dropout is never applied: dense features need every patch.

    Args:
        visual: An open_clip `VisionTransformer`.
        images: Normalised images `(b, 3, H, W)`.

    Returns:
        Tokens `(b, 1 + gh * gw, c)` and the grid `(gh, gw)`.
    """
    x = visual.conv1(images)
    grid = (int(x.shape[-2]), int(x.shape[-1]))
    x = rearrange(x, "b c gh gw -> b (gh gw) c")
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    native = tuple(int(g) for g in visual.grid_size)
    pos = interpolate_pos_embed(visual.positional_embedding, (native[0], native[1]), grid)
    x = x + pos.to(x.dtype)
    return visual.ln_pre(x), grid


def run_block(block: Any, x: Tensor, *, batch_first: bool) -> Tensor:
    """Run an unmodified residual block on batch-first tokens `(b, n, c)`."""
    if batch_first:
        return block(x)
    return block(x.transpose(0, 1)).transpose(0, 1)


def _value_projection(attn: Any, y: Tensor) -> Tensor:
    """The value slice of the attention in-projection (with its bias): `(b, n, c)`."""
    width = int(attn.embed_dim)
    weight = attn.in_proj_weight[2 * width :]
    bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    return F.linear(y, weight, bias)


def value_block(block: Any, x: Tensor) -> Tensor:
    """CAT-Seg's dense last block (`forward_dense`): the value path only, no attention mixing.

    `v' = out_proj(v(ln_1(x))) + x_cls` with `x_cls` the block input's CLS token broadcast to
    every position, then `out = v' + mlp(ln_2(v'))`.

    Args:
        block: An open_clip `ResidualAttentionBlock`.
        x: Block input `(b, n, c)`, CLS first.

    Returns:
        Block output `(b, n, c)`.
    """
    v = block.attn.out_proj(_value_projection(block.attn, block.ln_1(x)))
    v = block.ls_1(v) + x[:, :1]
    return v + block.ls_2(block.mlp(block.ln_2(v)))


def surgery_attention(attn: Any, y: Tensor) -> Tensor:
    """CLIP-Surgery's v-v attention: `out_proj(softmax(v v^T / sqrt(d)) v)` per head.

    Args:
        attn: The block's `nn.MultiheadAttention`.
        y: Normalised block input `ln_1(x)`, `(b, n, c)`.

    Returns:
        `(b, n, c)`.
    """
    v = rearrange(_value_projection(attn, y), "b n (h d) -> b h n d", h=int(attn.num_heads))
    scale = v.shape[-1] ** -0.5
    weights = torch.softmax(torch.einsum("bhnd,bhmd->bhnm", v, v) * scale, dim=-1)
    out = torch.einsum("bhnm,bhmd->bhnd", weights, v)
    return attn.out_proj(rearrange(out, "b h n d -> b n (h d)"))


def run_dense_tower(
    visual: Any,
    x: Tensor,
    *,
    mode: str,
    taps: Sequence[int],
    surgery_depth: int,
) -> tuple[Tensor, dict[int, Tensor]]:
    """Run the blocks of a vision tower with the tail modified by `mode`.

    Args:
        visual: An open_clip `VisionTransformer`.
        x: Embedded tokens `(b, n, c)` from `embed_images`.
        mode: `"plain"`, `"value"` or `"surgery"`.
        taps: Non-negative block indices whose (unmodified-stream) outputs are returned.
        surgery_depth: Number of trailing blocks run with the surgery dual path (`1..L`).

    Returns:
        The final token stream `(b, n, c)` before `ln_post`, and `{index: (b, n, c)}` taps.
    """
    blocks = visual.transformer.resblocks
    batch_first = bool(getattr(visual.transformer, "batch_first", True))
    num_blocks = len(blocks)
    first_modified = {"plain": num_blocks, "value": num_blocks - 1}.get(
        mode, num_blocks - surgery_depth
    )
    wanted = set(taps)
    saved: dict[int, Tensor] = {}
    for i in range(first_modified):
        x = run_block(blocks[i], x, batch_first=batch_first)
        if i in wanted:
            saved[i] = x
    if mode == "value":
        last = num_blocks - 1
        if last in wanted:
            saved[last] = run_block(blocks[last], x, batch_first=batch_first)
        x = value_block(blocks[last], x)
    elif mode == "surgery":
        x_s, x_o = x, x
        for i in range(first_modified, num_blocks):
            block = blocks[i]
            a_s = surgery_attention(block.attn, block.ln_1(x_o))
            x_s = x_s + block.ls_1(a_s)  # the surgery path skips the MLP
            x_o = run_block(block, x_o, batch_first=batch_first)
            if i in wanted:
                saved[i] = x_o
        x = torch.cat([x_o[:, :1], x_s[:, 1:]], dim=1)
    return x, saved
