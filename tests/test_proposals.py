from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samkit.proposals import (
    SamPatchProposer,
    load_patches,
    mask_boxes,
    pad_patches,
    patches_from_amg,
    patches_from_masks,
    patches_from_records,
    point_grid,
    stability_score,
)
from samkit.types import Patches


def test_point_grid_is_cell_centred() -> None:
    g = point_grid(4)
    assert g.shape == (16, 2)
    assert g[:4, 0].tolist() == [0.125, 0.375, 0.625, 0.875]
    assert (g[:4, 1] == 0.125).all()


def test_stability_score_hand_computed() -> None:
    logits = torch.tensor([[[2.0, 0.5, -0.5], [-2.0, 1.5, 0.9]]])
    # > 1: {2.0, 1.5} = 2 px; > -1: {2.0, 0.5, -0.5, 1.5, 0.9} = 5 px
    torch.testing.assert_close(stability_score(logits), torch.tensor([0.4]))


def test_mask_boxes_exclusive_and_empty() -> None:
    m = torch.zeros(2, 5, 6, dtype=torch.bool)
    m[0, 1:4, 2:5] = True
    boxes = mask_boxes(m)
    assert boxes.tolist() == [[2.0, 1.0, 5.0, 4.0], [0.0, 0.0, 0.0, 0.0]]


