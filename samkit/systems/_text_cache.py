"""A bounded cache of class-text embeddings that never outlives a weight update.

Open-vocabulary systems embed the same vocabulary (often 150+ class names times the prompt
templates) on every call. `TextEmbeddingCache` keeps the embeddings of the most recently used
vocabularies (least recently used are evicted past `maxsize`).

Key: `(vocabulary, templates, encoder.training, inference mode)`, valid for one *weight state*
of the encoder: the storage address and in-place version counter (`Tensor._version`) of each of
its parameters and buffers. An optimizer step, `load_state_dict` or `.to()` changes that state
and empties the cache before the next lookup. While gradients could flow into the encoder
(grad mode on and any encoder parameter requiring grad) the cache is bypassed altogether: the
embeddings must carry the autograd graph of this call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["TextCacheInfo", "TextEmbeddingCache"]


class TextCacheInfo(NamedTuple):
    """Counters of a `TextEmbeddingCache` (as `functools.lru_cache`'s `cache_info`)."""

    hits: int
    misses: int
    bypasses: int
    size: int
    maxsize: int


def _weight_state(encoder: nn.Module) -> tuple[tuple[int, int], ...]:
    """Storage address and in-place version of every parameter and buffer."""
    tensors = [*encoder.parameters(), *encoder.buffers()]
    return tuple((t.data_ptr(), t._version) for t in tensors)


class TextEmbeddingCache:
    """LRU cache of text embeddings keyed by vocabulary, templates and the encoder's weights.

    Examples:
        >>> enc = nn.Linear(2, 2).requires_grad_(False)
        >>> cache = TextEmbeddingCache(maxsize=4)
        >>> e1 = cache(enc, ("cat", "dog"), ("{}",), lambda: enc(torch.ones(2, 2)))
        >>> e2 = cache(enc, ("cat", "dog"), ("{}",), lambda: enc(torch.ones(2, 2)))
        >>> torch.equal(e1, e2), cache.info().hits
        (True, 1)
    """

    def __init__(self, maxsize: int) -> None:
        """Create an empty cache.

        Args:
            maxsize: Vocabularies kept (least recently used are evicted); 0 turns caching off.

        Raises:
            ValueError: If `maxsize` is negative or not an int.
        """
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize: expected an int >= 0, got {maxsize!r}")
        self.maxsize = maxsize
        self._entries: OrderedDict[Hashable, Tensor] = OrderedDict()
        self._state: tuple[tuple[int, int], ...] | None = None
        self._hits = self._misses = self._bypasses = 0

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
        if self.maxsize == 0 or (
            torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
        ):
            self._bypasses += 1
            return compute()
        state = _weight_state(encoder)
        if state != self._state:
            self._entries.clear()
            self._state = state
        key = (vocabulary, templates, encoder.training, torch.is_inference_mode_enabled())
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self._hits += 1
            return cached.clone()
        self._misses += 1
        value = compute().detach()
        self._entries[key] = value
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return value.clone()

    def clear(self) -> None:
        """Drop every cached embedding (the counters are kept)."""
        self._entries.clear()
        self._state = None

    def info(self) -> TextCacheInfo:
        """Hits, misses, bypasses (gradient-tracking calls), current and maximum size."""
        return TextCacheInfo(
            self._hits, self._misses, self._bypasses, len(self._entries), self.maxsize
        )
