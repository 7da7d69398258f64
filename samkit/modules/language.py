"""Linguistic attention adapter: word states to projected words and a phrase-attention sentence.

SSP-SAM's "LAD" (spec §2.2): CLIP word states are projected to the adapter width, a one-layer
bidirectional GRU reads them, a linear scorer turns each GRU state into a phrase-attention logit,
and the sentence vector is the attention-weighted sum of the *projected words* (not of the GRU
states).

Axis legend:
# b - batch (one text per image)
# l - text tokens
# d - channels
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from samkit._checks import as_float, check_binary, check_shape
from samkit.types import LinguisticFeatures

__all__ = ["LinguisticAttentionAdapter", "masked_phrase_attention"]


def masked_phrase_attention(scores: Tensor, padding_mask: Tensor, *, eps: float = 1e-12) -> Tensor:
    """Softmax over all tokens, zeroed at padding and renormalised (the reference formula).

    Mathematically this is a softmax over the valid tokens only.

    Args:
        scores: Attention logits `(B, L)`.
        padding_mask: `(B, L)` bool, True at padding.
        eps: Floor of the renormalising sum (a text made only of padding gets all-zero weights).

    Returns:
        Weights `(B, L)`: zero at padding, summing to one over the valid tokens.

    Examples:
        >>> pad = torch.tensor([[False, False, True, True]])
        >>> masked_phrase_attention(torch.zeros(1, 4), pad)
        tensor([[0.5000, 0.5000, 0.0000, 0.0000]])
    """
    attn = scores.softmax(dim=-1) * (~padding_mask).to(scores.dtype)
    return attn / attn.sum(dim=-1, keepdim=True).clamp_min(eps)


def _compact_index(padding_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Stable order that puts valid tokens first, keeping their relative order, and its inverse.

    Computed with cumulative sums and a scatter rather than a stable sort, so that the ONNX
    export of the adapter needs no sort (ONNX has no stable sort).

    Returns:
        `order (B, L)` (position of the token that moves to each slot) and `rank (B, L)` (slot
        each token moves to), inverse permutations of each other.
    """
    valid = (~padding_mask).long()
    pad = 1 - valid
    num_valid = valid.sum(-1, keepdim=True)
    rank = torch.where(valid.bool(), valid.cumsum(-1) - 1, num_valid + pad.cumsum(-1) - 1)
    positions = torch.arange(padding_mask.shape[-1], device=padding_mask.device)
    order = torch.zeros_like(rank).scatter(-1, rank, positions.expand_as(rank))
    return order, rank


def _wrap(index: Tensor, length: int) -> Tensor:
    """`index % length` for indices in `[-length, 2 * length)`, without a modulo (ONNX export)."""
    index = torch.where(index < 0, index + length, index)
    return torch.where(index >= length, index - length, index)


def _gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


class LinguisticAttentionAdapter(nn.Module):
    """Projects word states, reads them with a BiGRU and pools them by phrase attention.

    Follows SSP-SAM's linguistic attention adapter (spec §2.2): `E = Linear(words)`,
    `H = BiGRU(E)`, `a = masked_softmax(Linear(H))`, `sentence = sum_l a_l E_l`.

    By default the GRU only reads the valid tokens (both directions start at the ends of the
    text), so the output does not depend on what sits at padded positions. Set
    `gru_over_padding=True` to reproduce the reference, which feeds all `L` positions to the GRU
    unmasked: its backward direction starts inside the padding (spec §8.14). The checkpoint
    loader for the released weights sets it.

    Examples:
        >>> lad = LinguisticAttentionAdapter(text_dim=16, dim=8)
        >>> out = lad(torch.randn(2, 6, 16), torch.tensor([[False] * 4 + [True] * 2] * 2))
        >>> out.words.shape, out.sentence.shape, out.weights.shape
        (torch.Size([2, 6, 8]), torch.Size([2, 8]), torch.Size([2, 6]))
    """

    def __init__(self, *, text_dim: int, dim: int = 512, gru_over_padding: bool = False) -> None:
        """Create the adapter.

        Args:
            text_dim: Width `C_t` of the input word states (CLIP text width).
            dim: Adapter width `D` (512 in the paper); the GRU has `D` units per direction.
            gru_over_padding: Reference quirk: run the GRU over padding too (see above).
        """
        super().__init__()
        self.gru_over_padding = gru_over_padding
        self.proj = nn.Linear(text_dim, dim)
        self.gru = nn.GRU(dim, dim, num_layers=1, batch_first=True, bidirectional=True)
        self.score = nn.Linear(2 * dim, 1)

    def forward(self, word_states: Tensor, padding_mask: Tensor) -> LinguisticFeatures:
        """Compute projected words, phrase-attention weights and the sentence vector.

        Args:
            word_states: Per-token text states `(B, L, C_t)`, any float dtype (computed in the
                adapter's).
            padding_mask: `(B, L)` bool (or 0/1), True at padding.

        Returns:
            `LinguisticFeatures` with `words (B, L, D)`, `sentence (B, D)`, `weights (B, L)`.

        Raises:
            ValueError: If the shapes do not match `(B, L, C_t)` and `(B, L)`, or `padding_mask`
                is not binary.
        """
        sizes = check_shape(
            word_states, "B L C", name="word_states", known={"C": self.proj.in_features}
        )
        check_shape(padding_mask, "B L", name="padding_mask", known=sizes)
        padding_mask = check_binary(padding_mask, name="padding_mask")
        word_states = as_float(word_states, name="word_states", dtype=self.proj.weight.dtype)
        words = self.proj(word_states)  # (b, l, d)
        states = words if self.gru_over_padding else words * (~padding_mask)[..., None]
        hidden = self._read(states, padding_mask)  # (b, l, 2d)
        weights = masked_phrase_attention(self.score(hidden).squeeze(-1), padding_mask)
        sentence = torch.einsum("bl,bld->bd", weights, words)
        return LinguisticFeatures(words=words, sentence=sentence, weights=weights)

    def _read(self, words: Tensor, padding_mask: Tensor) -> Tensor:
        """Run the BiGRU, over all positions or (default) over the valid tokens only."""
        if self.gru_over_padding:
            return self.gru(words)[0]
        dim = self.gru.hidden_size
        length = words.shape[1]
        order, inverse = _compact_index(padding_mask)  # valid tokens first
        right = _gather_tokens(words, order)  # valid tokens at the start
        # Shift every text so its valid tokens end at position L - 1: the backward direction then
        # starts at the last valid token.
        num_valid = (~padding_mask).sum(-1, keepdim=True)  # (b, 1)
        pos = torch.arange(length, device=words.device)[None, :]
        shift = _wrap(pos - (length - num_valid), length)
        left = _gather_tokens(right, shift)
        forward = self.gru(right)[0][..., :dim]
        backward = self.gru(left)[0][..., dim:]
        backward = _gather_tokens(backward, _wrap(pos + (length - num_valid), length))
        hidden = torch.cat([forward, backward], dim=-1)
        return _gather_tokens(hidden, inverse)
