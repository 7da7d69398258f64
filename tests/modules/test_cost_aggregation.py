from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from samkit.modules.cost_aggregation import (
    CostAggregator,
    CostEmbedding,
    cost_volume,
    select_top_classes,
    sliding_window_inference,
)
from samkit.modules.cost_attention import (
    ClassAggregation,
    GuidedSwinBlock,
    SpatialAggregation,
    linear_attention,
)
from samkit.modules.cost_decoder import UpsamplingDecoder


def _tiny_aggregator(**kw: object) -> CostAggregator:
    cfg: dict[str, object] = {
        "feature_dim": 8,
        "vision_width": 12,
        "dim": 16,
        "num_layers": 2,
        "num_heads": 2,
        "window_size": 4,
        "guidance_dim": 8,
        "text_guidance_dim": 8,
        "tap_dims": (8, 8),
        "decoder_guidance_dims": (4, 4),
        "decoder_dims": (8, 8),
        "pad_len": 6,
    }
    cfg.update(kw)
    return CostAggregator(**cfg)  # type: ignore[arg-type]


def _inputs(b: int = 2, t: int = 3, h: int = 6, w: int = 6, device: str | torch.device = "cpu"):
    feats = torch.randn(b, 8, h, w, device=device)
    text = torch.randn(t, 8, device=device)
    taps = [torch.randn(b, 12, h, w, device=device) for _ in range(2)]
    return feats, text, taps


