from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from scipy.ndimage import distance_transform_edt
from skimage.morphology import skeletonize

from samkit.modules.tspp import (
    TextGuidedSparsePointPrompter,
    expected_points,
    grid_points,
    masks_from_labels,
    sample_points,
    tspp_targets,
)


def _reference_targets(mask: np.ndarray, g_p: float, m_p: int) -> np.ndarray:
    """Eq. 3-5 for one grid-resolution mask, written out directly (no capping needed here)."""
    d = distance_transform_edt(~skeletonize(mask))
    sigma = d[mask].max() / 3
    w = np.exp(-(d**2) / (2 * sigma**2)) * mask
    p_k = min(math.ceil(mask.sum() / g_p), m_p)
    return w * p_k / w.sum()


class TestTSPPTargets:
    def test_matches_equations(self) -> None:
        mask = np.zeros((16, 16), dtype=bool)
        mask[2:9, 3:14] = True  # a 7 x 11 rectangle: 77 cells, P_k = min(16, 10) = 10
        t = tspp_targets(torch.from_numpy(mask)[None, None], grid=16)
        ref = _reference_targets(mask, 5, 10)
        assert ref.max() < 1  # no capping in this case
        np.testing.assert_allclose(t[0].numpy(), ref, atol=1e-6)
        assert t.sum().item() == pytest.approx(10.0, abs=1e-4)

    def test_resizes_to_grid(self) -> None:
        m = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
        m[0, 0, 8:24, 8:24] = True  # 4 x 4 cells at grid 16 -> P_k = ceil(16 / 5) = 4
        t = tspp_targets(m, grid=16)
        assert t.shape == (1, 16, 16)
        assert t.sum().item() == pytest.approx(4.0, abs=1e-4)
        assert (t[0, 2:6, 2:6] > 0).all() and t[0, :2].sum() == 0

    def test_degenerate_masks(self) -> None:
        m = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
        m[0, 0, 3, 3] = True  # single cell: sigma = 0, P_k = 1 -> p = 1
        m[0, 1, 6, :] = True  # one-cell-wide line: it is its own skeleton
        t = tspp_targets(m, grid=8, return_per_mask=True)
        assert torch.isfinite(t).all()
        assert t[0, 0, 3, 3].item() == pytest.approx(1.0)
        assert t[0, 1].sum().item() == pytest.approx(2.0, abs=1e-5)  # ceil(8 / 5)
        torch.testing.assert_close(t[0, 1, 6], torch.full((8,), 0.25))
        assert t[0, 2].sum() == 0  # empty mask

    def test_cap_redistributes(self) -> None:
        m = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
        m[0, 0, 2:4, 2:5] = True  # 6 cells and P_k = 6: the Gaussian weights would put more
        t = tspp_targets(m, grid=8, g_p=1, m_p=6)  # than 1 on the skeleton; capping fills all
        torch.testing.assert_close(t[0, 2:4, 2:5], torch.ones(2, 3))

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="expected 4 dims"):
            tspp_targets(torch.zeros(2, 8, 8, dtype=torch.bool))
        with pytest.raises(ValueError, match="g_p: expected a number > 0, got 0"):
            tspp_targets(torch.zeros(1, 1, 8, 8, dtype=torch.bool), g_p=0)

    def test_device(self, device: torch.device) -> None:
        m = torch.zeros(1, 1, 16, 16, dtype=torch.bool, device=device)
        m[..., 4:12, 4:12] = True
        assert tspp_targets(m, grid=8).device.type == device.type

    @given(st.data())
    def test_sums_to_p_k_and_vanishes_outside(self, data: st.DataObject) -> None:
        rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
        k = data.draw(st.integers(1, 4))
        labels = rng.integers(0, k + 1, size=(1, 4, 4)).repeat(4, 1).repeat(4, 2)  # 16x16 blobs
        labels = torch.from_numpy(labels)
        masks = masks_from_labels(labels, k)  # label k is in no mask
        g_p, m_p = data.draw(st.sampled_from([1.0, 3.0, 5.0])), data.draw(st.integers(1, 10))
        t = tspp_targets(masks, grid=16, g_p=g_p, m_p=m_p, return_per_mask=True)
        area = masks.flatten(2).sum(-1).double()
        p_k = torch.clamp(torch.ceil(area / g_p), max=m_p)
        torch.testing.assert_close(t.flatten(2).sum(-1).double(), p_k, atol=1e-4, rtol=1e-5)
        assert (t[~masks] == 0).all() and (t <= 1).all() and (t >= 0).all()


