from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit.matching import HungarianPatchMatcher, PartAssigner, build_patch_targets, patch_overlaps
from samkit.proposals import patches_from_masks
from samkit.types import Patches


def _brute_force_assign(
    overlaps: torch.Tensor, ious: torch.Tensor, pos: float = 0.8, neg: float = 0.5, mp: float = 0.5
) -> torch.Tensor:
    """Spec 5.1, element by element."""
    n, g = overlaps.shape
    out = torch.full((n, g), -1, dtype=torch.long)
    for p in range(n):
        for j in range(g):
            if overlaps[p, j] < neg:
                out[p, j] = 0
            if overlaps[p, j] >= pos:
                out[p, j] = 1
    step1 = out.clone()
    for j in range(g):
        best_part = max([float(ious[p, j]) for p in range(n) if step1[p, j] == 1], default=0.0)
        for p in range(n):
            if ious[p, j] > mp and ious[p, j] > best_part:
                out[p, j] = 1
    for j in range(g):
        if not any(out[p, j] == 1 for p in range(n)):
            p = int(ious[:, j].argmax())
            out[p, j] = 1 if ious[p, j] > mp else 0
    return out


class TestPartAssigner:
    @given(st.data())
    def test_matches_brute_force(self, data: st.DataObject) -> None:
        n, g = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 4))
        seed = data.draw(st.integers(0, 10_000))
        gen = torch.Generator().manual_seed(seed)
        overlaps = torch.rand(n, g, generator=gen)
        ious = torch.rand(n, g, generator=gen)
        torch.testing.assert_close(
            PartAssigner()(overlaps, ious), _brute_force_assign(overlaps, ious)
        )

    def test_empty(self) -> None:
        assert PartAssigner()(torch.zeros(0, 2), torch.zeros(0, 2)).shape == (0, 2)
        assert PartAssigner()(torch.zeros(3, 0), torch.zeros(3, 0)).shape == (3, 0)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="box_ious"):
            PartAssigner()(torch.zeros(2, 3), torch.zeros(3, 2))

    def test_overlaps_hand_computed(self) -> None:
        pm = torch.zeros(2, 4, 4, dtype=torch.bool)
        pm[0, :2, :2] = True  # inside the gt
        pm[1, :, 2:] = True  # half inside
        gm = torch.zeros(1, 4, 4, dtype=torch.bool)
        gm[0, :2, :] = True
        pb = torch.tensor([[0.0, 0, 2, 2], [2.0, 0, 4, 4]])
        gb = torch.tensor([[0.0, 0, 4, 2]])
        iop, iou = patch_overlaps(pm, pb, gm, gb)
        torch.testing.assert_close(iop, torch.tensor([[1.0], [0.5]]))
        torch.testing.assert_close(iou, torch.tensor([[0.5], [4 / 12]]))


def _brute_force_cost(matcher: HungarianPatchMatcher, cls, aff, boxes, parts, labels, gt_boxes):
    from torchvision.ops import generalized_box_iou

    q, g = aff.shape[0], parts.shape[1]
    cost = torch.zeros(q, g)
    a, gamma = matcher.alpha, matcher.gamma
    for i in range(q):
        for j in range(g):
            p = cls[i, labels[j]].sigmoid()
            c_cls = a * (1 - p) ** gamma * -torch.log(p + 1e-12) - (1 - a) * p**gamma * -torch.log(
                1 - p + 1e-12
            )
            t = parts[:, j].clamp(min=0).float()
            s = aff[i].sigmoid()
            pos = a * (1 - s) ** gamma * -torch.log(s + 1e-12)
            neg = (1 - a) * s**gamma * -torch.log(1 - s + 1e-12)
            c_aff = (pos * t + neg * (1 - t)).sum() / t.sum().clamp(min=1)
            c_dice = 1 - (2 * (s * t).sum() + 1) / (s.sum() + t.sum() + 1)
            c_box = (boxes[i] - gt_boxes[j]).abs().sum()
            c_giou = -generalized_box_iou(boxes[i : i + 1], gt_boxes[j : j + 1])[0, 0]
            cost[i, j] = 4 * c_cls + 2 * c_aff + 2 * c_dice + 2 * c_box + 2 * c_giou
    return cost