class TestConverters:
    def test_amg_binary_and_rle(self) -> None:
        seg = np.zeros((4, 5), dtype=bool)
        seg[1:3, 1:4] = True
        # uncompressed RLE is column-major (Fortran order)
        flat = seg.T.flatten()
        counts, val, run = [], False, 0
        for v in flat:
            if v != val:
                counts.append(run)
                run, val = 0, v
            run += 1
        counts.append(run)
        recs = [
            {"segmentation": seg, "bbox": [1, 1, 2, 1], "predicted_iou": 0.9},
            {
                "segmentation": {"size": [4, 5], "counts": counts},
                "bbox": [1, 1, 3, 2],
                "predicted_iou": 0.7,
            },
        ]
        p = patches_from_amg(recs, (4, 5))
        assert p.num_patches == 2
        torch.testing.assert_close(p.masks[0], p.masks[1])
        assert p.boxes[1].tolist() == [1.0, 1.0, 4.0, 3.0]
        torch.testing.assert_close(p.scores, torch.tensor([0.9, 0.7]))
        assert patches_from_amg([], (4, 5)).masks.shape == (0, 4, 5)

    def test_records_with_compressed_rle(self) -> None:
        mask_utils = pytest.importorskip("pycocotools.mask")
        seg = np.zeros((6, 7), dtype=np.uint8)
        seg[2:5, 1:3] = 1
        rle = mask_utils.encode(np.asfortranarray(seg))
        p = patches_from_records({"boxes": [[1, 2, 2, 3]], "segmentations": [rle], "scores": [0.5]})
        assert p.masks[0].numpy().tolist() == seg.astype(bool).tolist()
        assert p.boxes.tolist() == [[1.0, 2.0, 3.0, 5.0]]

    def test_save_load_roundtrip(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        m = torch.rand(3, 8, 9) > 0.5
        p = patches_from_masks(m, torch.tensor([0.1, 0.2, 0.3]))
        path = tmp_path / "p.safetensors"
        from samkit.proposals import save_patches

        save_patches(p, path)
        q = load_patches(path)
        torch.testing.assert_close(q.masks, p.masks)
        torch.testing.assert_close(q.boxes, p.boxes)
        torch.testing.assert_close(q.scores, p.scores)

    def test_pad_patches(self) -> None:
        a = patches_from_masks(torch.ones(2, 4, 4))
        b = patches_from_masks(torch.ones(0, 4, 4))
        masks, boxes, scores, pad = pad_patches([a, b])
        assert masks.shape == (2, 2, 4, 4) and pad.tolist() == [[False, False], [True, True]]
        assert not masks[1].any() and (scores[0] == 1).all()
        with pytest.raises(ValueError, match="size="):
            pad_patches([a, patches_from_masks(torch.ones(1, 5, 4))])
        with pytest.raises(ValueError, match=r"patches\[1\]"):
            pad_patches([a, patches_from_masks(torch.ones(1, 5, 4))], size=(4, 4))

    def test_pad_patches_mixed_sizes_bottom_right(self) -> None:
        small = torch.zeros(1, 3, 2, dtype=torch.bool)
        small[0, 2, 1] = True
        a = patches_from_masks(torch.ones(2, 4, 4))
        masks, boxes, _, pad = pad_patches([a, patches_from_masks(small)], size=(4, 5))
        assert masks.shape == (2, 2, 4, 5) and pad.tolist() == [[False, False], [False, True]]
        assert masks[1, 0, :3, :2].equal(small[0]) and not masks[1, 0, 3:].any()
        assert not masks[1, 0, :, 2:].any() and boxes[1, 0].tolist() == [1.0, 2.0, 2.0, 3.0]
        assert masks[0, :, :, 4].sum() == 0 and masks[0, :, :4, :4].all()

    def test_pad_patches_empty_batch(self) -> None:
        masks, boxes, scores, pad = pad_patches([], size=(4, 5))
        assert masks.shape == (0, 0, 4, 5) and boxes.shape == (0, 0, 4)
        assert scores.shape == pad.shape == (0, 0)
        assert pad_patches([])[0].shape == (0, 0, 0, 0)

    def test_patches_validation(self) -> None:
        with pytest.raises(ValueError, match="boxes"):
            Patches(torch.zeros(2, 3, 3, dtype=torch.bool), torch.zeros(3, 4), torch.zeros(2))


class TestSamPatchProposer:
    def test_smoke_and_filters(self, tiny_sam) -> None:  # type: ignore[no-untyped-def]
        images = torch.rand(2, 3, 48, 64)
        loose = SamPatchProposer(
            sam=tiny_sam,
            points_per_side=3,
            points_per_batch=4,
            pred_iou_thresh=-1.0,
            stability_score_thresh=0.0,
            box_nms_thresh=1.0,
        )
        patches = loose(images)
        assert len(patches) == 2 and patches[0].image_size == (48, 64)
        assert patches[0].num_patches <= 9 * 3
        for p in patches:
            torch.testing.assert_close(p.boxes, mask_boxes(p.masks))
            assert (p.masks.flatten(1).sum(1) > 0).all()
        strict = SamPatchProposer(sam=tiny_sam, points_per_side=3, pred_iou_thresh=1e9)
        assert all(p.num_patches == 0 for p in strict(images))

    def test_matches_manual_pipeline(self, tiny_sam) -> None:  # type: ignore[no-untyped-def]
        from torchvision.ops import nms

        images = torch.rand(1, 3, 40, 40)
        prop = SamPatchProposer(
            sam=tiny_sam,
            points_per_side=2,
            pred_iou_thresh=-1.0,
            stability_score_thresh=0.0,
            box_nms_thresh=0.7,
        )
        got = prop(images)[0]
        emb = tiny_sam.encode(images)
        pts = tiny_sam.transform_coords(point_grid(2) * 40, (40, 40))[None]
        pred = tiny_sam.predict_points(emb, pts, multimask=True)
        logits = tiny_sam.postprocess_masks(
            pred.low_res_logits[0].flatten(0, 1), emb.input_size, (40, 40)
        )
        masks = logits > 0
        scores = pred.iou_scores[0].flatten()
        keep = masks.flatten(1).any(1)
        masks, scores = masks[keep], scores[keep]
        order = nms(mask_boxes(masks), scores, 0.7)
        torch.testing.assert_close(got.masks, masks[order])
        torch.testing.assert_close(got.scores, scores[order].detach())


class TestInputContract:
    def test_patches_from_masks_rejects_non_binary(self) -> None:
        with pytest.raises(ValueError, match="masks"):
            patches_from_masks(torch.full((1, 4, 4), 0.5))
        p = patches_from_masks(torch.tensor([[[0, 1], [1, 1]]], dtype=torch.uint8))
        assert p.masks.dtype == torch.bool and p.boxes.tolist() == [[0.0, 0.0, 2.0, 2.0]]
        with pytest.raises(ValueError, match="scores"):
            patches_from_masks(torch.ones(2, 4, 4), torch.ones(3))

    @pytest.mark.parametrize(
        ("arg", "value"),
        [("stability_score_thresh", 1.5), ("box_nms_thresh", -0.1), ("pred_iou_thresh", math.nan),
         ("points_per_side", 0), ("points_per_batch", 0)],
    )  # fmt: skip
    def test_proposer_arguments(self, tiny_sam, arg: str, value: float) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(ValueError, match=arg):
            SamPatchProposer(sam=tiny_sam, **{arg: value})

    def test_proposer_empty_batch_uint8_and_range(self, tiny_sam) -> None:  # type: ignore[no-untyped-def]
        prop = SamPatchProposer(sam=tiny_sam, points_per_side=2, pred_iou_thresh=-1.0,
                                stability_score_thresh=0.0)  # fmt: skip
        assert prop(torch.zeros(0, 3, 32, 32)) == []
        images = torch.rand(1, 3, 32, 32)
        u8 = (images * 255).round().to(torch.uint8)
        a, b = prop(u8)[0], prop(u8.float() / 255)[0]
        assert torch.equal(a.masks, b.masks)
        with pytest.raises(ValueError, match="images"):
            prop(images * 255)

    def test_proposer_mixed_sizes_equal_each_image_alone(self, tiny_sam) -> None:  # type: ignore[no-untyped-def]
        prop = SamPatchProposer(sam=tiny_sam, points_per_side=3, pred_iou_thresh=-1.0,
                                stability_score_thresh=0.0)  # fmt: skip
        sizes = [(40, 48), (48, 48), (30, 20)]
        canvas = torch.zeros(3, 3, 48, 48)
        for i, (h, w) in enumerate(sizes):
            canvas[i, :, :h, :w] = torch.rand(3, h, w)
        batch = prop(canvas, sizes)
        for i, (h, w) in enumerate(sizes):
            alone = prop(canvas[i : i + 1, :, :h, :w])[0]
            assert batch[i].image_size == (h, w)
            assert torch.equal(batch[i].masks, alone.masks)
            torch.testing.assert_close(batch[i].scores, alone.scores)


def test_save_patches_is_atomic(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A write that fails midway leaves the previous file whole and no temporary file behind."""
    from samkit import _io
    from samkit.proposals import save_patches

    path = tmp_path / "p.safetensors"
    first = patches_from_masks(torch.ones(1, 4, 4))
    save_patches(first, path)
    before = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_patches(patches_from_masks(torch.zeros(3, 4, 4)), path)
    assert path.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["p.safetensors"]
    torch.testing.assert_close(load_patches(path).masks, first.masks)
