"""SAM-CP patch encoder: RoI features of SAM patches, box embeddings and self-attention.

Follows SAM-CP, spec section 2: multi-level image features -> RoIAlign 7x7 per patch (mmdet level
mapping) -> multiplied by the patch's own 7x7 mask -> MLP -> LayerNorm, plus a sine box
embedding through an MLP, then `num_layers` post-norm self-attention layers with padding masks.

Axis legend:
    b - images (B)
    n - patches (N)
    d - channels (D)
    hw - RoI bins (7 x 7)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torchvision.ops import roi_align

from samkit._checks import as_image, check_shape, resolve_image_sizes

# The feature pyramids lived here until they moved to `feature_pyramid`; still importable here.
from samkit.modules.feature_pyramid import ResNetFPN, TimmFPN, TinyFeaturePyramid  # noqa: F401

__all__ = [
    "PatchEncoder",
    "PostNormSelfAttentionLayer",
    "ResidualFFN",
    "box_sine_embedding",
    "pyramid_features",
    "roi_levels",
]


def box_sine_embedding(
    boxes: Tensor, *, num_feats: int = 128, temperature: float = 10000.0
) -> Tensor:
    """Sine encoding of normalised `(cx, cy, w, h)` boxes, in mmdet's `(y, x, w, h)` order.

    Each coordinate `c` becomes `[sin(2 pi c / t_0), cos(2 pi c / t_0), sin(2 pi c / t_2), ...]`
    with `t_i = temperature ** (2 (i // 2) / num_feats)` (sin/cos interleaved).

    Args:
        boxes: Boxes `(..., 4)` as normalised `(cx, cy, w, h)`.
        num_feats: Features per coordinate (even).
        temperature: Frequency base.

    Returns:
        Embeddings `(..., 4 * num_feats)`.

    Examples:
        >>> box_sine_embedding(torch.rand(2, 3, 4), num_feats=8).shape
        torch.Size([2, 3, 32])
    """
    check_shape(boxes, "... 4", name="boxes")
    i = torch.arange(num_feats, dtype=boxes.dtype, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)
    pos = boxes[..., None] * (2 * math.pi) / dim_t  # ... 4 f
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat([pos[..., 1, :], pos[..., 0, :], pos[..., 2, :], pos[..., 3, :]], dim=-1)


def roi_levels(boxes: Tensor, *, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """The mmdet RoI-to-level mapping `floor(log2(sqrt(w h) / finest_scale + 1e-6))`, clamped.

    Args:
        boxes: Boxes `(N, 4)`, `(x0, y0, x1, y1)` pixels.
        num_levels: Number of pyramid levels used for RoIs.
        finest_scale: Box scale mapped to level 0.

    Returns:
        Level index per box `(N,)` (long) in `[0, num_levels)`.

    Examples:
        >>> boxes = torch.tensor([[0.0, 0.0, 50.0, 50.0], [0.0, 0.0, 400.0, 400.0]])
        >>> roi_levels(boxes, num_levels=4)
        tensor([0, 2])
    """
    scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    lvl = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return lvl.clamp(0, num_levels - 1).long()


def _group_by_size(sizes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    """Indices of the images of each size, in order of first appearance.

    Examples:
        >>> _group_by_size([(4, 4), (2, 3), (4, 4)])
        {(4, 4): [0, 2], (2, 3): [1]}
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, hw in enumerate(sizes):
        groups.setdefault(hw, []).append(i)
    return groups


def _replicate_beyond(x: Tensor, sizes: Sequence[tuple[int, int]]) -> Tensor:
    """Overwrite `x[i]` `(..., H, W)` outside its own `sizes[i]` with its last valid row/column.

    RoIAlign clamps samples that fall past the last row or column of an unpadded map to that
    row or column; replicating the edge makes a padded map sample the same values.
    """
    h, w = x.shape[-2:]
    if all(hw == (h, w) for hw in sizes):
        return x
    out = []
    for xi, (hi, wi) in zip(x, sizes, strict=True):
        if (hi, wi) != (h, w):
            rows = torch.arange(h, device=x.device).clamp(max=hi - 1)
            cols = torch.arange(w, device=x.device).clamp(max=wi - 1)
            xi = xi.index_select(-2, rows).index_select(-1, cols)
        out.append(xi)
    return torch.stack(out)


