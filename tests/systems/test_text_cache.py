"""SAM-MI's text-embedding cache: same embeddings as no cache, hits, bounds, invalidation."""

from __future__ import annotations

import pytest
import torch

from samkit.systems._text_cache import TextEmbeddingCache
from samkit.systems.sam_mi import SAMMI, build_sam_mi

NAMES = ("circle", "grass", "sky")


class _Spy:
    """Counts the calls that reach CLIP's text encoder."""

    def __init__(self, model: SAMMI) -> None:
        self.calls = 0
        inner = model.clip.encode_text

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls += 1
            return inner(*args, **kwargs)

        model.clip.encode_text = counted  # type: ignore[method-assign]


def _model(**overrides: object) -> SAMMI:
    torch.manual_seed(0)
    return build_sam_mi("tiny", sampling="deterministic", **overrides).eval()


def test_equal_outputs_with_and_without_cache() -> None:
    cached, plain = _model(), _model(text_cache_size=0)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for _ in range(2):  # the second call is served from the cache
            a, b = cached(images, list(NAMES)), plain(images, list(NAMES))
            torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    assert cached.text_cache_info().hits >= 1 and plain.text_cache_info().hits == 0


def test_hit_on_second_call_and_key() -> None:
    model = _model()
    spy = _Spy(model)
    with torch.no_grad():
        first = model.encode_text(list(NAMES))
        second = model.encode_text(list(NAMES))
        assert spy.calls == 1 and torch.equal(first, second)
        model.encode_text(list(reversed(NAMES)))  # another order is another vocabulary
        assert spy.calls == 2
        second.zero_()  # callers get their own tensor
        assert torch.equal(model.encode_text(list(NAMES)), first) and spy.calls == 2
    info = model.text_cache_info()
    assert (info.hits, info.misses, info.size) == (2, 2, 2)


def test_bounded_lru() -> None:
    model = _model(text_cache_size=2)
    spy = _Spy(model)
    with torch.no_grad():
        for names in (["a"], ["b"], ["a"], ["c"]):  # "b" is least recently used when "c" comes
            model.encode_text(names)
        assert spy.calls == 3 and model.text_cache_info().size == 2
        model.encode_text(["a"])
        assert spy.calls == 3
        model.encode_text(["b"])
        assert spy.calls == 4


def test_invalidated_by_an_optimizer_step() -> None:
    model = _model()
    spy = _Spy(model)
    model.configure_stage(2)  # CLIP trains in stage 2
    opt = torch.optim.SGD([p for p in model.clip.parameters() if p.requires_grad], lr=1.0)
    with torch.no_grad():
        before = model.encode_text(list(NAMES))
    # with gradients the cache is bypassed: the embeddings carry this call's graph
    text = model.encode_text(list(NAMES))
    assert text.requires_grad and spy.calls == 2
    text.square().sum().backward()
    opt.step()
    with torch.no_grad():
        after = model.encode_text(list(NAMES))  # must not be the stale pre-step embedding
        assert spy.calls == 3
        fresh = model.clip.encode_text(list(NAMES), templates=model.config.templates).embeddings
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh, atol=0, rtol=0)


def test_invalidated_by_load_state_dict() -> None:
    model, other = _model(), _model()
    with torch.no_grad():
        for p in other.clip.parameters():
            p.add_(0.01 * torch.randn_like(p))
        before = model.encode_text(list(NAMES))
        model.load_state_dict(other.state_dict())
        after = model.encode_text(list(NAMES))
        want = other.encode_text(list(NAMES))
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, want, atol=0, rtol=0)


def test_inference_mode_entries_do_not_leak() -> None:
    model = _model()
    model.clip.requires_grad_(False)  # frozen CLIP: the cache also serves grad-mode calls
    with torch.inference_mode():
        model.encode_text(list(NAMES))
    # an inference tensor could not be saved for backward; a grad-mode call gets a normal one
    weight = torch.ones(1, requires_grad=True)
    text = model.encode_text(list(NAMES))
    (text * weight).sum().backward()
    assert weight.grad is not None
    assert model.text_cache_info().misses == 2 and model.text_cache_info().bypasses == 0


def test_exception() -> None:
    with pytest.raises(ValueError, match=r"maxsize: expected an int >= 0, got -1"):
        TextEmbeddingCache(-1)
