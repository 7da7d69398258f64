"""Image and text caches of the three systems, and encoder batching.

Cached outputs must equal recomputed ones bit for bit; a weight update, `load_state_dict`, a
train/eval switch or another input must miss; and an image's result must not depend on the
other images of its batch (float32: within atol = rtol = 1e-5; SAM's encoder differs by about
2e-6 between a batch of 8 and a batch of 1 on CPU, from the matrix-multiply blocking).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from samkit.systems.sam_cp import build_sam_cp
from samkit.systems.sam_mi import build_sam_mi
from samkit.systems.ssp_sam import build_ssp_sam

TOL = {"atol": 1e-5, "rtol": 1e-5}
NAMES = ["circle", "grass", "sky"]


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _sam_mi(**kw: Any):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_sam_mi("tiny", sampling="deterministic", **kw).eval()


def _ssp_sam(**kw: Any):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_ssp_sam("tiny", **kw).eval()


def _sam_cp(**kw: Any):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_sam_cp("tiny", points_per_side=4, **kw).eval()


# ---------------------------------------------------------------- hits are bit-exact
def test_sam_mi_cached_forward_is_bit_exact() -> None:
    cached, plain = _sam_mi(image_cache_size=4), _sam_mi()
    x = _images(2)
    with torch.no_grad():
        want = plain(x, NAMES)
        for _ in range(2):  # the second call is served from the caches
            got = cached(x, NAMES)
            torch.testing.assert_close(got.logits, want.logits, atol=0, rtol=0)
            assert torch.equal(got.sam_masks, want.sam_masks)
    info = cached.image_cache_info()
    assert {k: (v.hits, v.misses) for k, v in info.items()} == {"sam": (2, 2), "clip": (2, 2)}
    assert all(v.hits == 0 and v.bypasses == 2 for v in plain.image_cache_info().values())


def test_ssp_sam_cached_forward_is_bit_exact() -> None:
    cached, plain = _ssp_sam(image_cache_size=4, text_cache_size=4), _ssp_sam()
    x = _images(2, size=96)
    texts = ["the red circle", "all squares"]
    with torch.no_grad():
        want = plain(x, texts)
        for _ in range(2):
            got = cached(x, texts)
            torch.testing.assert_close(got.low_res_logits, want.low_res_logits, atol=0, rtol=0)
            torch.testing.assert_close(got.boxes, want.boxes, atol=0, rtol=0)
    assert cached.image_cache_info()["sam"][:2] == (2, 2)
    assert cached.text_cache_info()[:2] == (2, 2)


def test_sam_cp_cached_predict_is_bit_exact() -> None:
    cached = _sam_cp(image_cache_size=4, open_vocabulary=True)
    plain = _sam_cp(text_cache_size=0, open_vocabulary=True)
    x = _images(2)
    want = plain.predict(x)
    for _ in range(2):
        got = cached.predict(x)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a.panoptic, b.panoptic) and torch.equal(a.semantic, b.semantic)
            assert torch.equal(a.instance_scores, b.instance_scores)
    info = cached.image_cache_info()
    assert info["sam"][:2] == (2, 2) and info["clip"][:2] == (2, 2)
    assert cached.text_cache_info().hits >= 1 and plain.text_cache_info().hits == 0


# ---------------------------------------------------------------- invalidation
def test_sam_mi_optimizer_step_invalidates_clip_not_sam() -> None:
    model = _sam_mi(image_cache_size=4)
    x = _images(1)
    groups = model.configure_stage(2)  # CLIP's q/v... train (tiny: all of CLIP)
    opt = torch.optim.SGD([p for g in groups for p in g["params"]], lr=1.0)
    with torch.no_grad():
        before = model.encode_clip(x).features
        model.encode_sam(x)
    out = model(x, NAMES)  # training forward: CLIP's cache is bypassed (it gets gradients)
    assert model.image_cache_info()["clip"].bypasses == 1
    out.logits.square().mean().backward()
    opt.step()
    with torch.no_grad():
        after = model.encode_clip(x).features
        fresh = model.clip.encode_dense(model._clip_input(x), mode="value").features
        model.encode_sam(x)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh, atol=0, rtol=0)
    info = model.image_cache_info()
    assert info["clip"][:2] == (0, 2)  # the step emptied it
    assert info["sam"][:2] == (2, 1)  # frozen SAM: still valid (the forward hit it too)


def test_ssp_sam_decoder_step_keeps_sam_embeddings_encoder_change_drops_them() -> None:
    model = _ssp_sam(image_cache_size=4)
    model.set_decoder_frozen(False)
    x = _images(1, size=96)
    first = model.encode_sam(x).embeddings
    opt = torch.optim.SGD(model.sam.mask_decoder.parameters(), lr=1.0)
    model(x, ["a thing"]).low_res_logits.square().mean().backward()
    opt.step()  # only the mask decoder changes: SSP-SAM fine-tunes it
    assert torch.equal(model.encode_sam(x).embeddings, first)
    hits = model.image_cache_info()["sam"].hits
    state = {k: v + 0.01 for k, v in model.sam.image_encoder.state_dict().items()}
    model.sam.image_encoder.load_state_dict(state)
    with torch.no_grad():
        changed = model.encode_sam(x).embeddings
        want = model.sam.encode(x).embeddings
    assert model.image_cache_info()["sam"].hits == hits
    assert not torch.allclose(changed, first)
    torch.testing.assert_close(changed, want, atol=0, rtol=0)


def test_train_eval_and_dtype_miss() -> None:
    model = _ssp_sam(image_cache_size=8)
    x = _images(1, size=96)
    with torch.no_grad():
        model.encode_clip(x)
        model.clip.train()
        model.encode_clip(x)
        model.clip.eval()
        model.encode_clip(x)  # the eval-mode entry again
        model.encode_clip(x.double())  # same pixels, another dtype: another key
    assert model.image_cache_info()["clip"][:2] == (1, 3)


def test_sam_cp_text_cache_follows_load_state_dict() -> None:
    model, other = _sam_cp(), _sam_cp()
    with torch.no_grad():
        for p in other.clip.parameters():
            p.add_(0.01 * torch.randn_like(p))
    before = model.text_embeddings(NAMES)
    model.load_state_dict(other.state_dict())
    after = model.text_embeddings(NAMES)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, other.text_embeddings(NAMES), atol=0, rtol=0)


def test_ssp_sam_text_cache_per_expression_and_bypass() -> None:
    model = _ssp_sam(text_cache_size=2)
    calls: list[int] = []
    inner = model.clip.encode_tokens

    def counted(tokens, **kw):  # type: ignore[no-untyped-def]
        calls.append(tokens.shape[0])
        return inner(tokens, **kw)

    model.clip.encode_tokens = counted  # type: ignore[method-assign]
    with torch.no_grad():
        a = model.encode_text(["left dog", "right cat"])
        b = model.encode_text(["right cat", "left dog", "left dog"])
    assert calls == [2]  # every row of the second call was cached
    torch.testing.assert_close(b.token_states[1], a.token_states[0], atol=0, rtol=0)
    assert b.texts == [a.texts[1], a.texts[0], a.texts[0]]
    with torch.no_grad():
        model.encode_text(["the tree"])  # evicts "right cat" (least recently used)
        model.encode_text(["right cat"])
    assert calls == [2, 1, 1]
    trainable = _ssp_sam(clip_trainable="all", text_cache_size=4)
    out = trainable.encode_text(["left dog"])
    assert out.embeddings.requires_grad and trainable.text_cache_info().bypasses == 1


# ---------------------------------------------------------------- batching invariance
@pytest.mark.parametrize("encoder_batch_size", [8, 3])
def test_sam_mi_image_result_does_not_depend_on_its_batch(encoder_batch_size: int) -> None:
    # grid prompting: TSPP's point rule thresholds probabilities, and those differ by ~6e-8
    # between batch compositions (TSPP's own arithmetic), which can flip a borderline cell
    model = _sam_mi(encoder_batch_size=encoder_batch_size, prompting="grid", grid=8)
    x = _images(8)
    with torch.no_grad():
        batch = model(x, NAMES)
        sam, clip = model.encode_sam(x), model.encode_clip(x)
        for i in (0, 5):
            alone = model(x[i : i + 1], NAMES)
            torch.testing.assert_close(batch.logits[i], alone.logits[0], **TOL)
            assert torch.equal(batch.sam_masks[i], alone.sam_masks[0])
            one_sam, one_clip = model.encode_sam(x[i : i + 1]), model.encode_clip(x[i : i + 1])
            torch.testing.assert_close(sam.embeddings[i], one_sam.embeddings[0], **TOL)
            torch.testing.assert_close(clip.features[i], one_clip.features[0], **TOL)
            for tap, one in zip(clip.intermediates, one_clip.intermediates, strict=True):
                torch.testing.assert_close(tap[i], one[0], **TOL)


@pytest.mark.parametrize("encoder_batch_size", [8, 3])
def test_ssp_sam_image_result_does_not_depend_on_its_batch(encoder_batch_size: int) -> None:
    model = _ssp_sam(encoder_batch_size=encoder_batch_size)
    x = _images(8, size=96)
    texts = [f"object {i}" for i in range(8)]
    with torch.no_grad():
        batch = model(x, texts)
        for i in (0, 5):
            alone = model(x[i : i + 1], texts[i : i + 1])
            torch.testing.assert_close(batch.low_res_logits[i], alone.low_res_logits[0], **TOL)
            torch.testing.assert_close(batch.boxes[i], alone.boxes[0], **TOL)


def test_proposer_embeddings_do_not_depend_on_the_batch() -> None:
    model = _sam_cp(encoder_batch_size=3)
    x = _images(8)
    assert model.proposer is not None
    with torch.no_grad():
        batch = model.proposer.sam.encode(x).embeddings
        chunked = model.proposer._image_cache.images(
            [model.proposer.sam], x, "sam", lambda i: model.proposer.sam.encode(x[i]), batch_size=3
        ).embeddings
        for i in (0, 5):
            alone = model.proposer.sam.encode(x[i : i + 1]).embeddings
            torch.testing.assert_close(batch[i], alone[0], **TOL)
            torch.testing.assert_close(chunked[i], alone[0], **TOL)


@pytest.mark.parametrize(
    "build", [lambda **kw: _sam_mi(**kw), lambda **kw: _ssp_sam(**kw), lambda **kw: _sam_cp(**kw)]
)
@pytest.mark.parametrize("field", ["text_cache_size", "image_cache_size", "encoder_batch_size"])
def test_exception(build: Any, field: str) -> None:
    with pytest.raises(ValueError, match=rf"{field}: expected an int >= 0, got -1"):
        build(**{field: -1})