def _random_case(q: int, g: int, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    cls = torch.randn(q, 3, generator=gen)
    aff = torch.randn(q, n, generator=gen) * 3
    lo = torch.rand(q, 2, generator=gen) * 0.5
    boxes = torch.cat([lo, lo + 0.1 + torch.rand(q, 2, generator=gen) * 0.4], 1)
    parts = torch.randint(-1, 2, (n, g), generator=gen)
    labels = torch.randint(0, 3, (g,), generator=gen)
    glo = torch.rand(g, 2, generator=gen) * 0.5
    gt_boxes = torch.cat([glo, glo + 0.1 + torch.rand(g, 2, generator=gen) * 0.4], 1)
    return cls, aff, boxes, parts, labels, gt_boxes


class TestHungarianPatchMatcher:
    def test_cost_matches_brute_force(self) -> None:
        matcher = HungarianPatchMatcher()
        case = _random_case(4, 3, 5, 0)
        torch.testing.assert_close(
            matcher.cost_matrix(*case), _brute_force_cost(matcher, *case), atol=1e-4, rtol=1e-4
        )

    @given(st.data())
    def test_assignment_is_optimal(self, data: st.DataObject) -> None:
        q, g = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
        case = _random_case(q, g, 5, data.draw(st.integers(0, 10_000)))
        matcher = HungarianPatchMatcher()
        rows, cols = matcher(*case)
        cost = matcher.cost_matrix(*case)
        assert len(rows) == min(q, g) and len(set(cols.tolist())) == len(cols)
        best = min(
            sum(float(cost[r, c]) for r, c in zip(qs, range(g), strict=False))
            if q >= g
            else sum(float(cost[r, c]) for r, c in zip(range(q), qs, strict=False))
            for qs in itertools.permutations(range(max(q, g)), min(q, g))
        )
        assert float(cost[rows, cols].sum()) == pytest.approx(best, rel=1e-5, abs=1e-5)

    def test_empty(self) -> None:
        rows, cols = HungarianPatchMatcher()(*_random_case(3, 0, 4, 0))
        assert rows.numel() == cols.numel() == 0

    def test_merged_boxes_normalised(self) -> None:
        matcher = HungarianPatchMatcher()
        boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0], [4.0, 2.0, 8.0, 4.0]])
        out = matcher.merged_boxes(torch.tensor([[3.0, 3.0]]), boxes, (4, 8))
        torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


