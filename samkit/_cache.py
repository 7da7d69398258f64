"""Bounded caches of encoder outputs that never outlive a weight update.

Open-vocabulary systems embed the same vocabulary on every call, and the same image is often
encoded again (several vocabularies or expressions on one image, frozen encoders over several
epochs). `EmbeddingCache` keeps the most recently used outputs of one encoder (least recently
used entries are evicted past `maxsize`).

An entry is valid for one *state* of the encoder modules, read before every lookup:

- their weights: the storage address and in-place version counter (`Tensor._version`) of each
  parameter and buffer. An optimizer step, `load_state_dict` or `.to()` changes them and empties
  the cache. Writing through `.data` (`p.data.copy_(...)`) bypasses the version counter: call
  `clear()` after doing that;
- the call context, part of every key: the train/eval flag of every submodule, inference mode,
  the autocast state (enabled and dtype, CPU and CUDA) and `torch.get_float32_matmul_precision()`.

While gradients could flow (grad mode on and an encoder parameter, or an input, requiring grad)
the cache is bypassed: the outputs must carry the autograd graph of this call.

`EmbeddingCache.get` caches one output per key (a vocabulary's text embeddings);
`EmbeddingCache.rows` caches every row of a batch under its own key (one entry per image or
expression) and computes the missing rows in chunks of `batch_size`, which also bounds the
encoder's memory when nothing is cached. `image_keys` gives the content key of every image.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["CacheInfo", "EmbeddingCache", "check_size", "grad_could_flow", "image_keys"]

V = TypeVar("V")


class CacheInfo(NamedTuple):
    """Counters of an `EmbeddingCache` (as `functools.lru_cache`'s `cache_info`).

    `get` counts one hit, miss or bypass per call; `rows` one per row.
    """

    hits: int
    misses: int
    bypasses: int
    size: int
    maxsize: int


Parts = Sequence[nn.Module | Tensor]
"""What an encoder reads: modules (all their parameters and buffers) and loose tensors."""


def _tensors(parts: Parts) -> list[Tensor]:
    out: list[Tensor] = []
    for p in parts:
        out.extend([p] if isinstance(p, Tensor) else [*p.parameters(), *p.buffers()])
    return out


def _weight_state(parts: Parts) -> tuple[tuple[int, int], ...]:
    """Storage address and in-place version of every parameter and buffer."""
    return tuple((t.data_ptr(), t._version) for t in _tensors(parts))


def _autocast_state() -> tuple[Any, ...]:
    return tuple(
        (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda")
    )


def _context(parts: Parts) -> tuple[Any, ...]:
    """What changes an encoder's output besides its weights and inputs."""
    modules = [m for m in parts if isinstance(m, nn.Module)]
    return (
        tuple(sub.training for m in modules for sub in m.modules()),
        torch.is_inference_mode_enabled(),
        _autocast_state(),
        torch.get_float32_matmul_precision(),
    )


def grad_could_flow(parts: Parts, *inputs: Tensor) -> bool:
    """Whether an output computed now could carry gradients to a weight or an input."""
    if not torch.is_grad_enabled():
        return False
    return any(t.requires_grad for t in (*inputs, *_tensors(parts)))


def check_size(value: int, *, name: str) -> int:
    """Validate a cache size or encoder batch size: an int >= 0 (0: off / everything at once).

    Raises:
        ValueError: Naming `name`, if `value` is not an int >= 0.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    return value


def image_keys(images: Tensor) -> list[tuple[str, tuple[int, ...], str, str]]:
    """Content key of every image of a batch: digest of its bytes, shape, dtype and device.

    The digest is SHA-256 of the image's raw bytes (hardware-accelerated on most CPUs: about
    20 ms for a float32 1024x1024 image), so two images share a key only if they are equal bit
    for bit and have the same shape, dtype and device. Images on an accelerator are copied to
    the CPU to be hashed.

    Args:
        images: A batch `(B, ...)` of any dtype.

    Returns:
        `B` hashable keys.

    Examples:
        >>> x = torch.zeros(2, 3, 4, 4)
        >>> k = image_keys(x)
        >>> k[0] == k[1], k[0] == image_keys(x.double())[0], k[0][1:]
        (True, False, ((3, 4, 4), 'torch.float32', 'cpu'))
    """
    data = images.detach().contiguous().cpu()
    raw = data.view(torch.uint8) if data.dim() and data.element_size() > 1 else data
    out = []
    for i in range(data.shape[0]):
        digest = hashlib.sha256(raw[i].numpy().data).hexdigest()  # hashed in place, no copy
        out.append((digest, tuple(images.shape[1:]), str(images.dtype), str(images.device)))
    return out


# ---------------------------------------------------------------- batch rows of outputs
def _rows(value: Any, index: Tensor) -> Any:
    """The rows `index` of a batched output (tensors, lists and dataclasses of them)."""
    if isinstance(value, Tensor):
        return value[index.to(value.device)]
    if isinstance(value, list):
        if all(isinstance(v, Tensor) for v in value):
            return [_rows(v, index) for v in value]
        return [value[i] for i in index.tolist()]  # one entry per row (e.g. texts)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _rows(getattr(value, f.name), index) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **fields)
    return value  # shared by every row (sizes, flags)


def _cat(values: list[Any]) -> Any:
    """Concatenate outputs along the batch (the inverse of `_rows`); always new tensors."""
    first = values[0]
    if isinstance(first, Tensor):
        return torch.cat(values)
    if isinstance(first, list):
        if all(isinstance(v, Tensor) for v in first):
            return [_cat([v[k] for v in values]) for k in range(len(first))]
        return [x for v in values for x in v]
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        fields = {
            f.name: _cat([getattr(v, f.name) for v in values]) for f in dataclasses.fields(first)
        }
        return dataclasses.replace(first, **fields)
    if any(v != first for v in values):
        raise ValueError(f"cannot batch outputs that differ in a shared field: {values}")
    return first


def _map(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, list):
        return [_map(v, fn) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _map(getattr(value, f.name), fn) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **fields)
    return value


Rows = Tensor | slice
"""Which rows `compute` gets: a long index `(n,)`, or a slice (a view, no copy) for a range."""


def _chunked(compute: Callable[[Rows], V], index: Tensor | None, n: int, batch_size: int) -> V:
    """The rows `index` (None: all `n`, as slices) in chunks of `batch_size` (0: one call)."""
    if index is None:
        if batch_size <= 0 or n <= batch_size:
            return compute(slice(None))
        return _cat([compute(slice(i, i + batch_size)) for i in range(0, n, batch_size)])  # type: ignore[no-any-return]
    if batch_size <= 0 or index.numel() <= batch_size:
        return compute(index)
    return _cat([compute(chunk) for chunk in index.split(batch_size)])  # type: ignore[no-any-return]


class EmbeddingCache:
    """LRU cache of one encoder's outputs, keyed by input and call context, valid for its weights.

    Examples:
        >>> enc = nn.Linear(2, 2).requires_grad_(False)
        >>> cache = EmbeddingCache(maxsize=4)
        >>> x = torch.ones(3, 2)
        >>> e1 = cache.rows([enc], ["a", "b", "a"], lambda i: enc(x[i]))
        >>> e2 = cache.rows([enc], ["a", "b"], lambda i: enc(x[i]))
        >>> torch.equal(e1[:2], e2), cache.info()
        (True, CacheInfo(hits=3, misses=2, bypasses=0, size=2, maxsize=4))
    """

    def __init__(self, maxsize: int, *, name: str = "maxsize") -> None:
        """Create an empty cache.

        Args:
            maxsize: Entries kept (least recently used are evicted); 0 turns caching off.
            name: What `maxsize` is called in error messages (e.g. the config field).

        Raises:
            ValueError: If `maxsize` is negative or not an int.
        """
        self.maxsize = check_size(maxsize, name=name)
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._state: tuple[tuple[int, int], ...] | None = None
        self._hits = self._misses = self._bypasses = 0

    def _sync(self, modules: Parts) -> None:
        state = _weight_state(modules)
        if state != self._state:
            self._entries.clear()
            self._state = state

    def _store(self, key: Hashable, value: Any) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def get(self, modules: Parts, key: Hashable, compute: Callable[[], V]) -> V:
        """The output under `key`, from the cache or from `compute()`.

        Args:
            modules: The modules (and tensors) whose weights `compute` reads; their state is
                part of the key.
            key: What identifies the input (e.g. the vocabulary and templates).
            compute: Computes the output when it is not cached.

        Returns:
            The output; fresh tensors on every call (safe to modify).
        """
        if self.maxsize == 0 or grad_could_flow(modules):
            self._bypasses += 1
            return compute()
        self._sync(modules)
        full = (_context(modules), key)
        cached = self._entries.get(full)
        if cached is not None:
            self._entries.move_to_end(full)
            self._hits += 1
            return _map(cached, torch.clone)  # type: ignore[no-any-return]
        self._misses += 1
        value = compute()
        self._store(full, _map(value, lambda t: t.detach().clone()))
        return value

    def rows(
        self,
        modules: Parts,
        keys: Sequence[Hashable],
        compute: Callable[[Rows], V],
        *,
        batch_size: int = 0,
        inputs: Sequence[Tensor] = (),
    ) -> V:
        """A batched output whose rows are cached one by one.

        Rows with equal keys are computed once. The missing rows go to `compute` in chunks of at
        most `batch_size` (so an image's output may come from a batch of other images: the
        encoder must treat rows independently, as SAM's and CLIP's encoders do).

        Args:
            modules: The modules (and tensors) whose weights `compute` reads.
            keys: One key per row (e.g. `image_keys(images)` plus the encoder settings).
            compute: Maps rows (a long index `(n,)`, or a slice when they are a range) to their
                batched output (tensors with a leading `n`, or dataclasses / lists of them;
                other fields are shared).
            batch_size: Rows per `compute` call (0: all at once).
            inputs: The input tensors; the cache is bypassed if one requires grad.

        Returns:
            The output of all `len(keys)` rows, in order; fresh tensors (safe to modify).
        """
        n = len(keys)
        if n == 0:
            return compute(slice(None))
        if self.maxsize == 0 or grad_could_flow(modules, *inputs):
            self._bypasses += n
            return _chunked(compute, None, n, batch_size)
        self._sync(modules)
        ctx = _context(modules)
        found: dict[int, Any] = {}
        todo: dict[Hashable, list[int]] = {}
        for i, key in enumerate(keys):
            full = (ctx, key)
            if full in self._entries:
                self._entries.move_to_end(full)
                found[i] = self._entries[full]
                self._hits += 1
            elif full in todo:
                todo[full].append(i)
                self._hits += 1  # an equal row earlier in this batch
            else:
                todo[full] = [i]
                self._misses += 1
        if todo:
            first = torch.tensor([rows[0] for rows in todo.values()])
            value = _chunked(compute, first, len(first), batch_size)
            for j, (entry, rows) in enumerate(todo.items()):
                row = _map(_rows(value, torch.tensor([j])), lambda t: t.detach().clone())
                self._store(entry, row)
                for i in rows:
                    found[i] = row
        return _cat([found[i] for i in range(n)])  # type: ignore[no-any-return]

    def images(
        self,
        modules: Parts,
        images: Tensor,
        settings: Hashable,
        compute: Callable[[Rows], V],
        *,
        batch_size: int = 0,
    ) -> V:
        """`rows` keyed by each image's content (`image_keys`) and the encoder `settings`.

        The images are hashed only when the cache is in use (not bypassed, `maxsize > 0`).

        Args:
            modules: The modules (and tensors) whose weights `compute` reads.
            images: The batch `(B, ...)` that `compute` indexes.
            settings: Everything besides the image and the weights that changes the output
                (input size, taps, mode...).
            compute: Maps rows (a long index or a slice) to the output of `images[rows]`.
            batch_size: Images per `compute` call (0: all at once).

        Returns:
            The output of the `B` images, in order.
        """
        if self.maxsize == 0 or grad_could_flow(modules, images):
            self._bypasses += images.shape[0]
            return _chunked(compute, None, images.shape[0], batch_size)
        keys = [(key, settings) for key in image_keys(images)]
        return self.rows(modules, keys, compute, batch_size=batch_size, inputs=(images,))

    def clear(self) -> None:
        """Drop every cached output (the counters are kept)."""
        self._entries.clear()
        self._state = None

    def info(self) -> CacheInfo:
        """Hits, misses, bypasses (gradient-tracking calls), current and maximum size."""
        return CacheInfo(self._hits, self._misses, self._bypasses, len(self._entries), self.maxsize)