def _size_scale(
    boxes: Tensor, image_size: tuple[int, int], image_sizes: Sequence[tuple[int, int]] | None
) -> Tensor:
    """`(w, h, w, h)` per image, `(B, 1, 4)`, to normalise pixel boxes `(B, N, 4)`."""
    sizes = image_sizes if image_sizes is not None else [image_size] * boxes.shape[0]
    if len(sizes) != boxes.shape[0]:
        raise ValueError(f"image_sizes: expected {boxes.shape[0]} (h, w) pairs, got {len(sizes)}")
    wh = [(float(w), float(h), float(w), float(h)) for h, w in sizes]
    return torch.tensor(wh, dtype=boxes.dtype, device=boxes.device).reshape(-1, 1, 4)


def pyramid_features(
    extractor: nn.Module,
    images: Tensor,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[Tensor]:
    """Feature pyramid of a padded batch in which every image is computed at its own size.

    Images smaller than the canvas (padded bottom/right, true sizes in `image_sizes`) are
    cropped and run through `extractor` with the other images of the same size; each level is
    then padded bottom/right, by repeating its last row / column, to the largest map of the
    batch. So an image's features, and the RoIAlign samples taken from them, are those of the
    image alone: convolutions never see another image's padding. (The reference pads the batch
    with zeros and runs one forward, which makes features near the border depend on the batch.)

    Args:
        extractor: Images `(B, 3, H, W)` in `[0, 1]` -> list of `(B, D, h, w)` maps, finest first;
            it must treat images independently (eval-mode or frozen normalisation layers).
        images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8.
        image_sizes: True `(h, w)` of each image; default all `(H, W)`.

    Returns:
        The levels, each `(B, D, h_l, w_l)`.

    Examples:
        >>> net = TinyFeaturePyramid(dim=4).eval()
        >>> feats = pyramid_features(net, torch.rand(2, 3, 64, 64), [(64, 64), (40, 64)])
        >>> [tuple(f.shape[-2:]) for f in feats]
        [(16, 16), (8, 8), (4, 4), (2, 2)]
    """
    images = as_image(
        images, name="images", dtype=images.dtype if images.is_floating_point() else None
    )
    sizes = resolve_image_sizes(images, image_sizes)
    h, w = images.shape[-2:]
    groups = _group_by_size(sizes)
    if len(groups) <= 1 and all(hw == (h, w) for hw in sizes):
        return list(extractor(images))
    order: list[int] = []
    per_group: list[list[Tensor]] = []
    for (gh, gw), idx in groups.items():
        order.extend(idx)
        per_group.append(list(extractor(images[idx, :, :gh, :gw])))
    levels = []
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    inverse = inverse.to(images.device)
    for lvl in range(len(per_group[0])):
        maps = [g[lvl] for g in per_group]
        lh = max(m.shape[-2] for m in maps)
        lw = max(m.shape[-1] for m in maps)
        padded = [
            F.pad(m, (0, lw - m.shape[-1], 0, lh - m.shape[-2]), mode="replicate")
            if m.shape[-2:] != (lh, lw)
            else m
            for m in maps
        ]
        levels.append(torch.cat(padded).index_select(0, inverse))
    return levels


class ResidualFFN(nn.Module):
    """mmcv-style FFN with identity residual: `x + W2 relu(W1 x + b1) + b2`.

    Examples:
        >>> ResidualFFN(dim=8, hidden_dim=16)(torch.randn(2, 3, 8)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(self, *, dim: int, hidden_dim: int) -> None:
        """Create the FFN.

        Args:
            dim: Channel width `D`.
            hidden_dim: Hidden width.
        """
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the FFN to `(..., D)` and add the input."""
        return x + self.fc2(torch.relu(self.fc1(x)))


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


def _safe_key_padding(mask: Tensor) -> Tensor:
    """Unmask the first key of rows whose keys are all padded, so softmax stays finite."""
    all_pad = mask.all(-1, keepdim=True)
    first = torch.zeros_like(mask)
    first[..., :1] = True
    return mask & ~(all_pad & first)


class PostNormSelfAttentionLayer(nn.Module):
    """Post-norm self-attention layer (DETR encoder): positions added to queries and keys only.

    `x <- LN(x + MHA(x + pos, x + pos, x)); x <- LN(FFN(x))` with an identity-residual FFN.

    Examples:
        >>> layer = PostNormSelfAttentionLayer(dim=8, num_heads=2, ffn_dim=16)
        >>> layer(torch.randn(2, 5, 8), torch.randn(2, 5, 8)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, *, dim: int, num_heads: int = 8, ffn_dim: int = 2048) -> None:
        """Create the layer.

        Args:
            dim: Channel width `D`.
            num_heads: Attention heads; must divide `dim`.
            ffn_dim: FFN hidden width.
        """
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = ResidualFFN(dim=dim, hidden_dim=ffn_dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Run the layer.

        Args:
            x: Tokens `(B, N, D)`.
            pos: Positional embeddings `(B, N, D)`.
            padding_mask: `(B, N)` bool, True at padding, or `None`.

        Returns:
            Updated tokens `(B, N, D)`.
        """
        kpm = None if padding_mask is None else _safe_key_padding(padding_mask)
        q = x + pos
        x = self.norm1(x + self.attn(q, q, x, key_padding_mask=kpm, need_weights=False)[0])
        return self.norm2(self.ffn(x))


class PatchEncoder(nn.Module):
    """Encodes SAM patches into tokens from image features, patch masks and patch boxes.

    RoIAlign (7x7, mmdet level mapping over the given levels) per patch box, multiplied by the
    patch's binary 7x7 mask, flattened through an MLP and LayerNorm; a sine box embedding through
    an MLP gives each token's position; `num_layers` post-norm self-attention layers mix the
    tokens of one image. Handles a variable number of patches per image through `padding_mask`,
    including images (or batches) with zero patches, and images of different sizes padded
    bottom/right (`image_sizes`): each image's tokens equal those it gets alone. Follows SAM-CP,
    spec section 2. RoIAlign uses the spatial scale `1 / stride` of each level (mmdet's
    `featmap_strides`). Deviation: box positions are normalised by each image's own size; the
    reference multiplies them by the batch's valid ratio (normalising by the padded canvas),
    which makes them depend on the other images of the batch (identical for one image).

    Examples:
        >>> enc = PatchEncoder(dim=16, num_heads=2, ffn_dim=32, mlp_dim=32, num_layers=1)
        >>> feats = [torch.randn(1, 16, 16, 16), torch.randn(1, 16, 8, 8)]
        >>> masks = torch.zeros(1, 3, 64, 64, dtype=torch.bool); masks[:, :, 8:40, 8:40] = True
        >>> boxes = torch.tensor([[[8.0, 8.0, 40.0, 40.0]] * 3])
        >>> tokens, pos = enc(feats, boxes, masks)
        >>> tokens.shape, pos.shape
        (torch.Size([1, 3, 16]), torch.Size([1, 3, 16]))
    """

    def __init__(
        self,
        *,
        dim: int = 256,
        feature_dim: int | None = None,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        mlp_dim: int = 1024,
        num_layers: int = 6,
        roi_size: int = 7,
        finest_scale: float = 56.0,
        use_mask_roi: bool = True,
    ) -> None:
        """Create the encoder.

        Args:
            dim: Token width `D`.
            feature_dim: Channels of the image features (defaults to `dim`).
            num_heads: Self-attention heads.
            ffn_dim: FFN hidden width of the self-attention layers.
            mlp_dim: Hidden width of the RoI MLP.
            num_layers: Number of self-attention layers (omega, 6 in the paper).
            roi_size: RoIAlign output size.
            finest_scale: Box scale mapped to the first level.
            use_mask_roi: Multiply RoI features by the patch's RoI mask ("MaskRoI").
        """
        super().__init__()
        feature_dim = feature_dim or dim
        self.roi_size = roi_size
        self.finest_scale = finest_scale
        self.use_mask_roi = use_mask_roi
        self.dim = dim
        self.roi_mlp = _mlp(feature_dim * roi_size * roi_size, mlp_dim, dim)
        self.roi_norm = nn.LayerNorm(dim)
        self.pos_mlp = _mlp(4 * (dim // 2), dim, dim)
        self.layers = nn.ModuleList(
            [
                PostNormSelfAttentionLayer(dim=dim, num_heads=num_heads, ffn_dim=ffn_dim)
                for _ in range(num_layers)
            ]
        )

    def forward(
        self,
        features: Sequence[Tensor],
        boxes: Tensor,
        masks: Tensor | None = None,
        padding_mask: Tensor | None = None,
        *,
        image_size: tuple[int, int] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        strides: Sequence[float] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Encode the patches of a batch.

        Args:
            features: Image features, finest first, each `(B, D_f, h_l, w_l)`.
            boxes: Padded patch boxes `(B, N, 4)`, `(x0, y0, x1, y1)` pixels of each image.
            masks: Padded binary patch masks `(B, N, H, W)`, or `None` to skip MaskRoI.
            padding_mask: `(B, N)` bool, True at padded patches, or `None`.
            image_size: `(H, W)` of the (padded) images; defaults to the mask size.
            image_sizes: True `(h, w)` of each image (padded bottom/right to `(H, W)`); default
                all `image_size`.
            strides: Stride of each feature level; default inferred as the power of two
                nearest to `max(h) / h_l` (give them for images smaller than ~4 strides).

        Returns:
            `(tokens (B, N, D), positions (B, N, D))`; padded slots are zero.

        Raises:
            ValueError: On inconsistent shapes or when neither `masks` nor `image_size` is given.
        """
        s = check_shape(boxes, "B N 4", name="boxes")
        if masks is not None:
            ms = check_shape(masks, "B N H W", name="masks", known=s)
            image_size = image_size or (ms["H"], ms["W"])
        if image_size is None:
            raise ValueError("PatchEncoder: give masks or image_size")
        if padding_mask is not None:
            check_shape(padding_mask, "B N", name="padding_mask", known=s)
        for i, f in enumerate(features):
            check_shape(f, "B D h w", name=f"features[{i}]", known={"B": s["B"]})
        if strides is not None and len(strides) != len(features):
            raise ValueError(
                f"strides: expected {len(features)} (one per level), got {len(strides)}"
            )
        pos = self.embed_positions(boxes, image_size, image_sizes)
        if masks is not None and image_sizes is not None:
            masks = _replicate_beyond(masks, image_sizes)
        tokens = self.embed_boxes(
            features, boxes, masks, image_size=image_size, image_sizes=image_sizes, strides=strides
        )
        if padding_mask is not None:
            tokens = tokens.masked_fill(padding_mask[..., None], 0.0)
        if s["N"] > 0:
            for layer in self.layers:
                tokens = layer(tokens, pos, padding_mask)
        if padding_mask is not None:
            tokens = tokens.masked_fill(padding_mask[..., None], 0.0)
            pos = pos.masked_fill(padding_mask[..., None], 0.0)
        return tokens, pos

    def embed_positions(
        self,
        boxes: Tensor,
        image_size: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> Tensor:
        """Box positions `(B, N, D)` from pixel boxes `(B, N, 4)` (sine embedding + MLP).

        Boxes are normalised by each image's own size (`image_sizes`, default `image_size`).
        """
        x0, y0, x1, y1 = (boxes / _size_scale(boxes, image_size, image_sizes)).unbind(-1)
        cxcywh = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)
        return self.pos_mlp(box_sine_embedding(cxcywh, num_feats=self.dim // 2))

    def embed_boxes(
        self,
        features: Sequence[Tensor],
        boxes: Tensor,
        masks: Tensor | None = None,
        *,
        image_size: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]] | None = None,
        strides: Sequence[float] | None = None,
    ) -> Tensor:
        """RoI tokens `(B, N, D)` (RoIAlign, optional MaskRoI, MLP, LayerNorm), no attention."""
        b, n = boxes.shape[:2]
        rois = rearrange(boxes, "b n c -> (b n) c")
        batch_idx = torch.arange(b, device=boxes.device).repeat_interleave(n)
        rois5 = torch.cat([batch_idx[:, None].to(rois.dtype), rois], 1)
        if strides is None:
            ref = max((hw[0] for hw in image_sizes), default=image_size[0]) if image_sizes else None
            strides = _infer_strides(features, ref or image_size[0])
        feats = self._roi_features(features, rois5, strides)
        if masks is not None and self.use_mask_roi:
            flat_masks = rearrange(masks, "b n h w -> (b n) 1 h w").to(feats.dtype)
            idx = torch.arange(b * n, device=boxes.device, dtype=rois.dtype)
            roi_masks = _roi_align(
                flat_masks, torch.cat([idx[:, None], rois], 1), self.roi_size, 1.0
            )
            feats = feats * (roi_masks >= 0.5).to(feats.dtype)
        tokens = self.roi_norm(self.roi_mlp(feats.flatten(1)))
        return rearrange(tokens, "(b n) d -> b n d", b=b, n=n)

    def embed_normalized_boxes(
        self,
        features: Sequence[Tensor],
        boxes: Tensor,
        image_size: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]] | None = None,
        strides: Sequence[float] | None = None,
    ) -> Tensor:
        """RoI tokens `(B, K, D)` of normalised `(x0, y0, x1, y1)` boxes `(B, K, 4)` (for QE).

        Boxes are normalised by each image's own size (`image_sizes`, default `image_size`).
        """
        pixel = boxes * _size_scale(boxes, image_size, image_sizes)
        return self.embed_boxes(
            features, pixel, None, image_size=image_size, image_sizes=image_sizes, strides=strides
        )

    def _roi_features(
        self, features: Sequence[Tensor], rois5: Tensor, strides: Sequence[float]
    ) -> Tensor:
        """RoIAlign each RoI `(R, 5)` on its mapped level; returns `(R, D_f, 7, 7)`."""
        num_levels = len(features)
        levels = roi_levels(rois5[:, 1:], num_levels=num_levels, finest_scale=self.finest_scale)
        out = rois5.new_zeros(len(rois5), features[0].shape[1], self.roi_size, self.roi_size)
        for lvl, (feat, stride) in enumerate(zip(features, strides, strict=True)):
            sel = levels == lvl
            pooled = _roi_align(feat, rois5, self.roi_size, 1.0 / float(stride))
            out = torch.where(sel[:, None, None, None], pooled, out)
        return out


def _roi_align(features: Tensor, rois: Tensor, size: int, scale: float) -> Tensor:
    """Aligned `torchvision.ops.roi_align` (no sampling limit) in the dtype of `features`.

    Torchvision's CPU kernel has no bfloat16 / float16 version, so those inputs (a model cast
    with `.to(torch.bfloat16)`) are pooled in float32 and cast back; RoIs are taken in float32
    then too, so box corners keep their sub-pixel position.
    """
    if features.dtype in (torch.bfloat16, torch.float16):
        pooled = roi_align(features.float(), rois.float(), size, scale, 0, True)
        return pooled.to(features.dtype)
    return roi_align(features, rois, size, scale, 0, True)


def _infer_strides(features: Sequence[Tensor], image_height: int) -> list[float]:
    """Stride of each level: the power of two nearest to `image_height / h_l`."""
    return [float(2 ** round(math.log2(image_height / max(f.shape[-2], 1)))) for f in features]
