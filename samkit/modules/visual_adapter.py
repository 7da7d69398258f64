"""Visual attention adapter: text-weighted patch features gated by visual-linguistic verification.

SSP-SAM's "VAD" (spec §2.3): dense CLIP patch features are weighted by a text-similarity map and
projected by a 3-layer MLP; each visual token then attends to the words, and a VLTVG-style
Gaussian of the cosine between the token and its attended text gates the LayerNorm-ed token.

Axis legend:
# b - batch
# n - visual tokens (patches)
# l - text tokens
# c - channels
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from samkit._checks import as_float, as_image, check_binary, check_positive, check_shape
from samkit.modules.prompting import MLP

__all__ = [
    "VisualAttentionAdapter",
    "canvas_boxes",
    "clip_patch_tokens",
    "letterbox",
    "normalize_clip_tokens",
]

TokenNorm = Literal["token", "channel"]


def normalize_clip_tokens(
    patches: Tensor, cls: Tensor | None = None, *, axis: TokenNorm = "channel"
) -> Tensor:
    """L2-normalise dense CLIP features and return the patch tokens.

    With `axis="channel"` every token is scaled to unit norm (cosine geometry; `cls` is not
    needed). With `axis="token"` every *channel* is scaled to unit norm over the `N + 1` tokens
    (CLS first, then the patches), then the CLS row is dropped: this is what the SSP-SAM reference
    does, following the CLIP-Surgery demo (spec §8.2), and what its released weights expect.

    Args:
        patches: Patch features `(B, N, C)`.
        cls: CLS features `(B, C)`; required for `axis="token"`.
        axis: `"channel"` (default) or `"token"` (reference quirk).

    Returns:
        Normalised patch features `(B, N, C)`, float32 (float64 for float64 inputs).

    Raises:
        ValueError: On bad shapes, an unknown `axis`, or `axis="token"` without `cls`.

    Examples:
        >>> p = normalize_clip_tokens(torch.randn(2, 9, 4), torch.randn(2, 4), axis="token")
        >>> p.shape
        torch.Size([2, 9, 4])
    """
    sizes = check_shape(patches, "B N C", name="patches")
    # normalise in float32 at least (float64 stays float64)
    dtype = torch.float64 if patches.dtype == torch.float64 else torch.float32
    patches = as_float(patches, name="patches", dtype=dtype)
    if axis == "channel":
        return F.normalize(patches, dim=-1)
    if axis != "token":
        raise ValueError(f"axis must be 'channel' or 'token', got {axis!r}")
    if cls is None:
        raise ValueError("normalize_clip_tokens: axis='token' needs the CLS features")
    check_shape(cls, "B C", name="cls", known={"B": sizes["B"], "C": sizes["C"]})
    cls = as_float(cls, name="cls", dtype=dtype)
    tokens = torch.cat([cls[:, None], patches], dim=1)  # (b, 1 + n, c)
    return F.normalize(tokens, dim=1)[:, 1:]


def clip_patch_tokens(features: Tensor, cls: Tensor, *, axis: TokenNorm = "channel") -> Tensor:
    """Flatten a dense CLIP map to patch tokens and L2-normalise them (see `normalize_clip_tokens`).

    Args:
        features: Dense features `(B, C, h, w)`.
        cls: CLS features `(B, C)` (used by `axis="token"`).
        axis: `"channel"` or `"token"` (reference quirk).

    Returns:
        Patch tokens `(B, h * w, C)`, row-major over the grid.

    Examples:
        >>> clip_patch_tokens(torch.randn(2, 4, 3, 5), torch.randn(2, 4)).shape
        torch.Size([2, 15, 4])
    """
    check_shape(features, "B C h w", name="features")
    return normalize_clip_tokens(rearrange(features, "b c h w -> b (h w) c"), cls, axis=axis)


def letterbox(
    images: Tensor, *, size: int, fill: Tensor | float = 0.0, center: bool = True
) -> Tensor:
    """Resize images so the long side is `size` and paste them on a `size x size` canvas.

    SSP-SAM's CLIP input (spec §1.1): bilinear resize of the long side, then a paste onto a
    blank canvas (centred at test time). The reference's canvas is zero *after* normalisation;
    pass CLIP's pixel mean as `fill` to reproduce that with `[0, 1]` images.

    Args:
        images: RGB images `(B, 3, H, W)`: float in `[0, 1]` (any float dtype) or uint8
            (divided by 255); see `samkit._checks.as_image`.
        size: Canvas side `S`.
        fill: Canvas value, a scalar or a per-channel tensor `(3, 1, 1)`.
        center: Centre the image (default) or put it at the top-left corner.

    Returns:
        The canvas `(B, 3, S, S)`, float32.

    Raises:
        ValueError: If `images` is not a valid `(B, 3, H, W)` image batch or `size < 1`.

    Examples:
        >>> letterbox(torch.ones(1, 3, 8, 4), size=4).sum().item()
        24.0
    """
    sizes = check_shape(images, "B 3 H W", name="images")
    check_positive(size, name="size")
    images = as_image(images, name="images")
    h, w = sizes["H"], sizes["W"]
    scale = size / max(h, w)
    new_h, new_w = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    if (new_h, new_w) != (h, w):
        images = F.interpolate(
            images, (new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
    if (new_h, new_w) == (size, size):
        return images
    top, left = ((size - new_h) // 2, (size - new_w) // 2) if center else (0, 0)
    canvas = torch.zeros(sizes["B"], 3, size, size, dtype=images.dtype, device=images.device)
    canvas = canvas + (fill.to(canvas) if isinstance(fill, Tensor) else fill)
    canvas[:, :, top : top + new_h, left : left + new_w] = images
    return canvas


def canvas_boxes(
    boxes: Tensor, original_size: tuple[int, int], *, size: int, center: bool = True
) -> Tensor:
    """Map pixel `(x0, y0, x1, y1)` boxes to normalised `(cx, cy, w, h)` on a `letterbox` canvas.

    This is the frame of SSP-SAM's auxiliary box. All-zero boxes (no target) stay all zero.

    Args:
        boxes: Boxes `(..., 4)` in original pixels.
        original_size: `(H, W)` of the original images.
        size: Canvas side `S` given to `letterbox`.
        center: Whether `letterbox` centred the image.

    Returns:
        Boxes `(..., 4)` in `[0, 1]`.

    Examples:
        >>> canvas_boxes(torch.tensor([[0.0, 0.0, 4.0, 2.0]]), (4, 8), size=8)
        tensor([[0.2500, 0.3750, 0.5000, 0.2500]])
    """
    check_shape(boxes, "... 4", name="boxes")
    h, w = original_size
    scale = size / max(h, w)
    new_h, new_w = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    top, left = ((size - new_h) // 2, (size - new_w) // 2) if center else (0, 0)
    sx, sy = new_w / w, new_h / h
    x0, y0, x1, y1 = boxes.unbind(-1)
    out = torch.stack(
        [
            (left + (x0 + x1) / 2 * sx) / size,
            (top + (y0 + y1) / 2 * sy) / size,
            (x1 - x0) * sx / size,
            (y1 - y0) * sy / size,
        ],
        dim=-1,
    )
    empty = (boxes == 0).all(-1, keepdim=True)
    return torch.where(empty, torch.zeros_like(out), out)


class VisualAttentionAdapter(nn.Module):
    """Turns CLIP patch features into text-verified visual tokens.

    Follows SSP-SAM's visual attention adapter (spec §2.3): `I = MLP(P * s)`,
    `T = Linear(CrossAttn(I, words))`, `c = cos(Linear(I), T)`,
    `V = LayerNorm(I) * scale * exp(-(1 - c)^2 / (2 sigma^2))` with learnable `scale` (init 1)
    and `sigma` (init 0.5). `gate="cosine"` uses `c` itself as the gate (the paper's
    "w/o Gaussian" ablation).

    Examples:
        >>> vad = VisualAttentionAdapter(visual_dim=12, dim=8, num_heads=2)
        >>> v = vad(torch.randn(2, 9, 12), torch.rand(2, 9), torch.randn(2, 5, 8),
        ...         torch.zeros(2, 5, dtype=torch.bool))
        >>> v.shape
        torch.Size([2, 9, 8])
    """

    def __init__(
        self,
        *,
        visual_dim: int,
        dim: int = 512,
        num_heads: int = 8,
        num_layers: int = 3,
        dropout: float = 0.1,
        gate: Literal["gaussian", "cosine"] = "gaussian",
        scale_init: float = 1.0,
        sigma_init: float = 0.5,
        power: float = 2.0,
    ) -> None:
        """Create the adapter.

        Args:
            visual_dim: Width `C_v` of the patch features (CLIP joint width).
            dim: Adapter width `D` (512 in the paper); also the width of the word features.
            num_heads: Heads of the token-to-word cross-attention; must divide `dim`.
            num_layers: Layers of the patch-projection MLP (ReLU between layers).
            dropout: Attention dropout of the cross-attention (0.1 in the reference).
            gate: `"gaussian"` (paper) or `"cosine"` (ablation).
            scale_init: Initial value of the learnable gate scale.
            sigma_init: Initial value of the learnable Gaussian width.
            power: Fixed exponent of `(1 - c)` in the Gaussian.
        """
        super().__init__()
        if gate not in ("gaussian", "cosine"):
            raise ValueError(f"gate must be 'gaussian' or 'cosine', got {gate!r}")
        self.visual_dim = visual_dim
        self.dim = dim
        self.gate = gate
        self.power = power
        self.patch_proj = MLP(in_dim=visual_dim, hidden_dim=dim, out_dim=dim, num_layers=num_layers)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.text_proj = nn.Linear(dim, dim)
        self.visual_proj = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.tensor([scale_init]))
        self.sigma = nn.Parameter(torch.tensor([sigma_init]))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, patches: Tensor, similarity: Tensor, words: Tensor, padding_mask: Tensor
    ) -> Tensor:
        """Weight, project, verify and gate the patch features.

        Args:
            patches: Patch features `(B, N, C_v)`, any float dtype (computed in the adapter's).
            similarity: Text-similarity map `(B, N)` (min-max normalised in SSP-SAM).
            words: Word features `(B, L, D)` (the LAD's projected words).
            padding_mask: `(B, L)` bool (or 0/1), True at padded words.

        Returns:
            Gated visual tokens `(B, N, D)`.

        Raises:
            ValueError: If the shapes disagree.
        """
        sizes = check_shape(patches, "B N C", name="patches", known={"C": self.visual_dim})
        check_shape(similarity, "B N", name="similarity", known=sizes)
        wsizes = check_shape(
            words,
            "B L D",
            name="words",
            known={"B": sizes["B"], "D": self.dim},
        )
        check_shape(padding_mask, "B L", name="padding_mask", known=wsizes)
        padding_mask = check_binary(padding_mask, name="padding_mask")
        dtype = self.norm.weight.dtype
        patches = as_float(patches, name="patches", dtype=dtype)
        similarity = as_float(similarity, name="similarity", dtype=dtype)
        words = as_float(words, name="words", dtype=dtype)
        visual = self.patch_proj(patches * similarity[..., None])  # (b, n, d)
        if sizes["B"] == 0:  # nn.MultiheadAttention cannot reshape a masked empty batch
            attended = torch.zeros_like(visual)
        else:
            attended = self.cross_attn(
                visual, words, words, key_padding_mask=padding_mask, need_weights=False
            )[0]
        score = self._verify(self.visual_proj(visual), self.text_proj(attended))
        return self.norm(visual) * score

    def _verify(self, visual: Tensor, text: Tensor) -> Tensor:
        """Gate `(B, N, 1)` from the cosine between each token and its attended text."""
        cos = (F.normalize(visual, dim=-1) * F.normalize(text, dim=-1)).sum(-1, keepdim=True)
        if self.gate == "cosine":
            return cos
        return self.scale * torch.exp(-((1 - cos) ** self.power) / (2 * self.sigma**2))
