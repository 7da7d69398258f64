"""Guided spatial and class aggregation of a cost volume (CAT-Seg's aggregator layers).

A cost volume `(B, D, T, h, w)` holds a `D`-channel embedding of the image-text cost for each of `T`
classes. Spatial aggregation mixes locations per class with shifted-window attention whose queries
and keys also see an appearance guidance map; class aggregation mixes classes per location with
linear attention guided by the text embeddings. Follows CAT-Seg (Cho et al., CVPR 2024), Sec. 3 and
its reference code (spec `sam-mi.md` §2.4).

Axis legend (einops):
    b - images (B)        t - classes (T)          d - channels (D)
    x, y - window index along h, w                 i, j - position inside a window
    n - tokens            e - heads                c - channels per head
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from samkit._checks import check_shape

__all__ = [
    "ClassAggregation",
    "GuidedSwinBlock",
    "SpatialAggregation",
    "linear_attention",
]


def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Linear attention with the `elu + 1` feature map (Katharopoulos et al., 2020).

    Computed as in CAT-Seg's `LinearAttention`: values are divided by the sequence length `S`
    before the key-value product and the result is multiplied by `S` again, which only changes
    rounding.

    Args:
        q: Queries `(..., L, E, C)` (sequence, heads, channels per head).
        k: Keys `(..., S, E, C)`.
        v: Values `(..., S, E, C_v)`.
        eps: Added to the normaliser.

    Returns:
        The attended values `(..., L, E, C_v)`.

    Examples:
        >>> linear_attention(torch.randn(2, 5, 4, 8), torch.randn(2, 7, 4, 8),
        ...                  torch.randn(2, 7, 4, 8)).shape
        torch.Size([2, 5, 4, 8])
    """
    q = F.elu(q) + 1
    k = F.elu(k) + 1
    length = v.shape[-3]
    v = v / length
    kv = torch.einsum("...sec,...sef->...ecf", k, v)
    z = 1.0 / (torch.einsum("...lec,...ec->...le", q, k.sum(dim=-3)) + eps)
    return torch.einsum("...lec,...ecf,...le->...lef", q, kv, z) * length


def _mlp(dim: int, hidden: int, act: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), act(), nn.Linear(hidden, dim))


def _window_mask(
    h: int, w: int, hp: int, wp: int, window: int, shift: int, device: torch.device
) -> Tensor | None:
    """Additive mask `(n_windows, n, n)` for shifted windows and padding, or None if not needed."""
    if shift == 0 and hp == h and wp == w:
        return None
    label = torch.zeros(hp, wp, dtype=torch.long, device=device)
    if shift > 0:
        cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        cnt = 0
        for hs in cuts:
            for ws in cuts:
                label[hs, ws] = cnt
                cnt += 1
    valid = torch.zeros(hp, wp, dtype=torch.bool, device=device)
    valid[:h, :w] = True
    valid = torch.roll(valid, shifts=(-shift, -shift), dims=(0, 1))
    label = torch.where(valid, label, torch.full_like(label, -1))
    win = rearrange(label, "(x i) (y j) -> (x y) (i j)", i=window, j=window)
    same = win[:, :, None] == win[:, None, :]
    return torch.zeros(same.shape, device=device).masked_fill(~same, -100.0)


