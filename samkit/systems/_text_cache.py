"""A bounded cache of class-text embeddings that never outlives a weight update.

Open-vocabulary systems embed the same vocabulary (often 150+ class names times the prompt
templates) on every call. `TextEmbeddingCache` keeps the embeddings of the most recently used
vocabularies (least recently used are evicted past `maxsize`); it is `samkit._cache`'s
`EmbeddingCache` with one entry per vocabulary.

Key: `(vocabulary, templates)` plus the call context of `samkit._cache` (train/eval flags,
inference mode, autocast), valid for one *weight state* of the encoder: the storage address and
in-place version counter (`Tensor._version`) of each of its parameters and buffers. An optimizer
step, `load_state_dict` or `.to()` changes that state and empties the cache before the next
lookup. While gradients could flow into the encoder (grad mode on and any encoder parameter
requiring grad) the cache is bypassed altogether: the embeddings must carry the autograd graph
of this call.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from samkit._cache import CacheInfo, EmbeddingCache

__all__ = ["TextCacheInfo", "TextEmbeddingCache"]

TextCacheInfo = CacheInfo
"""Counters of a `TextEmbeddingCache` (hits, misses, bypasses, size, maxsize)."""


class TextEmbeddingCache(EmbeddingCache):
    """LRU cache of text embeddings keyed by vocabulary, templates and the encoder's weights.

    Examples:
        >>> import torch
        >>> enc = nn.Linear(2, 2).requires_grad_(False)
        >>> cache = TextEmbeddingCache(maxsize=4)
        >>> e1 = cache(enc, ("cat", "dog"), ("{}",), lambda: enc(torch.ones(2, 2)))
        >>> e2 = cache(enc, ("cat", "dog"), ("{}",), lambda: enc(torch.ones(2, 2)))
        >>> torch.equal(e1, e2), cache.info().hits
        (True, 1)
    """

    def __call__(
        self,
        encoder: nn.Module,
        vocabulary: tuple[str, ...],
        templates: tuple[str, ...],
        compute: Callable[[], Tensor],
    ) -> Tensor:
        """The embeddings of `vocabulary`, from the cache or from `compute()`.

        Args:
            encoder: The module whose weights `compute` reads (its state is part of the key).
            vocabulary: The class names, in order.
            templates: The prompt templates used by `compute`.
            compute: Computes the embeddings when they are not cached.

        Returns:
            The embeddings; a fresh tensor on every call (safe to modify).
        """
        return self.get([encoder], (tuple(vocabulary), tuple(templates)), compute)
