from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit.modules.merging import (
    PanopticFusion,
    merge_boxes,
    merge_patches,
    normalize_affinity,
    query_candidates,
    select_instances,
)


def _quadrant_masks() -> torch.Tensor:
    m = torch.zeros(1, 4, 8, 8, dtype=torch.bool)
    m[0, 0, :4, :4] = True
    m[0, 1, :4, 4:] = True
    m[0, 2, 4:, :4] = True
    m[0, 3, 4:, 4:] = True
    return m


class TestNormalizeAffinity:
    def test_min_max_over_valid(self) -> None:
        aff = torch.tensor([[[0.0, 1.0, 50.0]]])
        pad = torch.tensor([[False, False, True]])
        out = normalize_affinity(aff, pad)
        torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0, 0.0]]]))

    def test_constant_row_selects_everything(self) -> None:
        out = normalize_affinity(torch.zeros(1, 2, 3))
        assert (out == 1).all()

    def test_zero_patches(self) -> None:
        assert normalize_affinity(torch.zeros(1, 2, 0)).shape == (1, 2, 0)


class TestMergePatches:
    def test_union_of_selected(self, device: torch.device) -> None:
        masks = _quadrant_masks().to(device)
        aff = torch.tensor([[[5.0, 5.0, -5.0, -5.0], [-5.0, -5.0, -5.0, 5.0]]], device=device)
        out = merge_patches(aff, masks)
        torch.testing.assert_close(out[0, 0], masks[0, 0] | masks[0, 1])
        torch.testing.assert_close(out[0, 1], masks[0, 3])

    def test_padding_is_never_selected(self) -> None:
        masks = _quadrant_masks()
        pad = torch.tensor([[False, False, False, True]])
        out = merge_patches(torch.full((1, 1, 4), 3.0), masks, pad)
        assert out.sum() == 48

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="patch_masks"):
            merge_patches(torch.zeros(1, 2, 3), _quadrant_masks())

    @given(st.data())
    def test_permuting_patches_leaves_masks_unchanged(self, data: st.DataObject) -> None:
        perm = torch.tensor(data.draw(st.permutations(range(4))))
        aff = torch.randn(1, 3, 4)
        masks = _quadrant_masks()
        torch.testing.assert_close(
            merge_patches(aff[..., perm], masks[:, perm]), merge_patches(aff, masks)
        )
        boxes = torch.rand(1, 4, 4)
        torch.testing.assert_close(
            merge_boxes(aff[..., perm], boxes[:, perm]), merge_boxes(aff, boxes)
        )


def test_merge_boxes_empty_uses_canvas() -> None:
    pad = torch.tensor([[True, True]])
    out = merge_boxes(torch.zeros(1, 1, 2), torch.rand(1, 2, 4), pad, canvas=(0, 0, 7, 9))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.0, 7.0, 9.0]]]))
    assert merge_boxes(torch.zeros(1, 3, 0), torch.zeros(1, 0, 4)).shape == (1, 3, 4)


def test_query_candidates() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.6, 0.3], [0.1, 0.7, 0.1, 0.5], [0.8, 0.1, 0.9, 0.9]])
    aff = torch.tensor([[1.0, -3.0], [-3.0, -3.0], [3.0, 0.0]])
    scores, labels, valid = query_candidates(probs, aff, num_semantic=2, num_things=2)
    torch.testing.assert_close(scores, torch.tensor([0.6, 0.5, 0.8]))
    assert labels.tolist() == [2, 3, 0]
    assert valid.tolist() == [True, False, True]


def test_select_instances_top_pairs() -> None:
    probs = torch.tensor([[0.9, 0.8], [0.1, 0.7]])
    masks = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)]).bool()
    m, s, lab = select_instances(probs, masks, max_per_image=3)
    torch.testing.assert_close(s, torch.tensor([0.9, 0.8, 0.7]))
    assert lab.tolist() == [0, 1, 1]
    assert m[2].sum() == 0 and m[0].all()


