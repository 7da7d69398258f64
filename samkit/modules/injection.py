"""SAM-MI's Decoupled Mask Injection (DMI): SAM masks as guidance for cost aggregation.

Low-frequency injection turns the last-layer CLIP features `F_l` into a mask-contextual
representation `F_mcr` (mask pooling, eq. 8; intra-mask context, eq. 9; pixel-to-mask cross
attention, eq. 10) that replaces the appearance guidance of spatial aggregation. High-frequency
injection embeds the mask set into the decoder guidance maps `F_h` (eq. 11-12) through an
order-free per-pixel encoding of the masks, an MLP, a depth-wise conv and a learnable `gamma`
(initialised to 1). Masks arrive padded, `(B, M, H, W)`; all-False masks are padding and images
with no mask at all work (the injections then add nothing that depends on masks). Spec
`sam-mi.md` §3.4.

Axis legend (einops): b - images (B), m - masks (M), d - channels (D), e - heads,
c - channels per head, h w - feature grid, n - pixels (h w).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from samkit._checks import (
    as_float,
    check_binary,
    check_positive,
    check_probabilities,
    check_shape,
)
from samkit.types import InjectedGuidance

__all__ = [
    "DecoupledMaskInjection",
    "HighFrequencyInjection",
    "LowFrequencyInjection",
    "boundary_encoding",
    "resize_masks",
]


def _soft_masks(masks: Tensor, *, name: str) -> Tensor:
    """Float32 masks from a numeric tensor whose values must lie in `[0, 1]`."""
    return check_probabilities(masks.float(), name=name)


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Soft masks at `size`: the covered fraction of each target pixel (antialiased bilinear).

    Args:
        masks: Masks `(B, M, H, W)`: bool, or soft masks (any float dtype) in `[0, 1]`.
        size: Target `(h, w)`.

    Returns:
        `(B, M, h, w)` float32 in `[0, 1]`; exact area fractions when `H, W` are multiples of
        `h, w`.

    Raises:
        ValueError: If `masks` is not `(B, M, H, W)`, holds values outside `[0, 1]`, or a side of
            `size` is below 1.

    Examples:
        >>> m = torch.zeros(1, 1, 4, 4); m[..., :2, :] = 1
        >>> resize_masks(m, (2, 2))[0, 0]
        tensor([[1., 1.],
                [0., 0.]])
    """
    s = check_shape(masks, "B M H W", name="masks")
    check_positive(int(size[0]), name="size[0]")
    check_positive(int(size[1]), name="size[1]")
    m = masks.float() if masks.dtype == torch.bool else _soft_masks(masks, name="masks")
    if (s["H"], s["W"]) == tuple(size) or s["M"] == 0 or s["B"] == 0:
        return m.new_zeros(s["B"], s["M"], *size) if m.numel() == 0 else m
    if s["H"] % size[0] == 0 and s["W"] % size[1] == 0:
        return F.adaptive_avg_pool2d(m, size)
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


