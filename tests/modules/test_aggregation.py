from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from samkit.modules.aggregation import (
    ShallowMaskAggregator,
    mask_text_overlap,
    match_masks_to_text,
    pad_masks,
    point_masks,
    shallow_mask_aggregation,
)
from samkit.types import ImageEmbedding, MaskPrediction


def _naive_overlap(sam: torch.Tensor, text: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 6 at pixel level: upsample the text masks and intersect N_s x K x H x W."""
    up = F.interpolate(text[None].float(), size=sam.shape[-2:], mode="nearest")[0].bool()
    inter = (sam[:, None] & up[None]).flatten(2).sum(-1).float()
    return inter / (sam.flatten(1).sum(-1, keepdim=True).float() + eps)


def _naive_aggregation(sam: torch.Tensor, text: torch.Tensor, alpha: float) -> list[torch.Tensor]:
    o = _naive_overlap(sam, text)
    out = []
    for k in range(text.shape[0]):
        members = o[:, k] > alpha
        if members.any():
            out.append(sam[members].any(0))
    joined = (o > alpha).any(1)
    out += [m for m, j in zip(sam, joined, strict=True) if not j]
    return [m for m in out if m.any()]


def _random_case(seed: int, n: int, k: int, size: int = 16, grid: int = 4):
    g = torch.Generator().manual_seed(seed)
    sam = torch.rand(n, size // 2, size // 2, generator=g) > 0.6
    sam = sam.repeat_interleave(2, 1).repeat_interleave(2, 2)
    labels = torch.randint(0, k, (grid, grid), generator=g)
    text = F.one_hot(labels, k).permute(2, 0, 1).bool()
    return sam, text


def _as_set(masks: torch.Tensor) -> set[bytes]:
    return {m.numpy().tobytes() for m in masks}


class TestOverlap:
    @pytest.mark.parametrize(("size", "grid"), [(16, 4), (15, 4), (13, 5)])
    def test_matches_pixel_level_formula(self, size: int, grid: int) -> None:
        g = torch.Generator().manual_seed(0)
        sam = torch.rand(5, size, size, generator=g) > 0.5
        text = torch.rand(3, grid, grid, generator=g) > 0.5
        torch.testing.assert_close(mask_text_overlap(sam, text), _naive_overlap(sam, text))

    @pytest.mark.parametrize(
        ("shape", "grid"),
        [
            ((32, 64), (4, 8)),  # cells tile the image; 8-byte words
            ((20, 36), (5, 6)),  # 4-byte words
            ((18, 22), (4, 5)),  # 2-byte words, rows and columns not tiled
            ((17, 13), (3, 4)),  # odd width: 1-byte words
            ((510, 16), (2, 2)),  # 255-row cells: the largest count a byte holds
            ((512, 16), (2, 2)),  # 256-row cells: one more than a byte holds, float fallback
            ((600, 8), (2, 3)),  # 300-row untiled cells: float fallback
        ],
    )
    @pytest.mark.parametrize("fill", [0.5, 1.0])
    def test_packed_counts_match_pixel_level_formula(
        self, shape: tuple[int, int], grid: tuple[int, int], fill: float, device: torch.device
    ) -> None:
        # the byte-packed pooling must be exact for every word size, for tiled and untiled
        # grids, and at full masks (where a byte reaches its largest count)
        g = torch.Generator().manual_seed(1)
        sam = torch.rand(4, *shape, generator=g) < fill
        sam[:, -1] = False  # cells of unequal counts, so a wrong count changes the ratios
        text = torch.rand(3, *grid, generator=g) > 0.4
        got = mask_text_overlap(sam.to(device), text.to(device)).cpu()
        torch.testing.assert_close(got, _naive_overlap(sam, text), atol=1e-5, rtol=0)

    def test_non_contiguous_masks(self) -> None:
        g = torch.Generator().manual_seed(2)
        sam = (torch.rand(16, 3, 24, generator=g) > 0.5).permute(1, 0, 2)  # (3, 16, 24) strided
        text = torch.rand(2, 4, 6, generator=g) > 0.5
        torch.testing.assert_close(mask_text_overlap(sam, text), _naive_overlap(sam, text))

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="text_masks: expected a grid no finer than"):
            mask_text_overlap(torch.zeros(2, 4, 4), torch.zeros(1, 8, 8))
        with pytest.raises(ValueError, match="sam_masks"):
            mask_text_overlap(torch.zeros(4, 4), torch.zeros(1, 2, 2))

    def test_empty_inputs(self) -> None:
        assert mask_text_overlap(torch.zeros(0, 8, 8), torch.ones(2, 2, 2)).shape == (0, 2)
        assert match_masks_to_text(torch.ones(2, 8, 8), torch.ones(0, 2, 2)).tolist() == [-1, -1]
        empty = torch.zeros(2, 8, 8, dtype=torch.bool)
        assert match_masks_to_text(empty, torch.ones(1, 2, 2).bool()).tolist() == [-1, -1]

    def test_device(self, device: torch.device) -> None:
        sam = torch.ones(2, 8, 8, dtype=torch.bool, device=device)
        assert mask_text_overlap(sam, torch.ones(1, 2, 2, device=device)).device.type == device.type


class TestShallowMaskAggregation:
    def test_hand_case(self) -> None:
        sam = torch.zeros(4, 4, 4, dtype=torch.bool)
        sam[0, :2, :2] = True  # inside text 0
        sam[1, 2:, :2] = True  # inside text 0
        sam[2, :, 2:] = True  # half text 1, half nothing -> O = 0.5, not > 0.5
        sam[3, 0, 3] = True  # inside text 1
        text = torch.zeros(2, 2, 2, dtype=torch.bool)
        text[0, :, 0] = True
        text[1, 0, 1] = True
        out, index = shallow_mask_aggregation(sam, text, return_index=True)
        assert out.shape == (3, 4, 4)
        assert torch.equal(out[0], sam[0] | sam[1])
        assert torch.equal(out[1], sam[3])
        assert torch.equal(out[2], sam[2])
        assert index.tolist() == [0, 0, 2, 1]

    def test_alpha(self) -> None:
        sam = torch.zeros(1, 4, 4, dtype=torch.bool)
        sam[0, :, :3] = True  # 2/3 in text 0
        text = torch.zeros(1, 2, 2, dtype=torch.bool)
        text[0, :, 0] = True
        assert match_masks_to_text(sam, text, alpha=0.6).item() == 0
        assert match_masks_to_text(sam, text, alpha=0.7).item() == -1

    def test_drops_empty(self) -> None:
        sam = torch.zeros(2, 4, 4, dtype=torch.bool)
        sam[1, 0, 0] = True
        out, index = shallow_mask_aggregation(sam, torch.zeros(1, 2, 2).bool(), return_index=True)
        assert out.shape == (1, 4, 4) and index.tolist() == [-1, 0]

    @given(st.data())
    def test_matches_naive_and_keeps_every_mask(self, data: st.DataObject) -> None:
        n, k = data.draw(st.integers(0, 6)), data.draw(st.integers(1, 4))
        sam, text = _random_case(data.draw(st.integers(0, 2**16)), n, k)
        out, index = shallow_mask_aggregation(sam, text, return_index=True)
        naive = _naive_aggregation(sam, text, 0.5)
        assert _as_set(out) == {m.numpy().tobytes() for m in naive} and len(out) == len(naive)
        assert out.shape[0] <= n
        for i in range(n):  # every non-empty SAM mask lies inside exactly its assigned output
            if sam[i].any():
                assert index[i] >= 0 and not (sam[i] & ~out[index[i]]).any()
            else:
                assert index[i] == -1

    @given(st.data())
    def test_invariant_to_sam_mask_order(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, 6))
        sam, text = _random_case(data.draw(st.integers(0, 2**16)), n, 3)
        perm = torch.tensor(data.draw(st.permutations(list(range(n)))))
        a = shallow_mask_aggregation(sam, text)
        b = shallow_mask_aggregation(sam[perm], text)
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        assert _as_set(a) == _as_set(b) and a.shape == b.shape


class TestShallowMaskAggregator:
    def test_module_matches_functional(self) -> None:
        sam0, text0 = _random_case(1, 4, 3)
        sam1, text1 = _random_case(2, 4, 3)
        out = ShallowMaskAggregator()(torch.stack([sam0, sam1]), torch.stack([text0, text1]))
        for i, (s, t) in enumerate([(sam0, text0), (sam1, text1)]):
            ref = shallow_mask_aggregation(s, t)
            assert isinstance(ref, torch.Tensor)
            assert torch.equal(out[i, : ref.shape[0]], ref)
            assert not out[i, ref.shape[0] :].any()

    @given(st.data())
    def test_module_matches_naive(self, data: st.DataObject) -> None:
        # the batched path (in-place unions into one padded tensor) equals eq. 6-7 at pixel level
        k = data.draw(st.integers(1, 4))
        cases = [
            _random_case(data.draw(st.integers(0, 2**16)), data.draw(st.integers(0, 5)), k)
            for _ in range(data.draw(st.integers(1, 3)))
        ]
        n = max(s.shape[0] for s, _ in cases)
        sam = torch.zeros(len(cases), n, 16, 16, dtype=torch.bool)
        for i, (s, _) in enumerate(cases):
            sam[i, : s.shape[0]] = s
        out = ShallowMaskAggregator()(sam, torch.stack([t for _, t in cases]))
        for i, (s, t) in enumerate(cases):
            naive = _naive_aggregation(s, t, 0.5)
            assert _as_set(out[i, : len(naive)]) == {m.numpy().tobytes() for m in naive}
            assert not out[i, len(naive) :].any()

    def test_allocates_no_more_than_its_output(self) -> None:
        # the fast path must not form N_s x K x H x W (here 262 MB) nor a float copy of the
        # masks (10 MB): no single allocation exceeds the bool output (2.6 MB)
        from torch.profiler import ProfilerActivity, profile

        g = torch.Generator().manual_seed(0)
        sam = torch.rand(1, 40, 256, 256, generator=g) > 0.5
        labels = torch.randint(0, 100, (16, 16), generator=g)
        text = F.one_hot(labels, 100).permute(2, 0, 1)[None].bool()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = ShallowMaskAggregator()(sam, text)
        largest = max(e.cpu_memory_usage for e in prof.events())
        assert out.shape[1] == 40 and largest <= out.numel()

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="text_masks"):
            ShallowMaskAggregator()(torch.zeros(2, 3, 8, 8), torch.zeros(1, 2, 2, 2))

    def test_pad_masks(self) -> None:
        out = pad_masks([torch.ones(1, 2, 2, dtype=torch.bool), torch.ones(3, 2, 2).bool()])
        assert out.shape == (2, 3, 2, 2) and out.sum().item() == 16
        with pytest.raises(ValueError, match="at least one"):
            pad_masks([])


class _RampSam:
    """A SamLike stand-in: candidate 1 (the best IoU) is the ramp `x_in - 20` in the SAM frame."""

    img_size = 64
    mask_threshold = 0.0

    def predict_points(self, embedding, points, *, batch_size=64, multimask=True):  # type: ignore[no-untyped-def]
        b, n = points.shape[:2]
        u = (torch.arange(16) + 0.5) * 4  # low-res pixel centres in the padded 64 frame
        ramp = (u - 20).expand(16, 16)
        low = torch.stack([-ramp, ramp, -ramp]).expand(b, n, 3, 16, 16)
        iou = torch.tensor([0.1, 0.9, 0.5]).expand(b, n, 3)
        return MaskPrediction(low_res_logits=low, iou_scores=iou)


class TestPointMasks:
    def test_geometry_and_best_candidate(self) -> None:
        emb = ImageEmbedding(torch.zeros(1, 1, 4, 4), input_size=(32, 64), original_size=(50, 100))
        pts, valid = torch.zeros(1, 2, 2), torch.tensor([[True, False]])
        masks = point_masks(_RampSam(), emb, pts, valid, size=(50, 100))
        # x_in = 20 is x = 31.25 in the original frame: pixel centres 31.5 and up are inside
        expected = (torch.arange(100) >= 31).expand(50, 100)
        assert torch.equal(masks[0, 0], expected)
        assert not masks[0, 1].any()

    def test_close_to_backbone_postprocess(self, tiny_sam) -> None:  # type: ignore[no-untyped-def]
        with torch.no_grad():
            emb = tiny_sam.encode(torch.rand(2, 3, 64, 96))
            pts = torch.tensor([[[30.0, 20.0], [100.0, 60.0]], [[10.0, 10.0], [0.0, 0.0]]])
            valid = torch.tensor([[True, True], [True, False]])
            masks = point_masks(tiny_sam, emb, pts, valid, size=(64, 96))
            pred = tiny_sam.predict_points(emb, pts, multimask=True).best()
            ref = tiny_sam.postprocess_masks(pred.low_res_logits[:, :, 0], emb.input_size, (64, 96))
        assert masks.shape == (2, 2, 64, 96) and masks.dtype == torch.bool
        assert not masks[1, 1].any()
        # random-weight logits are ~0.01 in size, so the two interpolation orders flip a few
        # near-zero pixels; the geometry itself is pinned by the ramp test above
        assert (masks[valid] == (ref[valid] > 0)).float().mean() > 0.9

    def test_no_points(self, tiny_sam) -> None:  # type: ignore[no-untyped-def]
        with torch.no_grad():
            emb = tiny_sam.encode(torch.rand(1, 3, 32, 32))
        out = point_masks(
            tiny_sam, emb, torch.zeros(1, 0, 2), torch.zeros(1, 0).bool(), size=(8, 8)
        )
        assert out.shape == (1, 0, 8, 8)


class TestInputContract:
    """Regression tests of issue #11 item 5 (each failed on f8b78a2)."""

    def test_grid_mismatch_names_the_argument(self) -> None:
        sam = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
        text = torch.zeros(1, 2, 16, 4, dtype=torch.bool)
        with pytest.raises(ValueError, match=r"^text_masks: expected a grid no finer than"):
            ShallowMaskAggregator()(sam, text)

    def test_non_binary_masks(self) -> None:
        # before: soft masks were silently counted as fractional pixels
        sam = torch.full((2, 8, 8), 0.5)
        text = torch.ones(1, 2, 2, dtype=torch.bool)
        with pytest.raises(ValueError, match=r"^sam_masks: expected a binary mask"):
            shallow_mask_aggregation(sam, text)
        with pytest.raises(ValueError, match=r"^text_masks: expected a binary mask"):
            shallow_mask_aggregation(sam > 0, text * 0.3)

    def test_alpha_is_a_probability(self) -> None:
        with pytest.raises(ValueError, match=r"^alpha: expected a number in \[0, 1\], got 1\.5"):
            ShallowMaskAggregator(alpha=1.5)

    def test_empty_batch(self) -> None:
        # before: pad_masks raised "expected at least one image"
        out = ShallowMaskAggregator()(
            torch.zeros(0, 3, 8, 8, dtype=torch.bool), torch.zeros(0, 2, 2, 2, dtype=torch.bool)
        )
        assert out.shape == (0, 0, 8, 8) and out.dtype == torch.bool

    def test_pad_masks_size_mismatch(self) -> None:
        with pytest.raises(ValueError, match=r"^masks\[1\]: expected shape \(N, H, W\) with H=4"):
            pad_masks(
                [torch.ones(1, 4, 4, dtype=torch.bool), torch.ones(1, 5, 4, dtype=torch.bool)]
            )
