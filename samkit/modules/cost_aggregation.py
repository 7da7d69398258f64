"""Cost-volume aggregation for open-vocabulary segmentation (CAT-Seg, the base of SAM-MI).

`cost_volume` gives the cosine similarity of dense CLIP features and class text embeddings,
`CostEmbedding` embeds it per class, `CostAggregator` runs guided spatial and class aggregation
(`samkit.modules.cost_attention`) and the guided upsampling decoder
(`samkit.modules.cost_decoder`) to per-class logits at 4x the feature grid, and
`sliding_window_inference` is the reference's tiles + global-view evaluation. Spec `sam-mi.md` §2.

Axis legend (einops):
    b - images (B)     t - classes (T)     d - channels (D)     h w - feature grid
    n - sliding-window tiles
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from samkit._checks import as_float, as_image, check_positive, check_shape
from samkit.modules.cost_attention import ClassAggregation, SpatialAggregation
from samkit.modules.cost_decoder import UpsamplingDecoder

__all__ = [
    "CostAggregator",
    "CostEmbedding",
    "cost_volume",
    "select_top_classes",
    "sliding_window_inference",
]


def _per_image_text(text: Tensor, batch: int) -> Tensor:
    if text.dim() == 2:
        return repeat(text, "t d -> b t d", b=batch)
    return text


def _check_classes(text: Tensor, *, name: str = "text") -> None:
    if text.dim() >= 2 and text.shape[-2] < 1:
        raise ValueError(
            f"{name}: expected at least one class embedding (T >= 1), got shape {tuple(text.shape)}"
        )


def cost_volume(features: Tensor, text: Tensor) -> Tensor:
    """Cosine similarity of every location with every class text embedding.

    Computed in the wider of the two dtypes (float32 at least: half inputs give the float32
    result).

    Args:
        features: Dense image features `(B, D, h, w)`.
        text: Class embeddings `(T, D)` shared by the batch, or per image `(B, T, D)`, `T >= 1`.

    Returns:
        The cost volume `(B, T, h, w)` in `[-1, 1]`.

    Raises:
        ValueError: On mismatched shapes or `T = 0`.

    Examples:
        >>> cost_volume(torch.randn(2, 8, 4, 4), torch.randn(3, 8)).shape
        torch.Size([2, 3, 4, 4])
    """
    s = check_shape(features, "B D h w", name="features")
    _check_classes(text)
    text = _per_image_text(text, s["B"])
    check_shape(text, "B T D", name="text", known={"B": s["B"], "D": s["D"]})
    dtype = torch.promote_types(torch.promote_types(features.dtype, text.dtype), torch.float32)
    f = F.normalize(as_float(features, name="features", dtype=dtype), dim=1)
    t = F.normalize(as_float(text, name="text", dtype=dtype), dim=-1)
    return torch.einsum("bdhw,btd->bthw", f, t)


def select_top_classes(cost: Tensor, k: int) -> Tensor:
    """Indices of the `k` classes with the highest maximum cost per image (CAT-Seg truncation).

    Args:
        cost: Cost volume `(B, T, h, w)`.
        k: Number of classes to keep (`k <= T`).

    Returns:
        Class indices `(B, k)`, in ascending class order.

    Raises:
        ValueError: If `k < 1` or `k > T`.

    Examples:
        >>> c = torch.zeros(1, 4, 2, 2); c[0, 2, 0, 0] = 1; c[0, 0, 1, 1] = 0.5
        >>> select_top_classes(c, 2)
        tensor([[0, 2]])
    """
    s = check_shape(cost, "B T h w", name="cost")
    check_positive(k, name="k")
    if k > s["T"]:
        raise ValueError(f"k: expected at most T={s['T']} classes, got {k}")
    top = cost.flatten(2).amax(dim=-1).topk(k, dim=1).indices
    return top.sort(dim=1).values


class CostEmbedding(nn.Module):
    """Embed each class's cost map `(h, w)` into `D` channels (CAT-Seg `conv1`; paper: "MLP").

    `kind="conv"` is CAT-Seg's 7x7 convolution applied per class; `kind="mlp"` is a per-pixel
    two-layer MLP (1 -> D -> D), the literal reading of SAM-MI's figure.

    Examples:
        >>> CostEmbedding(dim=16)(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 16, 3, 8, 8])
    """

    def __init__(self, *, dim: int, kind: Literal["conv", "mlp"] = "conv", kernel_size: int = 7):
        """Create the embedding.

        Args:
            dim: Output channels `D`.
            kind: `"conv"` (CAT-Seg) or `"mlp"`.
            kernel_size: Convolution kernel for `kind="conv"`.
        """
        super().__init__()
        if kind == "conv":
            self.net: nn.Module = nn.Conv2d(1, dim, kernel_size, padding=kernel_size // 2)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Conv2d(1, dim, 1), nn.GELU(), nn.Conv2d(dim, dim, 1))
        else:
            raise ValueError(f"kind must be 'conv' or 'mlp', got {kind!r}")

    def forward(self, cost: Tensor) -> Tensor:
        """Embed.

        Args:
            cost: Cost volume `(B, T, h, w)`, any float dtype (computed in the module's).

        Returns:
            The embedded cost `(B, D, T, h, w)`.
        """
        s = check_shape(cost, "B T h w", name="cost")
        weight = next(self.net.parameters())
        cost = as_float(cost, name="cost", dtype=weight.dtype)
        z = self.net(rearrange(cost, "b t h w -> (b t) 1 h w"))
        return rearrange(z, "(b t) d h w -> b d t h w", b=s["B"], t=s["T"])


class CostAggregator(nn.Module):
    """CAT-Seg's aggregator: cost volume -> embedding -> N x (spatial, class) -> guided decoder.

    Inputs are the dense features used for the cost (`F_l`, which is also the default appearance
    guidance), the class text embeddings, and the intermediate CLIP taps that the
    `upsample_taps` transposed convolutions turn into the decoder guidance (`F_h1`, `F_h2`).
    SAM-MI's decoupled mask injection replaces the appearance guidance (`appearance=`) and
    modifies the decoder guidance (`decoder_guidance=`), which is why both can be passed in.
    With `pad_len > 0` and more than `pad_len` classes, each image keeps its `pad_len`
    highest-cost classes and the dropped ones get logit `-100`, as in the reference.

    Examples:
        >>> agg = CostAggregator(feature_dim=8, vision_width=12, dim=16, num_heads=2,
        ...                      window_size=4, guidance_dim=8, text_guidance_dim=8,
        ...                      decoder_dims=(8, 8), tap_dims=(8, 8),
        ...                      decoder_guidance_dims=(4, 4), pad_len=0)
        >>> taps = [torch.randn(2, 12, 6, 6), torch.randn(2, 12, 6, 6)]
        >>> agg(torch.randn(2, 8, 6, 6), torch.randn(3, 8), taps).shape
        torch.Size([2, 3, 24, 24])
    """

    def __init__(
        self,
        *,
        feature_dim: int = 512,
        vision_width: int = 768,
        dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        window_size: int = 12,
        guidance_dim: int = 128,
        text_guidance_dim: int = 128,
        tap_dims: Sequence[int] = (256, 128),
        decoder_guidance_dims: Sequence[int] = (32, 16),
        decoder_dims: Sequence[int] = (64, 32),
        pooling_size: tuple[int, int] = (2, 2),
        eval_pooling_size: tuple[int, int] | None = (1, 1),
        pad_len: int = 256,
        double_residual: bool = True,
        embedding: Literal["conv", "mlp"] = "conv",
    ) -> None:
        """Create the aggregator (defaults: CAT-Seg ViT-B/16 config).

        Args:
            feature_dim: Channels `C_e` of the dense features and text embeddings.
            vision_width: Channels of the intermediate CLIP taps.
            dim: Channels `D` of the cost embedding.
            num_layers: Number of (spatial, class) aggregation layers.
            num_heads: Attention heads in both aggregations.
            window_size: Swin window side of the spatial aggregation.
            guidance_dim: Projected appearance guidance channels (0 disables it).
            text_guidance_dim: Projected text guidance channels (0 disables it).
            tap_dims: Channels of the upsampled taps (decoder stage `i` gets tap `i` upsampled
                by `2 ** (i + 1)`).
            decoder_guidance_dims: Channels the upsampled taps are projected to per stage.
            decoder_dims: Output channels of the decoder stages.
            pooling_size: Class-aggregation pooling in training.
            eval_pooling_size: Class-aggregation pooling in eval (None: as in training).
            pad_len: Class padding length and truncation limit (0 disables both).
            double_residual: The reference's doubled class-aggregation residual.
            embedding: Cost embedding kind, `"conv"` (CAT-Seg) or `"mlp"`.
        """
        super().__init__()
        if len(tap_dims) != len(decoder_dims) or len(decoder_guidance_dims) != len(decoder_dims):
            raise ValueError(
                "tap_dims, decoder_guidance_dims and decoder_dims must match in length"
            )
        self.pad_len = pad_len
        self.embed = CostEmbedding(dim=dim, kind=embedding)
        self.guidance_projection = (
            nn.Sequential(nn.Conv2d(feature_dim, guidance_dim, 3, padding=1), nn.ReLU())
            if guidance_dim > 0
            else None
        )
        self.text_guidance_projection = (
            nn.Sequential(nn.Linear(feature_dim, text_guidance_dim), nn.ReLU())
            if text_guidance_dim > 0
            else None
        )
        self.upsample_tap = nn.ModuleList(
            nn.ConvTranspose2d(vision_width, c, 2 ** (i + 1), stride=2 ** (i + 1))
            for i, c in enumerate(tap_dims)
        )
        self.decoder_guidance_projection = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, g, 3, padding=1), nn.ReLU())
            for c, g in zip(tap_dims, decoder_guidance_dims, strict=True)
        )
        self.spatial = nn.ModuleList(
            SpatialAggregation(
                dim=dim, guidance_dim=guidance_dim, num_heads=num_heads, window_size=window_size
            )
            for _ in range(num_layers)
        )
        self.classwise = nn.ModuleList(
            ClassAggregation(
                dim=dim,
                guidance_dim=text_guidance_dim,
                num_heads=num_heads,
                pooling_size=pooling_size,
                eval_pooling_size=eval_pooling_size,
                pad_len=pad_len,
                double_residual=double_residual,
            )
            for _ in range(num_layers)
        )
        self.decoder = UpsamplingDecoder(
            dim=dim, dims=decoder_dims, guidance_dims=decoder_guidance_dims
        )

    def upsample_taps(self, intermediates: Sequence[Tensor]) -> list[Tensor]:
        """Turn CLIP taps `(B, vision_width, h, w)` into decoder guidance `F_h` maps.

        Args:
            intermediates: One tap per decoder stage, `(B, vision_width, h, w)` each.

        Returns:
            `[(B, tap_dims[0], 2h, 2w), (B, tap_dims[1], 4h, 4w), ...]`.
        """
        if len(intermediates) != len(self.upsample_tap):
            raise ValueError(
                f"intermediates: expected {len(self.upsample_tap)} taps, got {len(intermediates)}"
            )
        return [
            up(as_float(t, name=f"intermediates[{i}]", dtype=next(up.parameters()).dtype))
            for i, (up, t) in enumerate(zip(self.upsample_tap, intermediates, strict=True))
        ]

    def forward(
        self,
        features: Tensor,
        text: Tensor,
        intermediates: Sequence[Tensor] | None = None,
        *,
        appearance: Tensor | None = None,
        decoder_guidance: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Per-class segmentation logits.

        Any float dtype is computed in the aggregator's dtype; `B = 0` gives `(0, T, ...)`.

        Args:
            features: Dense image features `(B, C_e, h, w)` used for the cost volume.
            text: Class embeddings `(T, C_e)` or `(B, T, C_e)`, `T >= 1`.
            intermediates: Raw CLIP taps `(B, vision_width, h, w)`, one per decoder stage.
            appearance: Appearance guidance `(B, C_e, h, w)`; defaults to `features`.
            decoder_guidance: Already upsampled taps (output of `upsample_taps`, possibly
                modified); replaces `intermediates`.

        Returns:
            Logits `(B, T, h * 2**S, w * 2**S)` for `S` decoder stages (4x for the default).

        Raises:
            ValueError: On mismatched shapes, `T = 0`, or neither `intermediates` nor
                `decoder_guidance`.
        """
        s = check_shape(features, "B D h w", name="features")
        _check_classes(text)
        text = _per_image_text(text, s["B"])
        check_shape(text, "B T D", name="text", known={"B": s["B"], "D": s["D"]})
        dtype = self.decoder.head.weight.dtype
        features = as_float(features, name="features", dtype=dtype)
        text = as_float(text, name="text", dtype=dtype)
        if appearance is not None:
            appearance = as_float(appearance, name="appearance", dtype=dtype)
        if decoder_guidance is None:
            if intermediates is None:
                raise ValueError("intermediates: give either intermediates or decoder_guidance")
            decoder_guidance = self.upsample_taps(intermediates)
        decoder_guidance = [
            as_float(g, name=f"decoder_guidance[{i}]", dtype=dtype)
            for i, g in enumerate(decoder_guidance)
        ]
        cost = cost_volume(features, text)
        num_classes = text.shape[1]
        keep: Tensor | None = None
        if 0 < self.pad_len < num_classes:
            keep = select_top_classes(cost, self.pad_len)
            text = torch.gather(text, 1, repeat(keep, "b k -> b k d", d=text.shape[-1]))
            cost = cost_volume(features, text)
        logits = self._aggregate(
            cost, text, appearance if appearance is not None else features, decoder_guidance
        )
        if keep is None:
            return logits
        full = logits.new_full((s["B"], num_classes, *logits.shape[-2:]), -100.0)
        idx = repeat(keep, "b k -> b k h w", h=logits.shape[-2], w=logits.shape[-1])
        return full.scatter(1, idx, logits)

    def _aggregate(
        self, cost: Tensor, text: Tensor, appearance: Tensor, taps: Sequence[Tensor]
    ) -> Tensor:
        x = self.embed(cost)
        g_a = self.guidance_projection(appearance) if self.guidance_projection else None
        g_t = (
            self.text_guidance_projection(F.normalize(text, dim=-1))
            if self.text_guidance_projection
            else None
        )
        g_d = [proj(t) for proj, t in zip(self.decoder_guidance_projection, taps, strict=True)]
        for spatial, classwise in zip(self.spatial, self.classwise, strict=True):
            x = classwise(spatial(x, g_a), g_t)
        return self.decoder(x, g_d)


def sliding_window_inference(
    fn: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    window: int = 384,
    stride: int = 256,
    size: int = 640,
) -> Tensor:
    """CAT-Seg's evaluation: overlapping tiles plus a global view, averaged as probabilities.

    The image is resized to `size x size` and cut into `window`-sized tiles with `stride`; each
    tile and the whole image resized to `window` go through `fn`; sigmoid probabilities of the
    tiles are averaged where they overlap, averaged with the global view, and resized back.

    Args:
        fn: Maps float32 images `(N, 3, window, window)` in `[0, 1]` to logits `(N, T, h', w')`.
        images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8 (divided by 255).
        window: Tile side.
        stride: Tile stride; `(size - window)` must be a multiple of it.
        size: Side the image is resized to before tiling.

    Returns:
        Class probabilities `(B, T, H, W)`.

    Raises:
        ValueError: If `images` is not a valid image batch, a size is below 1, or
            `size - window` is not a multiple of `stride`.

    Examples:
        >>> fn = lambda x: x[:, :2, ::4, ::4]
        >>> sliding_window_inference(fn, torch.rand(1, 3, 50, 60), window=32, stride=16,
        ...                          size=64).shape
        torch.Size([1, 2, 50, 60])
    """
    s = check_shape(images, "B 3 H W", name="images")
    images = as_image(images, name="images")
    for value, name in ((window, "window"), (stride, "stride"), (size, "size")):
        check_positive(value, name=name)
    if (size - window) % stride:
        raise ValueError(f"size - window ({size - window}) must be a multiple of stride {stride}")
    x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    tiles = F.unfold(x, window, stride=stride)
    n = tiles.shape[-1]
    tiles = rearrange(tiles, "b (c i j) n -> (b n) c i j", c=3, i=window)
    up = {"size": (window, window), "mode": "bilinear", "align_corners": False}
    probs = F.interpolate(fn(tiles), **up).sigmoid()  # type: ignore[arg-type]
    t = probs.shape[1]
    cols = rearrange(probs, "(b n) t i j -> b (t i j) n", n=n)
    summed = F.fold(cols, (size, size), window, stride=stride)
    count = F.fold(torch.ones_like(cols[:, : window * window]), (size, size), window, stride=stride)
    tiled = summed / count
    glob = fn(F.interpolate(images, **up)).sigmoid()  # type: ignore[arg-type]
    glob = F.interpolate(glob, size=(size, size), mode="bilinear", align_corners=False)
    out = (tiled.reshape(s["B"], t, size, size) + glob) / 2
    return F.interpolate(out, size=(s["H"], s["W"]), mode="bilinear", align_corners=False)