class GuidedSwinBlock(nn.Module):
    """One Swin block whose queries and keys see `[tokens ; guidance]`; values see tokens only.

    Windows are `window_size` square, cyclically shifted by `shift` (CAT-Seg: 12 and 0 / 6).
    Grids that the window does not divide are zero-padded bottom/right and the padding is masked
    out of the attention, so any `(h, w)` works; the window shrinks to `min(h, w)` on tiny grids.

    Examples:
        >>> blk = GuidedSwinBlock(dim=16, guidance_dim=8, num_heads=2, window_size=4, shift=2)
        >>> blk(torch.randn(3, 16, 6, 6), torch.randn(3, 8, 6, 6)).shape
        torch.Size([3, 16, 6, 6])
    """

    def __init__(
        self,
        *,
        dim: int,
        guidance_dim: int,
        num_heads: int = 4,
        window_size: int = 12,
        shift: int = 0,
        mlp_ratio: float = 4.0,
    ) -> None:
        """Create the block.

        Args:
            dim: Channels `D` of the cost embedding.
            guidance_dim: Channels of the appearance guidance (0 for none).
            num_heads: Attention heads; must divide `dim`.
            window_size: Side of the attention windows.
            shift: Cyclic shift of the windows (0 or `window_size // 2`).
            mlp_ratio: Hidden width of the MLP relative to `dim`.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        self.dim, self.guidance_dim, self.num_heads = dim, guidance_dim, num_heads
        self.window_size, self.shift = window_size, shift
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, int(dim * mlp_ratio), nn.GELU)

    def forward(self, x: Tensor, guidance: Tensor | None = None) -> Tensor:
        """Aggregate over space inside (shifted) windows.

        Args:
            x: Tokens `(N, D, h, w)` (one map per image-class pair).
            guidance: Normalised guidance `(N, D_g, h, w)`, or None when `guidance_dim == 0`.

        Returns:
            The updated tokens `(N, D, h, w)`.
        """
        s = check_shape(x, "N D h w", name="x", known={"D": self.dim})
        h, w = s["h"], s["w"]
        win = min(self.window_size, h, w)
        shift = self.shift if win == self.window_size else 0
        hp, wp = -(-h // win) * win, -(-w // win) * win
        z = rearrange(self.norm1(rearrange(x, "n d h w -> n h w d")), "n h w d -> n d h w")
        zg = z if guidance is None else torch.cat([z, guidance], dim=1)

        def windows(t: Tensor) -> Tensor:
            t = F.pad(t, (0, wp - w, 0, hp - h))
            if shift:
                t = torch.roll(t, shifts=(-shift, -shift), dims=(2, 3))
            return rearrange(t, "n d (x i) (y j) -> n (x y) (i j) d", i=win, j=win)

        zg_w, z_w = windows(zg), windows(z)
        q = rearrange(self.q(zg_w), "n m l (e c) -> n m e l c", e=self.num_heads)
        k = rearrange(self.k(zg_w), "n m l (e c) -> n m e l c", e=self.num_heads)
        v = rearrange(self.v(z_w), "n m l (e c) -> n m e l c", e=self.num_heads)
        attn = torch.einsum("nmelc,nmesc->nmels", q, k) * q.shape[-1] ** -0.5
        mask = _window_mask(h, w, hp, wp, win, shift, x.device)
        if mask is not None:
            attn = attn + mask[None, :, None].to(attn.dtype)
        out = torch.einsum("nmels,nmesc->nmelc", attn.softmax(dim=-1), v)
        out = self.proj(rearrange(out, "n m e l c -> n m l (e c)"))
        out = rearrange(out, "n (x y) (i j) d -> n d (x i) (y j)", x=hp // win, i=win, j=win)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(2, 3))
        t = rearrange(x, "n d h w -> n h w d") + rearrange(out[:, :, :h, :w], "n d h w -> n h w d")
        t = t + self.mlp(self.norm2(t))
        return rearrange(t, "n h w d -> n d h w")


class SpatialAggregation(nn.Module):
    """Two guided Swin blocks (shift 0, then `window_size // 2`) applied to every class's cost map.

    The appearance guidance is shared by all classes and layer-normalised once.

    Examples:
        >>> agg = SpatialAggregation(dim=16, guidance_dim=8, num_heads=2, window_size=4)
        >>> agg(torch.randn(2, 16, 3, 8, 8), torch.randn(2, 8, 8, 8)).shape
        torch.Size([2, 16, 3, 8, 8])
    """

    def __init__(
        self, *, dim: int, guidance_dim: int, num_heads: int = 4, window_size: int = 12
    ) -> None:
        """Create the two blocks.

        Args:
            dim: Channels `D` of the cost embedding.
            guidance_dim: Channels of the (projected) appearance guidance; 0 for none.
            num_heads: Attention heads.
            window_size: Swin window side; the second block shifts by half of it.
        """
        super().__init__()
        self.guidance_dim = guidance_dim
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else nn.Identity()
        kw = {"dim": dim, "guidance_dim": guidance_dim, "num_heads": num_heads}
        self.block_1 = GuidedSwinBlock(**kw, window_size=window_size, shift=0)
        self.block_2 = GuidedSwinBlock(**kw, window_size=window_size, shift=window_size // 2)

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """Aggregate each class's cost map over space.

        Args:
            x: Cost embedding `(B, D, T, h, w)`.
            guidance: Projected appearance guidance `(B, D_g, h, w)` or None.

        Returns:
            The updated cost embedding `(B, D, T, h, w)`.
        """
        s = check_shape(x, "B D T h w", name="x")
        g = None
        if guidance is not None:
            check_shape(guidance, "B G h w", name="guidance", known={"B": s["B"], "h": s["h"]})
            g = rearrange(guidance, "b g h w -> b h w g")
            g = rearrange(self.guidance_norm(g), "b h w g -> b g h w")
            g = repeat(g, "b g h w -> (b t) g h w", t=s["T"])
        z = rearrange(x, "b d t h w -> (b t) d h w")
        z = self.block_2(self.block_1(z, g), g)
        return rearrange(z, "(b t) d h w -> b d t h w", b=s["B"], t=s["T"])


class ClassAggregation(nn.Module):
    """Linear attention across the class axis at every (pooled) location, guided by text.

    Per CAT-Seg's `ClassTransformerLayer`: the map is average-pooled (`pooling_size` in training,
    `eval_pooling_size` in eval), the class sequence is padded to `pad_len` with learnable tokens
    (they act as keys; `pad_len=0` disables padding), `x + Attn(LN(x), g)` then `x + MLP(LN(x))`,
    and the result is bilinearly upsampled back (`align_corners=True`). With `double_residual`
    (the reference's behaviour) the upsampled output, which already contains the pooled input, is
    added to the input again, so with pooling `(1, 1)` the layer returns `2x + delta`; without it
    the layer returns `x + upsample(delta)`. Class permutations permute the output.

    Examples:
        >>> agg = ClassAggregation(dim=16, guidance_dim=8, num_heads=2, pad_len=6)
        >>> agg(torch.randn(2, 16, 3, 8, 8), torch.randn(2, 3, 8)).shape
        torch.Size([2, 16, 3, 8, 8])
    """

    def __init__(
        self,
        *,
        dim: int,
        guidance_dim: int,
        num_heads: int = 4,
        pooling_size: tuple[int, int] = (2, 2),
        eval_pooling_size: tuple[int, int] | None = (1, 1),
        pad_len: int = 256,
        double_residual: bool = True,
        mlp_ratio: float = 4.0,
    ) -> None:
        """Create the layer.

        Args:
            dim: Channels `D`.
            guidance_dim: Channels of the text guidance; 0 for none.
            num_heads: Attention heads; must divide `dim`.
            pooling_size: Average-pool window in training mode.
            eval_pooling_size: Average-pool window in eval mode (None: same as training).
            pad_len: Length the class sequence is padded to with learnable tokens (0: no padding).
            double_residual: Replicate the reference's doubled residual (see class docstring).
            mlp_ratio: MLP hidden width relative to `dim`.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        self.dim, self.num_heads, self.pad_len = dim, num_heads, pad_len
        self.pooling_size, self.eval_pooling_size = pooling_size, eval_pooling_size
        self.double_residual = double_residual
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, int(dim * mlp_ratio), nn.ReLU)
        # learnable padding (keys only); absent when pad_len == 0 so no parameter goes unused
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, dim)) if pad_len > 0 else None
        self.padding_guidance = (
            nn.Parameter(torch.zeros(1, 1, guidance_dim)) if pad_len > 0 else None
        )

    def _pad(self, x: Tensor, g: Tensor | None, n: int) -> tuple[Tensor, Tensor | None]:
        t = x.shape[1]
        if self.pad_len <= t or self.padding_tokens is None or self.padding_guidance is None:
            return x, g
        x = torch.cat([x, self.padding_tokens.expand(n, self.pad_len - t, -1).to(x.dtype)], 1)
        if g is not None:
            pad_g = self.padding_guidance.expand(n, self.pad_len - t, -1).to(g.dtype)
            g = torch.cat([g, pad_g], 1)
        return x, g

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """Aggregate the cost embedding over classes.

        Args:
            x: Cost embedding `(B, D, T, h, w)`.
            guidance: Projected text guidance `(B, T, D_g)` or None.

        Returns:
            The updated cost embedding `(B, D, T, h, w)`.
        """
        s = check_shape(x, "B D T h w", name="x", known={"D": self.dim})
        if guidance is not None:
            check_shape(guidance, "B T G", name="guidance", known={"B": s["B"], "T": s["T"]})
        pool = (
            self.pooling_size
            if self.training or self.eval_pooling_size is None
            else (self.eval_pooling_size)
        )
        xp = F.avg_pool2d(rearrange(x, "b d t h w -> (b t) d h w"), pool)
        hp, wp = xp.shape[-2:]
        tok = rearrange(xp, "(b t) d h w -> (b h w) t d", b=s["B"], t=s["T"])
        g = None if guidance is None else repeat(guidance, "b t g -> (b h w) t g", h=hp, w=wp)
        tok, g = self._pad(tok, g, tok.shape[0])
        z = self.norm1(tok)
        zg = z if g is None else torch.cat([z, g], dim=-1)
        q = rearrange(self.q(zg), "n t (e c) -> n t e c", e=self.num_heads)
        k = rearrange(self.k(zg), "n t (e c) -> n t e c", e=self.num_heads)
        v = rearrange(self.v(z), "n t (e c) -> n t e c", e=self.num_heads)
        tok = tok + rearrange(linear_attention(q, k, v), "n t e c -> n t (e c)")
        tok = tok + self.mlp(self.norm2(tok))
        tok = tok[:, : s["T"]]
        out = rearrange(tok, "(b h w) t d -> (b t) d h w", b=s["B"], h=hp, w=wp)
        if not self.double_residual:
            out = out - xp
        out = F.interpolate(out, size=(s["h"], s["w"]), mode="bilinear", align_corners=True)
        return x + rearrange(out, "(b t) d h w -> b d t h w", b=s["B"], t=s["T"])