class TestSamplePoints:
    def test_frame_and_order(self) -> None:
        prob = torch.zeros(1, 4, 4)
        prob[0, 3, 1] = prob[0, 0, 2] = 1.0
        pts, valid = sample_points(prob, (80, 160))
        assert valid.all()
        # cell (0, 2) first (row-major); x = (2.5 / 4) * 160, y = (0.5 / 4) * 80
        assert pts[0].tolist() == [[100.0, 10.0], [60.0, 70.0]]

    def test_seeded_and_frequency(self) -> None:
        prob = torch.full((1, 32, 32), 0.1)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        a, va = sample_points(prob, (64, 64), generator=g1)
        b, vb = sample_points(prob, (64, 64), generator=g2)
        assert torch.equal(a, b) and torch.equal(va, vb)
        assert 60 < int(va.sum()) < 150  # Binomial(1024, 0.1): mean 102, sd 9.6

    def test_deterministic_mode(self) -> None:
        prob = torch.zeros(2, 6, 6)
        prob[0, 1, 1] = 0.9
        prob[0, 4, 4] = 0.3  # isolated peak above min_peak
        prob[1] = 0.05  # flat and below min_peak: nothing
        pts, valid = sample_points(prob, (6, 6), deterministic=True)
        assert valid.tolist() == [[True, True], [False, False]]
        assert pts[0].tolist() == [[1.5, 1.5], [4.5, 4.5]]
        assert (pts[1] == 0).all()

    def test_empty(self) -> None:
        pts, valid = sample_points(torch.zeros(2, 4, 4), (8, 8))
        assert pts.shape == (2, 0, 2) and valid.shape == (2, 0)

    def test_grid_points_match_segment_anything(self) -> None:
        from segment_anything.utils.amg import build_point_grid

        ref = torch.from_numpy(build_point_grid(8)).float() * torch.tensor([96.0, 64.0])
        torch.testing.assert_close(grid_points(8, (64, 96)), ref)

    def test_expected_points(self) -> None:
        assert expected_points(torch.full((2, 4, 4), 0.25)).tolist() == [4.0, 4.0]

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="prob"):
            sample_points(torch.zeros(1, 4, 5), (8, 8))


class TestTextGuidedSparsePointPrompter:
    def test_smoke(self, device: torch.device) -> None:
        tspp = TextGuidedSparsePointPrompter(dim=8, num_heads=2, grid=8).to(device)
        out = tspp(torch.randn(2, 3, 5, 5, device=device))
        assert out.prob.shape == (2, 8, 8) and out.prob_logits.shape == (2, 3, 8, 8)
        assert out.mask_logits.shape == (2, 3, 5, 5) and out.prob.device.type == device.type
        assert ((out.prob >= 0) & (out.prob <= 1)).all()
        assert (out.text_masks.sum(1) == 1).all()  # one class per location

    def test_stop_gradient(self) -> None:
        tspp = TextGuidedSparsePointPrompter(dim=8, num_heads=2, grid=8)
        cost = torch.randn(1, 2, 4, 4, requires_grad=True)
        out = tspp(cost)
        (out.prob.sum() + out.mask_logits.sum()).backward()
        assert cost.grad is None
        for name, p in tspp.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name

    def test_input_standardisation(self) -> None:
        tspp = TextGuidedSparsePointPrompter(dim=8, num_heads=2, grid=8, normalize_input=True)
        tspp.eval()
        cost = torch.randn(2, 3, 4, 4)
        torch.testing.assert_close(tspp(3 * cost + 1).prob, tspp(cost).prob, atol=1e-5, rtol=1e-4)
        tspp.normalize_input = False
        assert not torch.allclose(tspp(3 * cost + 1).prob, tspp(cost).prob)

    def test_text_gradient_option(self) -> None:
        tspp = TextGuidedSparsePointPrompter(dim=8, num_heads=2, grid=8, detach_input=False)
        cost = torch.randn(1, 2, 4, 4, requires_grad=True)
        tspp(cost).mask_logits.sum().backward()
        assert cost.grad is not None and torch.isfinite(cost.grad).all()

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="reduction"):
            TextGuidedSparsePointPrompter(reduction="sum")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="cost"):
            TextGuidedSparsePointPrompter(dim=8, num_heads=2)(torch.randn(2, 3, 4))

    def test_compile(self) -> None:
        tspp = TextGuidedSparsePointPrompter(dim=8, num_heads=2, grid=8).eval()
        x = torch.randn(1, 3, 4, 4)
        compiled = torch.compile(tspp, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x).prob, tspp(x).prob)

    @given(st.data())
    def test_class_permutation(self, data: st.DataObject) -> None:
        t = data.draw(st.integers(1, 5))
        perm = torch.tensor(data.draw(st.permutations(list(range(t)))))
        torch.manual_seed(data.draw(st.integers(0, 1000)))
        cost = torch.randn(2, t, 4, 5)
        a, b = _TSPP(cost), _TSPP(cost[:, perm])
        torch.testing.assert_close(b.mask_logits, a.mask_logits[:, perm], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b.prob_logits, a.prob_logits[:, perm], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b.prob, a.prob, atol=1e-5, rtol=1e-4)
        assert torch.equal(b.text_masks, a.text_masks[:, perm])