class TestBuildTargets:
    def test_parts_validity_and_stuff(self) -> None:
        seg = torch.zeros(3, 8, 8, dtype=torch.bool)
        seg[0, :4, :4] = True  # thing class 0
        seg[1, 4:, 4:] = True  # thing class 1
        seg[2] = ~(seg[0] | seg[1])  # stuff class 2
        parts = torch.zeros(5, 8, 8, dtype=torch.bool)
        parts[0, :4, :2] = True
        parts[1, :4, 2:4] = True  # two halves of thing 0
        parts[2, 4:, 4:] = True  # all of thing 1
        parts[3] = seg[2] & (torch.arange(8)[None, :] < 4)
        parts[4] = seg[2] & (torch.arange(8)[None, :] >= 4)
        t = build_patch_targets(
            patches_from_masks(parts), seg, torch.tensor([0, 1, 2]), num_things=2, num_stuff=2
        )
        assert t.thing_parts[:, 0].tolist() == [1, 1, 0, 0, 0]
        assert t.thing_parts[:, 1].tolist() == [0, 0, 1, 0, 0]
        assert t.thing_valid.tolist() == [True, True]
        assert t.thing_labels.tolist() == [0, 1]
        torch.testing.assert_close(t.thing_boxes[0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
        assert t.semantic_parts[0].tolist() == [0, 0, 0, 1, 1]
        assert t.semantic_positive.tolist() == [True, False]
        assert t.semantic_parts[1].sum() == 0

    def test_thing_without_parts_is_ignored(self) -> None:
        seg = torch.zeros(1, 8, 8, dtype=torch.bool)
        seg[0, :2, :2] = True
        parts = torch.zeros(1, 8, 8, dtype=torch.bool)
        parts[0, 4:, 4:] = True
        t = build_patch_targets(
            patches_from_masks(parts), seg, torch.tensor([0]), num_things=1, num_stuff=0
        )
        assert t.thing_valid.tolist() == [False]
        assert t.semantic_parts.shape == (0, 1)


class TestInputContract:
    def test_masks_must_be_binary(self) -> None:
        soft = torch.full((1, 4, 4), 0.5)
        hard = torch.ones(1, 4, 4, dtype=torch.bool)
        box = torch.tensor([[0.0, 0, 4, 4]])
        with pytest.raises(ValueError, match="patch_masks"):
            patch_overlaps(soft, box, hard, box)
        with pytest.raises(ValueError, match="gt_masks"):
            patch_overlaps(hard, box, soft, box)
        p = Patches(hard, box, torch.ones(1))
        with pytest.raises(ValueError, match="segment_masks"):
            build_patch_targets(p, soft, torch.tensor([0]), num_things=1, num_stuff=0)

    def test_sizes_labels_and_thresholds(self) -> None:
        p = Patches(
            torch.ones(1, 4, 4, dtype=torch.bool), torch.tensor([[0.0, 0, 4, 4]]), torch.ones(1)
        )
        seg = torch.ones(1, 4, 4, dtype=torch.bool)
        with pytest.raises(ValueError, match="segment_masks"):
            build_patch_targets(p, torch.ones(1, 4, 5, dtype=torch.bool), torch.tensor([0]),
                                num_things=1, num_stuff=0)  # fmt: skip
        with pytest.raises(ValueError, match="segment_labels"):
            build_patch_targets(p, seg, torch.tensor([2]), num_things=1, num_stuff=1)
        with pytest.raises(ValueError, match="stuff_thr"):
            build_patch_targets(p, seg, torch.tensor([0]), num_things=1, num_stuff=0, stuff_thr=2.0)
        with pytest.raises(ValueError, match="pos_thr"):
            PartAssigner(pos_thr=1.2)
        with pytest.raises(ValueError, match="alpha"):
            HungarianPatchMatcher(alpha=-0.5)

    def test_stuff_only_and_things_only_targets(self) -> None:
        m = torch.zeros(2, 8, 8, dtype=torch.bool)
        m[0, :, :4], m[1, :, 4:] = True, True
        p = Patches(m, torch.tensor([[0.0, 0, 4, 8], [4.0, 0, 8, 8]]), torch.ones(2))
        stuff = build_patch_targets(p, m, torch.tensor([0, 1]), num_things=0, num_stuff=2)
        assert stuff.thing_parts.shape == (2, 0) and stuff.semantic_parts.tolist() == [
            [1.0, 0.0],
            [0.0, 1.0],
        ]
        things = build_patch_targets(p, m, torch.tensor([0, 1]), num_things=2, num_stuff=0)
        assert things.thing_parts.tolist() == [[1, 0], [0, 1]] and things.semantic_parts.shape == (
            0,
            2,
        )


def test_patch_targets_of_an_image_without_patches() -> None:
    """A proposer can find nothing in an image; its targets are empty, not an IndexError."""
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, :4], masks[1, 4:], masks[2, :, :2] = True, True, True
    no_patches = Patches(torch.zeros(0, 8, 8, dtype=torch.bool), torch.zeros(0, 4), torch.zeros(0))
    t = build_patch_targets(no_patches, masks, torch.tensor([0, 1, 2]), num_things=2, num_stuff=1)
    assert t.thing_parts.shape == (0, 2) and t.semantic_parts.shape == (1, 0)
    assert not t.thing_valid.any() and not t.semantic_positive.any()
