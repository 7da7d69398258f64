"""Guided upsampling decoder of a per-class cost embedding (CAT-Seg's `Up` / `DoubleConv` stages).

Each stage doubles the resolution with a transposed convolution, concatenates a projected guidance
map of the new resolution (shared by all classes), and applies two 3x3 conv + GroupNorm + ReLU
layers. A final 3x3 conv gives one logit per class and pixel. Spec `sam-mi.md` §2.5.

Axis legend (einops): b - images (B), t - classes (T), d - channels (D), h w - grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from samkit._checks import as_float, check_shape

__all__ = ["UpsamplingDecoder"]


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    groups = max(1, cout // 16)
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.ReLU(inplace=True),
    )


class _UpStage(nn.Module):
    def __init__(self, cin: int, cout: int, guidance_dim: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin - guidance_dim, 2, stride=2)
        self.conv = _double_conv(cin, cout)

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        x = self.up(x)
        if guidance is not None:
            x = torch.cat([x, guidance], dim=1)
        return self.conv(x)


class UpsamplingDecoder(nn.Module):
    """Upsample `(B, D, T, h, w)` cost embeddings by `2 ** len(dims)` into `(B, T, H', W')` logits.

    Examples:
        >>> dec = UpsamplingDecoder(dim=16, dims=(8, 4), guidance_dims=(4, 2))
        >>> g = [torch.randn(2, 4, 12, 12), torch.randn(2, 2, 24, 24)]
        >>> dec(torch.randn(2, 16, 3, 6, 6), g).shape
        torch.Size([2, 3, 24, 24])
    """

    def __init__(
        self, *, dim: int, dims: Sequence[int] = (64, 32), guidance_dims: Sequence[int] = (32, 16)
    ) -> None:
        """Create the stages.

        Args:
            dim: Channels `D` of the input cost embedding.
            dims: Output channels of each x2 stage.
            guidance_dims: Channels of the (already projected) guidance of each stage; the
                transposed conv outputs `in - guidance_dim` channels so the concat has `in`.
        """
        super().__init__()
        if len(dims) != len(guidance_dims):
            raise ValueError(f"dims {tuple(dims)} and guidance_dims {tuple(guidance_dims)} differ")
        ins = [dim, *dims[:-1]]
        self.stages = nn.ModuleList(
            _UpStage(i, o, g) for i, o, g in zip(ins, dims, guidance_dims, strict=True)
        )
        self.guidance_dims = tuple(guidance_dims)
        self.head = nn.Conv2d(dims[-1], 1, 3, padding=1)

    def forward(self, x: Tensor, guidance: Sequence[Tensor]) -> Tensor:
        """Decode.

        Args:
            x: Cost embedding `(B, D, T, h, w)`, any float dtype (computed in the decoder's).
            guidance: One projected guidance map per stage, `(B, D_i, h * 2**i, w * 2**i)`.

        Returns:
            Logits `(B, T, h * 2**S, w * 2**S)` for `S` stages.
        """
        s = check_shape(x, "B D T h w", name="x")
        if len(guidance) != len(self.stages):
            raise ValueError(f"expected {len(self.stages)} guidance maps, got {len(guidance)}")
        dtype = self.head.weight.dtype
        z = rearrange(as_float(x, name="x", dtype=dtype), "b d t h w -> (b t) d h w")
        for i, (stage, g) in enumerate(zip(self.stages, guidance, strict=True)):
            size = {"B": s["B"], "G": self.guidance_dims[i]}
            check_shape(g, "B G h w", name=f"guidance[{i}]", known=size)
            g = as_float(g, name=f"guidance[{i}]", dtype=dtype)
            z = stage(z, repeat(g, "b g h w -> (b t) g h w", t=s["T"]))
        return rearrange(self.head(z), "(b t) 1 h w -> b t h w", b=s["B"], t=s["T"])