torch.manual_seed(0)
_TSPP = TextGuidedSparsePointPrompter(dim=8, num_heads=2, grid=6).eval()


def _reference_forward(
    m: TextGuidedSparsePointPrompter, cost: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The straightforward forward: every class and location at once, attention through
    `nn.MultiheadAttention` itself, the probability head after resampling the features."""
    b, t, h, w = cost.shape
    x = m.mlp(cost.reshape(b * t, 1, h, w))
    tok = x.reshape(b, t, -1, h * w).permute(0, 3, 1, 2).reshape(b * h * w, t, -1)
    z = m.norm(tok)
    tok = tok + m.class_attn(z, z, z, need_weights=False)[0]
    x = tok.reshape(b, h * w, t, -1).permute(0, 2, 3, 1).reshape(b * t, -1, h, w)
    x = x + m.spatial(x)
    mask_logits = m.mask_head(x.permute(0, 2, 3, 1))[..., 0].reshape(b, t, h, w)
    xg = F.interpolate(x, size=(m.grid, m.grid), mode="bilinear", align_corners=False)
    prob_logits = m.prob_head(xg.permute(0, 2, 3, 1))[..., 0].reshape(b, t, m.grid, m.grid)
    return mask_logits, prob_logits, prob_logits.amax(dim=1).sigmoid()


class TestChunkedForward:
    """The chunked forward (bounded memory at large T) equals the unchunked formula."""

    @pytest.mark.parametrize(
        "chunk", [1, 2000, 1 << 30]
    )  # 1 class or location per chunk, 3 or 5, all
    @pytest.mark.parametrize(("t", "h", "w", "grid"), [(5, 6, 7, 8), (3, 9, 9, 4)])
    def test_matches_reference_and_gradients(
        self, chunk: int, t: int, h: int, w: int, grid: int
    ) -> None:
        torch.manual_seed(3)
        tspp = TextGuidedSparsePointPrompter(
            dim=8, num_heads=2, grid=grid, detach_input=False, max_chunk_elems=chunk
        )
        cost = torch.randn(2, t, h, w, dtype=torch.float64, requires_grad=True)
        tspp.double()
        out = tspp(cost)
        ref = _reference_forward(tspp, cost)
        for got, want in zip((out.mask_logits, out.prob_logits, out.prob), ref, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        weights = torch.randn_like(out.mask_logits), torch.randn_like(out.prob)
        loss = (out.mask_logits * weights[0]).sum() + (out.prob * weights[1]).sum()
        ref_loss = (ref[0] * weights[0]).sum() + (ref[2] * weights[1]).sum()
        params = [cost, *tspp.parameters()]
        got_grads = torch.autograd.grad(loss, params)
        want_grads = torch.autograd.grad(ref_loss, params)
        for p, a, b in zip(
            ["cost"] + [n for n, _ in tspp.named_parameters()], got_grads, want_grads, strict=True
        ):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=p)

    def test_bounded_allocations(self) -> None:
        # attention weights of all 64 locations at once would take 64 x 2 x 300^2 x 4 B = 46 MB;
        # the chunked forward allocates nothing above a few times S_en (300 x 16 x 64 x 4 B)
        from torch.profiler import ProfilerActivity, profile

        torch.manual_seed(5)
        tspp = TextGuidedSparsePointPrompter(dim=16, num_heads=2, grid=8, max_chunk_elems=1 << 16)
        cost = torch.randn(1, 300, 8, 8)
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
            tspp.eval()(cost)
        largest = max(e.cpu_memory_usage for e in p.events())
        assert largest <= 300 * 16 * 64 * 4

    def test_eval_float32_matches_reference(self) -> None:
        # eval + no_grad takes nn.MultiheadAttention's fused fast path in the reference
        torch.manual_seed(4)
        tspp = TextGuidedSparsePointPrompter(dim=16, num_heads=4, grid=8, max_chunk_elems=64)
        tspp.eval()
        cost = torch.randn(1, 40, 6, 6)
        with torch.no_grad():
            out = tspp(cost)
            ref = _reference_forward(tspp, cost)
        for got, want in zip((out.mask_logits, out.prob_logits, out.prob), ref, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


class TestInputContract:
    """Regression tests of issue #11 item 5 (each failed on f8b78a2)."""

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
    def test_float_dtypes(self, dtype: torch.dtype) -> None:
        # before: float64 costs crashed inside the first convolution (dtype mismatch)
        tspp = TextGuidedSparsePointPrompter(dim=16, num_heads=2, grid=8).eval()
        cost = torch.randn(2, 3, 6, 6)
        want = tspp(cost)
        got = tspp(cost.to(dtype))
        assert got.prob.dtype == torch.float32
        atol = 1e-5 if dtype == torch.float64 else 2e-2
        torch.testing.assert_close(got.prob, want.prob, atol=atol, rtol=0)
        torch.testing.assert_close(got.mask_logits, want.mask_logits, atol=atol * 10, rtol=0)

    def test_empty_batch(self) -> None:
        tspp = TextGuidedSparsePointPrompter(dim=16, num_heads=2, grid=8).eval()
        out = tspp(torch.zeros(0, 3, 6, 6))
        assert out.prob.shape == (0, 8, 8) and out.prob_logits.shape == (0, 3, 8, 8)
        assert out.mask_logits.shape == (0, 3, 6, 6) and out.text_masks.shape == (0, 3, 6, 6)
        assert tspp_targets(torch.zeros(0, 2, 32, 32, dtype=torch.bool), grid=8).shape == (0, 8, 8)
        points, valid = sample_points(out.prob, (64, 64))
        assert points.shape == (0, 0, 2) and valid.shape == (0, 0)

    def test_invalid(self) -> None:
        tspp = TextGuidedSparsePointPrompter(dim=16, num_heads=2, grid=8)
        with pytest.raises(ValueError, match=r"^cost: expected at least one class \(T >= 1\)"):
            tspp(torch.zeros(1, 0, 6, 6))
        soft = torch.full((1, 1, 16, 16), 0.5)
        with pytest.raises(ValueError, match=r"^gt_masks: expected a binary mask.*got value 0\.5"):
            tspp_targets(soft, grid=8)
        with pytest.raises(ValueError, match=r"^grid: expected an int >= 1, got 0"):
            tspp_targets(soft > 0, grid=0)
        with pytest.raises(ValueError, match=r"^grid: expected an int >= 1, got -2"):
            grid_points(-2, (64, 64))
        with pytest.raises(ValueError, match=r"^grid: expected an int >= 1, got 0"):
            TextGuidedSparsePointPrompter(grid=0)
        with pytest.raises(ValueError, match=r"^prob: expected probabilities in \[0, 1\]"):
            sample_points(torch.full((1, 4, 4), 1.5), (64, 64))
        with pytest.raises(ValueError, match=r"^num_classes: expected an int >= 1, got 0"):
            masks_from_labels(torch.zeros(1, 4, 4, dtype=torch.long), 0)