def boundary_encoding(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Order-free per-pixel encoding of a mask set (the default `proj` input of eq. 11).

    Channels: coverage (max over masks), boundary strength (sum over masks of the soft mask's
    finite-difference gradient magnitude, clipped to 1: the edges of the partition), and overlap
    (number of covering masks / 4, clipped to 1). Any permutation of the masks gives the same map.

    Args:
        masks: Masks `(B, M, H, W)`; all-False masks are padding.
        size: Output `(h, w)`.

    Returns:
        `(B, 3, h, w)` float.

    Examples:
        >>> m = torch.zeros(1, 2, 8, 8); m[:, 0, :, :4] = 1; m[:, 1, :, 4:] = 1
        >>> enc = boundary_encoding(m, (8, 8))
        >>> enc[0, 0].min().item(), enc[0, 1, 0].tolist()
        (1.0, [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    """
    m = resize_masks(masks, size)
    if m.shape[1] == 0:
        return m.new_zeros(m.shape[0], 3, *size)
    gx = F.pad((m[..., :, 1:] - m[..., :, :-1]).abs(), (0, 1, 0, 0))
    gx = torch.maximum(gx, F.pad(gx[..., :, :-1], (1, 0, 0, 0)))
    gy = F.pad((m[..., 1:, :] - m[..., :-1, :]).abs(), (0, 0, 0, 1))
    gy = torch.maximum(gy, F.pad(gy[..., :-1, :], (0, 0, 1, 0)))
    coverage = m.amax(dim=1)
    boundary = (gx + gy).sum(dim=1).clamp_max(1)
    overlap = (m.sum(dim=1) / 4).clamp_max(1)
    return torch.stack([coverage, boundary, overlap], dim=1)


class LowFrequencyInjection(nn.Module):
    """Mask pooling + intra-mask context + pixel-to-mask cross attention (SAM-MI eq. 8-10).

    `F_mcr = F_inter + F_intra` with `F_intra = F + sum_k M_k * pool_k(F)` and
    `F_inter = Attention(Q = F_intra, K = V = pooled masks)`. Masks are resized to the feature
    grid as soft coverage fractions (binary masks aligned with the grid give eq. 8-9 exactly).
    Zero-area masks are excluded from the attention; a pixel with no mask to attend gets
    `F_inter = 0`.

    Examples:
        >>> low = LowFrequencyInjection(dim=16, num_heads=2)
        >>> masks = torch.zeros(2, 3, 32, 32, dtype=torch.bool); masks[0, 0, :16] = True
        >>> low(torch.randn(2, 16, 8, 8), masks).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(self, *, dim: int, num_heads: int = 8, eps: float = 1e-6) -> None:
        """Create the injection.

        Args:
            dim: Channels `D_v` of `F_l`.
            num_heads: Heads of the cross attention; must divide `dim`.
            eps: Guard of the pooling denominator.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        self.dim, self.num_heads, self.eps = dim, num_heads, eps
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def mask_pool(self, features: Tensor, soft: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 8: mean feature per mask `(B, M, D)` and the mask areas `(B, M)`."""
        area = soft.sum(dim=(2, 3))
        pooled = torch.einsum("bmhw,bdhw->bmd", soft, features)
        return pooled / area.clamp_min(self.eps)[..., None], area

    def forward(self, features: Tensor, masks: Tensor) -> Tensor:
        """Inject masks into the appearance guidance.

        Args:
            features: Last-layer CLIP features `F_l` `(B, D, h, w)`, any float dtype (computed in
                the module's).
            masks: Binary masks `(B, M, H, W)` at any resolution (all-False = padding).

        Returns:
            `F_mcr` `(B, D, h, w)`.

        Raises:
            ValueError: On mismatched shapes or non-binary masks.
        """
        s = check_shape(features, "B D h w", name="features", known={"D": self.dim})
        check_shape(masks, "B M H W", name="masks", known={"B": s["B"]})
        masks = check_binary(masks, name="masks")
        features = as_float(features, name="features", dtype=self.q.weight.dtype)
        soft = resize_masks(masks, (s["h"], s["w"])).to(features.dtype)
        pooled, area = self.mask_pool(features, soft)
        intra = features + torch.einsum("bmhw,bmd->bdhw", soft, pooled)
        valid = area > self.eps  # (B, M)
        q = rearrange(
            self.q(rearrange(intra, "b d h w -> b (h w) d")),
            "b n (e c) -> b e n c",
            e=self.num_heads,
        )
        k = rearrange(self.k(pooled), "b m (e c) -> b e m c", e=self.num_heads)
        v = rearrange(self.v(pooled), "b m (e c) -> b e m c", e=self.num_heads)
        logits = torch.einsum("benc,bemc->benm", q, k) * q.shape[-1] ** -0.5
        logits = logits.masked_fill(~valid[:, None, None], torch.finfo(logits.dtype).min)
        attn = logits.softmax(dim=-1) * valid[:, None, None]  # rows with no valid mask -> 0
        inter = self.proj(
            rearrange(torch.einsum("benm,bemc->benc", attn, v), "b e n c -> b n (e c)")
        )
        inter = inter * valid.any(dim=1)[:, None, None]
        return intra + rearrange(inter, "b (h w) d -> b d h w", b=s["B"], h=s["h"], w=s["w"])


class HighFrequencyInjection(nn.Module):
    """`F_h <- F_h + gamma * DWConv(MLP(concat[F_h, proj(encode(M))]))` (SAM-MI eq. 11-12).

    `encoding` maps masks `(B, M, H, W)` and a size to an order-free `(B, E, h, w)` map
    (default `boundary_encoding`, `E = 3`); `proj` is a two-layer 1x1-conv MLP; `gamma` is a
    learnable per-channel scale initialised to 1.

    Examples:
        >>> high = HighFrequencyInjection(dim=8, hidden_dim=4)
        >>> high(torch.randn(2, 8, 16, 16), torch.zeros(2, 0, 16, 16, dtype=torch.bool)).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(
        self,
        *,
        dim: int,
        hidden_dim: int = 32,
        encoding: Callable[[Tensor, tuple[int, int]], Tensor] = boundary_encoding,
        encoding_dim: int = 3,
    ) -> None:
        """Create the injection.

        Args:
            dim: Channels `C` of the guidance map `F_h`.
            hidden_dim: Channels of `proj(M)`.
            encoding: Order-free mask-set encoding, `(masks, size) -> (B, encoding_dim, h, w)`.
            encoding_dim: Channels of `encoding`'s output.
        """
        super().__init__()
        self.dim, self.encoding = dim, encoding
        self.proj = nn.Sequential(
            nn.Conv2d(encoding_dim, hidden_dim, 1), nn.GELU(), nn.Conv2d(hidden_dim, hidden_dim, 1)
        )
        self.mlp = nn.Sequential(
            nn.Conv2d(dim + hidden_dim, dim, 1), nn.GELU(), nn.Conv2d(dim, dim, 1)
        )
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.gamma = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, guidance: Tensor, masks: Tensor) -> Tensor:
        """Inject mask detail into one decoder guidance map.

        Args:
            guidance: `F_h` `(B, C, h, w)`, any float dtype (computed in the module's).
            masks: Binary masks `(B, M, H, W)` at any resolution (all-False = padding).

        Returns:
            The updated `F_h` `(B, C, h, w)`.

        Raises:
            ValueError: On mismatched shapes or non-binary masks.
        """
        s = check_shape(guidance, "B C h w", name="guidance", known={"C": self.dim})
        check_shape(masks, "B M H W", name="masks", known={"B": s["B"]})
        masks = check_binary(masks, name="masks")
        guidance = as_float(guidance, name="guidance", dtype=self.gamma.dtype)
        enc = self.encoding(masks, (s["h"], s["w"])).to(guidance.dtype)
        emd = torch.cat([guidance, self.proj(enc)], dim=1)
        return guidance + self.gamma * self.dwconv(self.mlp(emd))


class DecoupledMaskInjection(nn.Module):
    """Low-frequency injection into the appearance guidance, high-frequency into decoder guidance.

    Either half can be switched off (`None`), which reproduces the paper's ablations: the
    corresponding guidance passes through unchanged.

    Examples:
        >>> dmi = DecoupledMaskInjection(low=LowFrequencyInjection(dim=16, num_heads=2),
        ...     high=[HighFrequencyInjection(dim=8, hidden_dim=4)])
        >>> masks = torch.ones(1, 2, 32, 32, dtype=torch.bool)
        >>> out = dmi(torch.randn(1, 16, 8, 8), [torch.randn(1, 8, 16, 16)], masks)
        >>> out.appearance.shape, out.decoder_guidance[0].shape
        (torch.Size([1, 16, 8, 8]), torch.Size([1, 8, 16, 16]))
    """

    def __init__(
        self,
        *,
        low: LowFrequencyInjection | None,
        high: Sequence[HighFrequencyInjection] | None,
    ) -> None:
        """Assemble the injection from built halves.

        Args:
            low: The low-frequency injection, or None to keep the appearance guidance.
            high: One high-frequency injection per decoder guidance map, or None.
        """
        super().__init__()
        self.low = low
        self.high = nn.ModuleList(high) if high is not None else None

    def forward(
        self, features: Tensor, decoder_guidance: Sequence[Tensor], masks: Tensor
    ) -> InjectedGuidance:
        """Inject.

        Args:
            features: `F_l` `(B, D, h, w)`.
            decoder_guidance: The upsampled taps `F_h`, one `(B, C_i, h_i, w_i)` per stage.
            masks: Binary masks `(B, M, H, W)` (all-False = padding).

        Returns:
            `InjectedGuidance(appearance, decoder_guidance)`.

        Raises:
            ValueError: On mismatched shapes, a wrong number of guidance maps or non-binary masks.
        """
        masks = check_binary(masks, name="masks")
        appearance = features if self.low is None else self.low(features, masks)
        taps = list(decoder_guidance)
        if self.high is not None:
            if len(self.high) != len(taps):
                raise ValueError(
                    f"decoder_guidance: expected {len(self.high)} maps, got {len(taps)}"
                )
            taps = [inj(t, masks) for inj, t in zip(self.high, taps, strict=True)]
        return InjectedGuidance(appearance=appearance, decoder_guidance=taps)
