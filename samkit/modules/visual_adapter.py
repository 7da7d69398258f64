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
from torch import Tensor, nn
from torch.nn import functional as F

from samkit._checks import check_shape
from samkit.modules.prompting import MLP

__all__ = ["VisualAttentionAdapter", "normalize_clip_tokens"]

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
        Normalised patch features `(B, N, C)`.

    Raises:
        ValueError: On bad shapes, an unknown `axis`, or `axis="token"` without `cls`.

    Example:
        >>> p = normalize_clip_tokens(torch.randn(2, 9, 4), torch.randn(2, 4), axis="token")
        >>> p.shape
        torch.Size([2, 9, 4])
    """
    sizes = check_shape(patches, "B N C", name="patches")
    if axis == "channel":
        return F.normalize(patches, dim=-1)
    if axis != "token":
        raise ValueError(f"axis must be 'channel' or 'token', got {axis!r}")
    if cls is None:
        raise ValueError("normalize_clip_tokens: axis='token' needs the CLS features")
    check_shape(cls, "B C", name="cls", known={"B": sizes["B"], "C": sizes["C"]})
    tokens = torch.cat([cls[:, None], patches], dim=1)  # (b, 1 + n, c)
    return F.normalize(tokens, dim=1)[:, 1:]


class VisualAttentionAdapter(nn.Module):
    """Turns CLIP patch features into text-verified visual tokens.

    Follows SSP-SAM's visual attention adapter (spec §2.3): `I = MLP(P * s)`,
    `T = Linear(CrossAttn(I, words))`, `c = cos(Linear(I), T)`,
    `V = LayerNorm(I) * scale * exp(-(1 - c)^2 / (2 sigma^2))` with learnable `scale` (init 1)
    and `sigma` (init 0.5). `gate="cosine"` uses `c` itself as the gate (the paper's
    "w/o Gaussian" ablation).

    Example:
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
            patches: Patch features `(B, N, C_v)`.
            similarity: Text-similarity map `(B, N)` (min-max normalised in SSP-SAM).
            words: Word features `(B, L, D)` (the LAD's projected words).
            padding_mask: `(B, L)` bool, True at padded words.

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
        visual = self.patch_proj(patches * similarity[..., None])  # (b, n, d)
        attended = self.cross_attn(
            visual, words, words, key_padding_mask=padding_mask.bool(), need_weights=False
        )[0]
        score = self._verify(self.visual_proj(visual), self.text_proj(attended))
        return self.norm(visual) * score

    def _verify(self, visual: Tensor, text: Tensor) -> Tensor:
        """Gate `(B, N, 1)` from the cosine between each token and its attended text."""
        cos = (F.normalize(visual, dim=-1) * F.normalize(text, dim=-1)).sum(-1, keepdim=True)
        if self.gate == "cosine":
            return cos
        return self.scale * torch.exp(-((1 - cos) ** self.power) / (2 * self.sigma**2))
