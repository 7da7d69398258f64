"""`samkit._cache`: per-row caching, content keys, bounds, invalidation, bypass, chunking."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from samkit._cache import EmbeddingCache, image_keys
from samkit.types import ImageEmbedding


class _Encoder(nn.Module):
    """A row-wise encoder that counts the rows it sees and the size of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0), requires_grad=False)
        self.dropout = nn.Dropout(0.0)
        self.rows = 0
        self.calls: list[int] = []

    def forward(self, x: Tensor) -> ImageEmbedding:
        self.rows += x.shape[0]
        self.calls.append(x.shape[0])
        y = self.dropout(x.tanh() * self.scale)
        return ImageEmbedding(
            embeddings=y, input_size=(4, 4), original_size=(4, 4), intermediates=[2 * y]
        )


def _encode(cache: EmbeddingCache, enc: _Encoder, x: Tensor, batch: int = 0) -> ImageEmbedding:
    return cache.images([enc], x, "enc", lambda i: enc(x[i]), batch_size=batch)


def _images(n: int, seed: int = 0) -> Tensor:
    return torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_hit_is_bit_exact_and_fresh() -> None:
    enc, cache = _Encoder(), EmbeddingCache(8)
    x = _images(3)
    first = _encode(cache, enc, x)
    second = _encode(cache, enc, x)
    want = enc(x)  # recomputation
    assert enc.rows == 3 + 3  # the second call computed nothing
    for out in (first, second):
        assert torch.equal(out.embeddings, want.embeddings)
        assert torch.equal(out.intermediates[0], want.intermediates[0])
        assert out.input_size == (4, 4)
    second.embeddings.zero_()  # callers get their own tensors
    assert torch.equal(_encode(cache, enc, x).embeddings, want.embeddings)
    assert cache.info()[:4] == (6, 3, 0, 3)


def test_rows_mix_hits_and_misses_in_order() -> None:
    enc, cache = _Encoder(), EmbeddingCache(8)
    x = _images(4)
    _encode(cache, enc, x[[0, 2]])
    enc.rows = 0
    out = _encode(cache, enc, x[[3, 0, 1, 2, 3]])  # 3 twice: computed once
    assert enc.rows == 2
    torch.testing.assert_close(out.embeddings, enc(x[[3, 0, 1, 2, 3]]).embeddings, atol=0, rtol=0)


def test_key_sensitivity() -> None:
    x = _images(2)
    keys = image_keys(x)
    changed = x.clone()
    changed[0, 1, 2, 3] += 1e-7  # one pixel, one ulp-sized change
    assert keys[0] != keys[1]
    assert image_keys(x.clone()) == keys  # the content, not the tensor object
    assert image_keys(changed)[0] != keys[0] and image_keys(changed)[1] == keys[1]
    assert image_keys(x.double())[0] != keys[0]
    assert image_keys(x.reshape(2, 3, 2, 8))[0] != keys[0]  # same bytes, another shape
    assert image_keys(x.to(torch.bfloat16))[0] != keys[0]  # dtypes numpy cannot hold


def test_bounded_lru() -> None:
    enc, cache = _Encoder(), EmbeddingCache(2)
    x = _images(3)
    for i in (0, 1, 0, 2):  # 1 is the least recently used when 2 comes
        _encode(cache, enc, x[i : i + 1])
    assert enc.rows == 3 and cache.info().size == 2
    _encode(cache, enc, x[0:1])
    assert enc.rows == 3
    _encode(cache, enc, x[1:2])
    assert enc.rows == 4
    big = _encode(cache, enc, _images(5, seed=1))  # more rows than fit: all returned, 2 kept
    assert big.embeddings.shape[0] == 5 and cache.info().size == 2


def test_weight_update_train_mode_and_autocast_miss() -> None:
    enc, cache = _Encoder().eval(), EmbeddingCache(8)
    x = _images(2)
    before = _encode(cache, enc, x).embeddings
    with torch.no_grad():
        enc.scale.mul_(1.5)  # an in-place update, as an optimizer step makes
    after = _encode(cache, enc, x).embeddings
    assert enc.rows == 4 and torch.equal(after, enc(x).embeddings)
    assert not torch.equal(after, before)
    enc.load_state_dict({"scale": torch.tensor(2.0)})
    assert torch.equal(_encode(cache, enc, x).embeddings, before) and enc.rows == 2 * 3 + 2
    assert cache.info()[:2] == (0, 2 * 3)
    enc.dropout.train()  # a submodule's flag is part of the key
    _encode(cache, enc, x)
    enc.eval()
    _encode(cache, enc, x)  # the eval-mode entries are still there
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _encode(cache, enc, x)
    with torch.inference_mode():
        _encode(cache, enc, x)
    assert cache.info()[:2] == (2, 2 * 6)


def test_bypassed_while_gradients_could_flow() -> None:
    enc, cache = _Encoder(), EmbeddingCache(8)
    x = _images(2).requires_grad_()
    out = _encode(cache, enc, x)  # an input that requires grad
    out.embeddings.sum().backward()
    assert x.grad is not None and cache.info().bypasses == 2 and cache.info().size == 0
    enc.scale.requires_grad_(True)  # a trainable weight
    out = _encode(cache, enc, x.detach())
    out.embeddings.sum().backward()
    assert enc.scale.grad is not None and cache.info().bypasses == 4
    with torch.no_grad():  # no graph: cached again
        _encode(cache, enc, x.detach())
    assert cache.info().size == 2


def test_chunks_bound_the_encoder_batch() -> None:
    enc, cache = _Encoder(), EmbeddingCache(0)  # chunking works with the cache off too
    x = _images(7)
    out = _encode(cache, enc, x, batch=3)
    assert enc.calls == [3, 3, 1]
    assert torch.equal(out.embeddings, enc(x).embeddings)
    assert _encode(cache, enc, x[:0]).embeddings.shape == (0, 3, 4, 4)


def test_exception() -> None:
    with pytest.raises(ValueError, match=r"maxsize: expected an int >= 0, got -1"):
        EmbeddingCache(-1)
    with pytest.raises(ValueError, match=r"maxsize: expected an int >= 0, got True"):
        EmbeddingCache(True)