class TestPanopticFusion:
    def test_hand_computed_overlap(self) -> None:
        fusion = PanopticFusion(num_things=2, overlap_threshold=0.8)
        masks = torch.zeros(3, 4, 4, dtype=torch.bool)
        masks[0, :2] = True  # thing, 8 px
        masks[1, 1:] = True  # thing, 12 px; every pixel goes to a stronger candidate -> dropped
        masks[2, 2:] = True  # stuff, 8 px, keeps all of them
        out = fusion(torch.tensor([0.9, 0.8, 0.85]), torch.tensor([0, 1, 2]), masks)
        cats = {s["id"]: s["category_id"] for s in out.segments}
        assert sorted(cats.values()) == [0, 2]
        assert (out.panoptic[:2] == 1).all() and (out.panoptic[2:] == 2).all()
        assert out.semantic[:2].eq(0).all() and out.semantic[2:].eq(2).all()
        assert out.instance_masks.shape == (1, 4, 4) and out.instance_labels.tolist() == [0]

    def test_thresholds_and_void(self) -> None:
        fusion = PanopticFusion(num_things=1, object_mask_threshold=0.5)
        masks = torch.zeros(2, 4, 4, dtype=torch.bool)
        masks[0, :2] = True
        masks[1, 2:] = True
        out = fusion(torch.tensor([0.9, 0.4]), torch.tensor([0, 0]), masks)
        assert (out.panoptic[2:] == 0).all() and (out.semantic[2:] == 255).all()
        out = fusion(
            torch.tensor([0.9, 0.9]), torch.tensor([0, 0]), masks, torch.tensor([False, True])
        )
        assert (out.panoptic[:2] == 0).all() and len(out.segments) == 1

    def test_stuff_of_one_class_is_merged(self) -> None:
        fusion = PanopticFusion(num_things=1)
        masks = torch.zeros(2, 4, 4, dtype=torch.bool)
        masks[0, :2] = True
        masks[1, 2:] = True
        out = fusion(torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), masks)
        assert len(out.segments) == 1 and out.segments[0]["area"] == 16
        assert (out.panoptic == 1).all()

    def test_no_candidates(self) -> None:
        out = PanopticFusion(num_things=1)(
            torch.zeros(0), torch.zeros(0).long(), torch.zeros(0, 3, 3, dtype=torch.bool)
        )
        assert (out.panoptic == 0).all() and out.segments == []
        assert out.instance_masks.shape == (0, 3, 3)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="scores"):
            PanopticFusion(num_things=1)(
                torch.zeros(2), torch.zeros(3).long(), torch.zeros(3, 2, 2, dtype=torch.bool)
            )


class TestVocabulariesAndContract:
    def test_query_candidates_without_thing_classes(self) -> None:
        probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
        aff = torch.full((3, 2), 3.0)
        scores, labels, valid = query_candidates(probs, aff, num_semantic=2, num_things=0)
        assert scores.tolist()[:2] == pytest.approx([0.9, 0.8])
        assert labels.tolist() == [0, 1, 0] and valid.tolist() == [True, True, False]

    def test_query_candidates_without_stuff(self) -> None:
        probs = torch.tensor([[0.1, 0.7], [0.6, 0.2]])
        scores, labels, valid = query_candidates(
            probs, torch.zeros(2, 2), num_semantic=0, num_things=2, affinity_threshold=0.4
        )
        assert labels.tolist() == [1, 0] and valid.all()
        assert scores.tolist() == pytest.approx([0.7, 0.6])

    def test_select_instances_without_thing_classes(self) -> None:
        masks, scores, labels = select_instances(
            torch.zeros(3, 0), torch.ones(3, 4, 4, dtype=torch.bool)
        )
        assert masks.shape == (0, 4, 4) and scores.numel() == labels.numel() == 0

    def test_fusion_stuff_only(self) -> None:
        fusion = PanopticFusion(num_things=3)
        masks = torch.zeros(2, 4, 4, dtype=torch.bool)
        masks[0, :2], masks[1, 2:] = True, True
        out = fusion(torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), masks, num_things=0)
        assert [sg["isthing"] for sg in out.segments] == [False, False]
        assert out.instance_masks.shape == (0, 4, 4)

    @pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
    def test_thresholds_outside_unit_interval(self, value: float) -> None:
        aff, masks = torch.zeros(1, 1, 4), _quadrant_masks()
        with pytest.raises(ValueError, match="threshold"):
            merge_patches(aff, masks, threshold=value)
        with pytest.raises(ValueError, match="threshold"):
            merge_boxes(aff, torch.zeros(1, 4, 4), threshold=value)
        with pytest.raises(ValueError, match="affinity_threshold"):
            query_candidates(
                torch.zeros(1, 2), torch.zeros(1, 1), num_semantic=0, num_things=2,
                affinity_threshold=value,
            )  # fmt: skip
        with pytest.raises(ValueError, match="object_mask_threshold"):
            PanopticFusion(num_things=1, object_mask_threshold=value)
        with pytest.raises(ValueError, match="overlap_threshold"):
            PanopticFusion(num_things=1, overlap_threshold=value)

    def test_probabilities_and_masks_are_checked(self) -> None:
        with pytest.raises(ValueError, match="class_probs"):
            select_instances(torch.tensor([[1.5]]), torch.ones(1, 2, 2, dtype=torch.bool))
        with pytest.raises(ValueError, match="class_probs"):
            query_candidates(
                torch.tensor([[2.0, 0.1]]), torch.zeros(1, 1), num_semantic=0, num_things=2
            )
        with pytest.raises(ValueError, match="patch_masks"):
            merge_patches(torch.zeros(1, 1, 4), _quadrant_masks().float() * 0.5)
        with pytest.raises(ValueError, match="num_things"):
            query_candidates(torch.zeros(2, 2), torch.zeros(2, 1), num_semantic=1, num_things=2)
