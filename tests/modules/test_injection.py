from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit.modules.injection import (
    DecoupledMaskInjection,
    HighFrequencyInjection,
    LowFrequencyInjection,
    boundary_encoding,
    resize_masks,
)


def _masks(b: int = 2, m: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, m, size // 4, size // 4, generator=g) > 0.5
    return coarse.repeat_interleave(4, 2).repeat_interleave(4, 3)  # aligned with a 4x4 grid


class TestLowFrequencyInjection:
    def test_intra_mask_context_eq_8_9(self) -> None:
        low = LowFrequencyInjection(dim=8, num_heads=2)
        with torch.no_grad():  # switch off the cross-attention branch
            low.proj.weight.zero_()
            low.proj.bias.zero_()
        feats, masks = torch.randn(2, 8, 4, 4), _masks()
        out = low(feats, masks)
        m = masks[:, :, ::4, ::4].float()  # the masks on the 4x4 feature grid
        ref = feats.clone()
        for b in range(2):
            for k in range(3):
                if m[b, k].sum() > 0:
                    pooled = (feats[b] * m[b, k]).sum((1, 2)) / m[b, k].sum()
                    ref[b] += pooled[:, None, None] * m[b, k]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)

    def test_cross_attention_eq_10_matches_torch_mha(self) -> None:
        low = LowFrequencyInjection(dim=8, num_heads=2)
        feats, masks = torch.randn(2, 8, 4, 4), _masks()
        masks[1, 2] = False  # a zero-area (padding) mask
        soft = resize_masks(masks, (4, 4))
        pooled, area = low.mask_pool(feats, soft)
        intra = feats + torch.einsum("bmhw,bmd->bdhw", soft, pooled)
        mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.cat([low.q.weight, low.k.weight, low.v.weight]))
            mha.in_proj_bias.copy_(torch.cat([low.q.bias, low.k.bias, low.v.bias]))
            mha.out_proj.weight.copy_(low.proj.weight)
            mha.out_proj.bias.copy_(low.proj.bias)
        q = intra.flatten(2).transpose(1, 2)
        inter = mha(q, pooled, pooled, key_padding_mask=area <= 0, need_weights=False)[0]
        ref = intra + inter.transpose(1, 2).reshape(2, 8, 4, 4)
        torch.testing.assert_close(low(feats, masks), ref, atol=1e-5, rtol=1e-4)

    def test_no_masks_is_identity_and_finite(self) -> None:
        low = LowFrequencyInjection(dim=8, num_heads=2)
        feats = torch.randn(2, 8, 4, 4, requires_grad=True)
        for masks in (
            torch.zeros(2, 0, 16, 16, dtype=torch.bool),
            torch.zeros(2, 3, 16, 16).bool(),
        ):
            out = low(feats, masks)
            torch.testing.assert_close(out, feats)
            out.sum().backward()
            assert torch.isfinite(feats.grad).all()  # type: ignore[arg-type]

    def test_padding_masks_do_not_matter(self) -> None:
        low = LowFrequencyInjection(dim=8, num_heads=2)
        feats, masks = torch.randn(2, 8, 4, 4), _masks()
        padded = torch.cat([masks, torch.zeros(2, 2, 16, 16, dtype=torch.bool)], 1)
        torch.testing.assert_close(low(feats, padded), low(feats, masks), atol=1e-5, rtol=1e-4)

    def test_mask_order_invariance(self) -> None:
        low = LowFrequencyInjection(dim=8, num_heads=2)
        feats, masks = torch.randn(2, 8, 4, 4), _masks()
        perm = torch.tensor([2, 0, 1])
        torch.testing.assert_close(
            low(feats, masks[:, perm]), low(feats, masks), atol=1e-5, rtol=1e-4
        )

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="must divide"):
            LowFrequencyInjection(dim=8, num_heads=3)
        with pytest.raises(ValueError, match="masks"):
            LowFrequencyInjection(dim=8, num_heads=2)(torch.randn(2, 8, 4, 4), _masks(b=3))

    def test_gradcheck(self) -> None:
        low = LowFrequencyInjection(dim=4, num_heads=2).double()
        feats = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
        masks = torch.tensor([[[[1, 0], [1, 1]], [[0, 1], [0, 0]]]], dtype=torch.bool)
        assert torch.autograd.gradcheck(lambda f: low(f, masks), (feats,), fast_mode=True)

    def test_device_and_compile(self, device: torch.device) -> None:
        low = LowFrequencyInjection(dim=8, num_heads=2).to(device)
        feats, masks = torch.randn(2, 8, 4, 4, device=device), _masks().to(device)
        out = low(feats, masks)
        assert out.device.type == device.type
        compiled = torch.compile(low, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(feats, masks), out)