def _reference_swin(blk: GuidedSwinBlock, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Dense attention restricted to the (non-cyclic) shifted-window partition of valid tokens."""
    n, d, h, w = x.shape
    win = min(blk.window_size, h, w)
    shift = blk.shift if win == blk.window_size else 0
    t = x.permute(0, 2, 3, 1).reshape(n, h * w, d)
    z = blk.norm1(t)
    zg = torch.cat([z, g.permute(0, 2, 3, 1).reshape(n, h * w, -1)], -1)
    e = blk.num_heads
    q = blk.q(zg).reshape(n, h * w, e, -1).transpose(1, 2)
    k = blk.k(zg).reshape(n, h * w, e, -1).transpose(1, 2)
    v = blk.v(z).reshape(n, h * w, e, -1).transpose(1, 2)
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    group = ((rows - shift) // win) * 1000 + (cols - shift) // win
    allowed = group[:, None] == group[None, :]
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    attn = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
    out = blk.proj((attn @ v).transpose(1, 2).reshape(n, h * w, d))
    t = t + out
    t = t + blk.mlp(blk.norm2(t))
    return t.reshape(n, h, w, d).permute(0, 3, 1, 2)


class TestLinearAttention:
    def test_matches_explicit_formula(self) -> None:
        q, k, v = torch.randn(2, 5, 3, 4), torch.randn(2, 7, 3, 4), torch.randn(2, 7, 3, 6)
        fq, fk = F.elu(q) + 1, F.elu(k) + 1
        sim = torch.einsum("blec,bsec->bels", fq, fk)
        ref = torch.einsum("bels,bsef->blef", sim / sim.sum(-1, keepdim=True), v)
        torch.testing.assert_close(linear_attention(q, k, v), ref, atol=1e-5, rtol=1e-4)

    def test_gradcheck(self) -> None:
        args = [torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True) for _ in range(3)]
        assert torch.autograd.gradcheck(linear_attention, args, fast_mode=True)


class TestGuidedSwinBlock:
    @pytest.mark.parametrize(("h", "w", "shift"), [(8, 8, 0), (8, 8, 2), (6, 7, 0), (6, 10, 2)])
    def test_matches_dense_reference(self, h: int, w: int, shift: int) -> None:
        blk = GuidedSwinBlock(dim=8, guidance_dim=4, num_heads=2, window_size=4, shift=shift)
        x, g = torch.randn(3, 8, h, w), torch.randn(3, 4, h, w)
        torch.testing.assert_close(blk(x, g), _reference_swin(blk, x, g), atol=1e-5, rtol=1e-4)

    def test_small_grid_shrinks_window(self) -> None:
        blk = GuidedSwinBlock(dim=8, guidance_dim=4, num_heads=2, window_size=12, shift=6)
        x, g = torch.randn(1, 8, 5, 5), torch.randn(1, 4, 5, 5)
        torch.testing.assert_close(blk(x, g), _reference_swin(blk, x, g), atol=1e-5, rtol=1e-4)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="must divide"):
            GuidedSwinBlock(dim=10, guidance_dim=4, num_heads=3)
        blk = GuidedSwinBlock(dim=8, guidance_dim=4, num_heads=2, window_size=4)
        with pytest.raises(ValueError, match="expected shape"):
            blk(torch.randn(1, 9, 4, 4), torch.randn(1, 4, 4, 4))

    def test_gradcheck(self) -> None:
        blk = GuidedSwinBlock(dim=4, guidance_dim=2, num_heads=2, window_size=2, shift=1).double()
        x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
        g = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(blk, (x, g), fast_mode=True)


class TestSpatialAggregation:
    def test_classes_are_independent(self) -> None:
        agg = SpatialAggregation(dim=8, guidance_dim=4, num_heads=2, window_size=4)
        x, g = torch.randn(2, 8, 3, 8, 8), torch.randn(2, 4, 8, 8)
        out = agg(x, g)
        torch.testing.assert_close(out[:, :, 1:2], agg(x[:, :, 1:2], g), atol=1e-5, rtol=1e-4)

    def test_no_guidance(self) -> None:
        agg = SpatialAggregation(dim=8, guidance_dim=0, num_heads=2, window_size=4)
        assert agg(torch.randn(1, 8, 2, 4, 4), None).shape == (1, 8, 2, 4, 4)


class TestClassAggregation:
    def test_double_residual_adds_input_again(self) -> None:
        a = ClassAggregation(dim=8, guidance_dim=4, num_heads=2, pad_len=5).eval()
        b = ClassAggregation(dim=8, guidance_dim=4, num_heads=2, pad_len=5, double_residual=False)
        b.load_state_dict(a.state_dict())
        b.eval()
        x, g = torch.randn(2, 8, 3, 4, 4), torch.randn(2, 3, 4)
        torch.testing.assert_close(a(x, g) - b(x, g), x, atol=1e-5, rtol=1e-4)

    def test_pooling_in_training(self) -> None:
        a = ClassAggregation(dim=8, guidance_dim=4, num_heads=2, pad_len=0).train()
        x = torch.randn(1, 8, 2, 4, 4)
        x[..., 0::2, :] = x[..., 1::2, :]  # rows pairwise equal ...
        x[..., 0::2] = x[..., 1::2]  # ... and columns: 2x2 pooling loses nothing
        b = ClassAggregation(dim=8, guidance_dim=4, num_heads=2, pad_len=0, pooling_size=(1, 1))
        b.load_state_dict(a.state_dict())
        g = torch.randn(1, 2, 4)
        pooled = a(x, g)
        # bilinear upsampling of a piecewise-constant 2x2 map is smooth, so compare the means
        torch.testing.assert_close(pooled.mean((-1, -2)), b(x, g).mean((-1, -2)), atol=0.3, rtol=0)
        assert pooled.shape == x.shape

    def test_padding_tokens_change_output(self) -> None:
        a = ClassAggregation(dim=8, guidance_dim=4, num_heads=2, pad_len=6).eval()
        assert a.padding_tokens is not None
        with torch.no_grad():
            a.padding_tokens.normal_()
        x, g = torch.randn(1, 8, 2, 3, 3), torch.randn(1, 2, 4)
        out1 = a(x, g)
        a.pad_len = 0
        assert not torch.allclose(out1, a(x, g))

    def test_no_padding_parameters_without_padding(self) -> None:
        a = ClassAggregation(dim=8, guidance_dim=4, num_heads=2, pad_len=0)
        assert a.padding_tokens is None and a.padding_guidance is None

    def test_exception(self) -> None:
        a = ClassAggregation(dim=8, guidance_dim=4, num_heads=2)
        with pytest.raises(ValueError, match="guidance"):
            a(torch.randn(1, 8, 2, 3, 3), torch.randn(1, 3, 4))


class TestUpsamplingDecoder:
    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="differ"):
            UpsamplingDecoder(dim=8, dims=(4,), guidance_dims=(2, 2))
        dec = UpsamplingDecoder(dim=8, dims=(4,), guidance_dims=(2,))
        with pytest.raises(ValueError, match="guidance maps"):
            dec(torch.randn(1, 8, 2, 3, 3), [])


class TestCostVolume:
    def test_matches_cosine_similarity(self) -> None:
        f, t = torch.randn(2, 8, 3, 4), torch.randn(2, 5, 8)
        ref = F.cosine_similarity(f[:, None], t[:, :, :, None, None], dim=2)
        torch.testing.assert_close(cost_volume(f, t), ref, atol=1e-5, rtol=1e-4)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="text"):
            cost_volume(torch.randn(2, 8, 3, 4), torch.randn(5, 7))

    def test_gradcheck(self) -> None:
        f = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
        t = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(cost_volume, (f, t), fast_mode=True)

    def test_select_top_classes(self) -> None:
        c = torch.zeros(2, 4, 2, 2)
        c[0, 3, 0, 0], c[0, 1, 1, 1] = 1.0, 0.5
        c[1, 0, 0, 1], c[1, 2, 1, 0] = 0.9, 0.8
        assert select_top_classes(c, 2).tolist() == [[1, 3], [0, 2]]


class TestCostEmbedding:
    @pytest.mark.parametrize("kind", ["conv", "mlp"])
    def test_shape_and_per_class(self, kind: str) -> None:
        emb = CostEmbedding(dim=6, kind=kind)  # type: ignore[arg-type]
        c = torch.randn(2, 3, 5, 5)
        out = emb(c)
        assert out.shape == (2, 6, 3, 5, 5)
        torch.testing.assert_close(out[:, :, 2:3], emb(c[:, 2:3]))

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="kind must be"):
            CostEmbedding(dim=4, kind="rnn")  # type: ignore[arg-type]


class TestCostAggregator:
    def test_smoke(self, device: torch.device) -> None:
        agg = _tiny_aggregator().to(device)
        feats, text, taps = _inputs(device=device)
        out = agg(feats, text, taps)
        assert out.shape == (2, 3, 24, 24) and out.device.type == device.type
        assert torch.isfinite(out).all()

    @pytest.mark.parametrize(("b", "t", "h", "w"), [(1, 1, 4, 4), (2, 5, 6, 8), (3, 2, 5, 7)])
    def test_shape(self, b: int, t: int, h: int, w: int) -> None:
        agg = _tiny_aggregator().eval()
        feats, text, taps = _inputs(b, t, h, w)
        assert agg(feats, text, taps).shape == (b, t, 4 * h, 4 * w)

    def test_exception(self) -> None:
        agg = _tiny_aggregator()
        feats, text, taps = _inputs()
        with pytest.raises(ValueError, match="intermediates: expected 2 taps, got 1"):
            agg(feats, text, taps[:1])
        with pytest.raises(ValueError, match="either intermediates"):
            agg(feats, text)
        with pytest.raises(ValueError, match="text"):
            agg(feats, torch.randn(3, 9), taps)

    def test_truncation_scatters_kept_classes(self) -> None:
        agg = _tiny_aggregator(pad_len=2).eval()
        feats, _, taps = _inputs(b=1, t=5)
        text = torch.randn(5, 8)
        out = agg(feats, text, taps)
        keep = select_top_classes(cost_volume(feats, text), 2)[0]
        dropped = [i for i in range(5) if i not in keep.tolist()]
        assert (out[0, dropped] == -100).all()
        torch.testing.assert_close(out[:, keep], agg(feats, text[keep], taps), atol=1e-5, rtol=1e-4)

    def test_decoder_guidance_override_equals_taps(self) -> None:
        agg = _tiny_aggregator().eval()
        feats, text, taps = _inputs()
        ref = agg(feats, text, taps)
        torch.testing.assert_close(agg(feats, text, decoder_guidance=agg.upsample_taps(taps)), ref)
        torch.testing.assert_close(agg(feats, text, taps, appearance=feats), ref)

    def test_grad_flow(self) -> None:
        agg = _tiny_aggregator(pad_len=6).train()
        feats, text, taps = _inputs(t=3)
        agg(feats, text, taps).square().mean().backward()
        for name, p in agg.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name

    def test_compile(self) -> None:
        # the whole aggregator takes ~30 s to trace on CPU; compile its two attention layers
        blk = GuidedSwinBlock(dim=8, guidance_dim=4, num_heads=2, window_size=4, shift=2)
        x, g = torch.randn(2, 8, 6, 7), torch.randn(2, 4, 6, 7)
        compiled = torch.compile(blk, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x, g), blk(x, g))
        cls = ClassAggregation(dim=8, guidance_dim=4, num_heads=2, pad_len=5).eval()
        xc, gc = torch.randn(2, 8, 3, 4, 4), torch.randn(2, 3, 4)
        compiled_cls = torch.compile(cls, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled_cls(xc, gc), cls(xc, gc))

    @given(st.data())
    def test_class_permutation_equivariance(self, data: st.DataObject) -> None:
        t = data.draw(st.integers(1, 5))
        perm = torch.tensor(data.draw(st.permutations(list(range(t)))))
        torch.manual_seed(data.draw(st.integers(0, 1000)))
        feats, text, taps = _inputs(b=1, t=t)
        out = _EQUIV_AGG(feats, text, taps)
        torch.testing.assert_close(
            _EQUIV_AGG(feats, text[perm], taps), out[:, perm], atol=1e-4, rtol=1e-4
        )


torch.manual_seed(0)
_EQUIV_AGG = _tiny_aggregator().eval()


class TestSlidingWindow:
    def test_constant_image_pointwise_fn(self) -> None:
        conv = torch.nn.Conv2d(3, 2, 1)
        img = torch.full((1, 3, 40, 30), 0.3)
        with torch.no_grad():
            out = sliding_window_inference(conv, img, window=32, stride=16, size=64)
            ref = conv(img[:, :, :1, :1]).sigmoid()
        assert out.shape == (1, 2, 40, 30)
        torch.testing.assert_close(out, ref.expand_as(out), atol=1e-5, rtol=1e-4)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="multiple of stride"):
            sliding_window_inference(
                lambda x: x, torch.rand(1, 3, 8, 8), window=5, stride=2, size=8
            )
