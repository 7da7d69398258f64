"""Semantic-spatial prompting: fuse visual and sentence features into SAM sparse prompt tokens.

SSP-SAM (spec §2.4-2.5): `TanhFusion` gates the visual tokens by the sentence vector and projects
them to SAM's prompt width; `SemanticSpatialPromptEncoder` prepends a register token and `K`
learnable prompt tokens, adds learned positions, runs a DETR post-norm transformer encoder and a
LayerNorm, and returns the `K` prompt tokens (SAM sparse prompt embeddings) plus an auxiliary box
regressed from the register token.

Axis legend:
# b - batch
# k - prompt tokens
# n - fused visual tokens
# d - channels
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import Tensor, nn
from torch.nn import functional as F

from samkit._checks import as_float, check_shape
from samkit.types import SemanticSpatialPrompts

__all__ = [
    "MLP",
    "PostNormEncoderLayer",
    "SemanticSpatialPromptEncoder",
    "TanhFusion",
]


class MLP(nn.Module):
    """DETR-style MLP: `num_layers` Linear layers with ReLU between them (none after the last).

    Examples:
        >>> MLP(in_dim=4, hidden_dim=8, out_dim=2, num_layers=3)(torch.randn(5, 4)).shape
        torch.Size([5, 2])
    """

    def __init__(self, *, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        """Create the MLP.

        Args:
            in_dim: Input width.
            hidden_dim: Width of the hidden layers.
            out_dim: Output width.
            num_layers: Number of Linear layers (at least 1; 1 means a single Linear).
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP to `(..., in_dim)` (any float dtype), giving `(..., out_dim)`."""
        x = as_float(x, name="x", dtype=next(self.parameters()).dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class TanhFusion(nn.Module):
    """Fuses visual tokens with a sentence vector: `Linear(tanh(V) * tanh(y))`.

    Follows SSP-SAM, spec §2.4: an element-wise product broadcast over the tokens, then a plain
    projection (no activation or norm) to the prompt width.

    Examples:
        >>> TanhFusion(dim=8, out_dim=4)(torch.randn(2, 9, 8), torch.randn(2, 8)).shape
        torch.Size([2, 9, 4])
    """

    def __init__(self, *, dim: int = 512, out_dim: int = 256) -> None:
        """Create the fusion.

        Args:
            dim: Width `D` of the visual tokens and the sentence vector.
            out_dim: Output width (SAM's prompt width, 256 for the official SAM).
        """
        super().__init__()
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, visual: Tensor, sentence: Tensor) -> Tensor:
        """Fuse.

        Args:
            visual: Visual tokens `(B, N, D)`, any float dtype (computed in the module's).
            sentence: Sentence vectors `(B, D)`.

        Returns:
            Fused tokens `(B, N, out_dim)`.

        Raises:
            ValueError: If the shapes disagree.
        """
        sizes = check_shape(visual, "B N D", name="visual", known={"D": self.proj.in_features})
        check_shape(sentence, "B D", name="sentence", known={"B": sizes["B"], "D": sizes["D"]})
        visual = as_float(visual, name="visual", dtype=self.proj.weight.dtype)
        sentence = as_float(sentence, name="sentence", dtype=self.proj.weight.dtype)
        return self.proj(torch.tanh(visual) * torch.tanh(sentence)[:, None])


class PostNormEncoderLayer(nn.Module):
    """DETR transformer encoder layer (post-norm), positions added to queries and keys only.

    `q = k = x + pos`; `x = LN1(x + SelfAttn(q, k, x))`; `x = LN2(x + W2 act(W1 x))`.
    Attribute names (`self_attn`, `linear1`, `linear2`, `norm1`, `norm2`) are DETR's.

    Examples:
        >>> layer = PostNormEncoderLayer(dim=8, num_heads=2, mlp_dim=16)
        >>> layer(torch.randn(2, 5, 8), torch.randn(5, 8)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(
        self, *, dim: int, num_heads: int = 8, mlp_dim: int = 2048, dropout: float = 0.0
    ) -> None:
        """Create the layer.

        Args:
            dim: Token width `D`.
            num_heads: Attention heads; must divide `dim`.
            mlp_dim: Hidden width of the feed-forward block.
            dropout: Dropout on attention weights and both residual branches (0 in SSP-SAM).
        """
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """Apply the layer to tokens `(B, N, D)` with positions `(N, D)` or `(B, N, D)`."""
        x = as_float(x, name="x", dtype=self.linear1.weight.dtype)
        pos = as_float(pos, name="pos", dtype=x.dtype)
        qk = x + pos
        x = self.norm1(x + self.dropout(self.self_attn(qk, qk, x, need_weights=False)[0]))
        ff = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout(ff))


class SemanticSpatialPromptEncoder(nn.Module):
    """Turns fused visual-linguistic tokens into `K` SAM sparse prompt tokens and a box.

    Follows SSP-SAM's prompt generator (spec §2.5): the sequence `[reg; prompts (K); fused (N)]`
    plus learned positional embeddings (one per position, so `N` is fixed at construction) goes
    through `depth` post-norm encoder layers and a LayerNorm. Output tokens `1..K` are the
    semantic-spatial prompts; token 0 feeds a 3-layer MLP whose sigmoid is a normalised
    `(cx, cy, w, h)` box (the auxiliary REC head). Token embeddings start as N(0, 1), encoder
    weights as Xavier-uniform, as in the reference.

    Examples:
        >>> enc = SemanticSpatialPromptEncoder(dim=8, num_prompts=3, num_tokens=4, depth=1,
        ...                                    num_heads=2, mlp_dim=16)
        >>> out = enc(torch.randn(2, 4, 8))
        >>> out.prompts.shape, out.boxes.shape
        (torch.Size([2, 3, 8]), torch.Size([2, 4]))
    """

    def __init__(
        self,
        *,
        dim: int = 256,
        num_prompts: int = 128,
        num_tokens: int = 576,
        depth: int = 6,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        dropout: float = 0.0,
        presence_head: bool = False,
    ) -> None:
        """Create the encoder.

        Args:
            dim: Token width `D` (SAM's prompt width; 256 for the official SAM).
            num_prompts: Number `K` of learnable prompt tokens (128 in the paper).
            num_tokens: Number `N` of fused visual tokens (576 for CLIP L/14@336, 196 for B/16).
            depth: Encoder layers (6 in the paper).
            num_heads: Attention heads per layer.
            mlp_dim: Feed-forward width (2048 in the paper).
            dropout: Encoder dropout (0 in the paper).
            presence_head: Add a Linear "has a referent" logit on the register token (GRES; not
                in the paper, whose only no-target signal is an empty mask).
        """
        super().__init__()
        self.num_prompts = num_prompts
        self.num_tokens = num_tokens
        self.register_token = nn.Embedding(1, dim)
        self.prompt_tokens = nn.Embedding(num_prompts, dim)
        self.pos_embed = nn.Embedding(1 + num_prompts + num_tokens, dim)
        self.layers = nn.ModuleList(
            PostNormEncoderLayer(dim=dim, num_heads=num_heads, mlp_dim=mlp_dim, dropout=dropout)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.box_head = MLP(in_dim=dim, hidden_dim=dim, out_dim=4, num_layers=3)
        self.presence_head = nn.Linear(dim, 1) if presence_head else None
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tokens: Tensor) -> SemanticSpatialPrompts:
        """Encode.

        Args:
            tokens: Fused visual-linguistic tokens `(B, N, D)`, any float dtype (computed in the
                encoder's).

        Returns:
            `SemanticSpatialPrompts` with `prompts (B, K, D)`, `boxes (B, 4)`,
            `tokens (B, 1 + K + N, D)` and, with `presence_head`, `presence_logits (B,)`.

        Raises:
            ValueError: If `tokens` is not `(B, N, D)` with the constructed `N` and `D`.
        """
        sizes = check_shape(
            tokens,
            "B N D",
            name="tokens",
            known={"N": self.num_tokens, "D": self.norm.weight.numel()},
        )
        tokens = as_float(tokens, name="tokens", dtype=self.norm.weight.dtype)
        learned = torch.cat([self.register_token.weight, self.prompt_tokens.weight], dim=0)
        x = torch.cat([repeat(learned, "k d -> b k d", b=sizes["B"]), tokens], dim=1)
        for layer in self.layers:
            x = layer(x, self.pos_embed.weight)
        x = self.norm(x)
        boxes = self.box_head(x[:, 0]).sigmoid()
        presence = self.presence_head(x[:, 0])[:, 0] if self.presence_head is not None else None
        return SemanticSpatialPrompts(
            prompts=x[:, 1 : 1 + self.num_prompts],
            boxes=boxes,
            tokens=x,
            presence_logits=presence,
        )