class TestHighFrequencyInjection:
    def test_gamma_and_residual(self) -> None:
        high = HighFrequencyInjection(dim=6, hidden_dim=4)
        assert torch.equal(high.gamma, torch.ones(1, 6, 1, 1))
        guide, masks = torch.randn(2, 6, 8, 8), _masks()
        with torch.no_grad():
            high.gamma.zero_()
        torch.testing.assert_close(high(guide, masks), guide)

    def test_grad_flow_and_mask_order(self) -> None:
        high = HighFrequencyInjection(dim=6, hidden_dim=4)
        guide, masks = torch.randn(2, 6, 8, 8), _masks()
        out = high(guide, masks)
        torch.testing.assert_close(high(guide, masks.flip(1)), out)
        out.square().mean().backward()
        for name, p in high.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name

    def test_masks_change_output(self) -> None:
        high = HighFrequencyInjection(dim=6, hidden_dim=4)
        guide = torch.randn(1, 6, 8, 8)
        assert not torch.allclose(high(guide, _masks(b=1)), high(guide, _masks(b=1, seed=1)))

    def test_pluggable_encoding(self) -> None:
        def coverage(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            return resize_masks(masks, size).sum(1, keepdim=True)

        high = HighFrequencyInjection(dim=6, hidden_dim=4, encoding=coverage, encoding_dim=1)
        assert high(torch.randn(2, 6, 8, 8), _masks()).shape == (2, 6, 8, 8)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="guidance"):
            HighFrequencyInjection(dim=6)(torch.randn(2, 5, 8, 8), _masks())


class TestBoundaryEncoding:
    def test_partition_edges(self) -> None:
        m = torch.zeros(1, 2, 8, 8)
        m[:, 0, :4] = 1
        m[:, 1, 4:] = 1
        enc = boundary_encoding(m, (8, 8))
        assert (
            enc[0, 1, 3:5].eq(1).all() and enc[0, 1, :3].eq(0).all() and enc[0, 1, 5:].eq(0).all()
        )
        assert enc[0, 0].eq(1).all() and enc[0, 2].eq(0.25).all()

    def test_empty(self) -> None:
        assert boundary_encoding(torch.zeros(2, 0, 8, 8), (4, 4)).eq(0).all()


class TestDecoupledMaskInjection:
    def test_switches(self) -> None:
        low = LowFrequencyInjection(dim=8, num_heads=2)
        high = [
            HighFrequencyInjection(dim=4, hidden_dim=2),
            HighFrequencyInjection(dim=2, hidden_dim=2),
        ]
        feats, taps, masks = (
            torch.randn(1, 8, 4, 4),
            [torch.randn(1, 4, 8, 8), torch.randn(1, 2, 16, 16)],
            _masks(b=1),
        )
        off = DecoupledMaskInjection(low=None, high=None)(feats, taps, masks)
        assert off.appearance is feats and all(
            a is b for a, b in zip(off.decoder_guidance, taps, strict=True)
        )
        only_low = DecoupledMaskInjection(low=low, high=None)(feats, taps, masks)
        torch.testing.assert_close(only_low.appearance, low(feats, masks))
        both = DecoupledMaskInjection(low=low, high=high)(feats, taps, masks)
        torch.testing.assert_close(both.decoder_guidance[1], high[1](taps[1], masks))
        with pytest.raises(ValueError, match="decoder_guidance: expected 2 maps, got 1"):
            DecoupledMaskInjection(low=None, high=high)(feats, taps[:1], masks)

    @given(st.data())
    def test_full_cover_mask_keeps_shape_and_finite(self, data: st.DataObject) -> None:
        b, h = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 6))
        n_pad = data.draw(st.integers(0, 2))
        masks = torch.zeros(b, 1 + n_pad, 4 * h, 4 * h, dtype=torch.bool)
        masks[:, 0] = True
        feats = torch.randn(b, 8, h, h)
        taps = [torch.randn(b, 4, 2 * h, 2 * h)]
        out = _DMI(feats, taps, masks)
        assert (
            out.appearance.shape == feats.shape and out.decoder_guidance[0].shape == taps[0].shape
        )
        assert (
            torch.isfinite(out.appearance).all() and torch.isfinite(out.decoder_guidance[0]).all()
        )


torch.manual_seed(0)
_DMI = DecoupledMaskInjection(
    low=LowFrequencyInjection(dim=8, num_heads=2),
    high=[HighFrequencyInjection(dim=4, hidden_dim=2)],
)
