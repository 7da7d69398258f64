from __future__ import annotations

import pytest
import torch

from samkit.data.synthetic import Segment
from samkit.metrics.panoptic import PanopticQuality, panoptic_quality


def _seg(i: int, c: int, crowd: int = 0) -> dict:
    return {"id": i, "category_id": c, "iscrowd": crowd}


class TestPanopticQuality:
    def test_perfect(self) -> None:
        gt = torch.tensor([[1, 1, 2], [1, 3, 3]])
        segs = [_seg(1, 0), _seg(2, 0), _seg(3, 1)]
        r = panoptic_quality(gt, segs, gt, segs, things=[0], stuff=[1])
        assert r["all"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2.0}

    def test_hand_computed_tp_fp_fn(self) -> None:
        # gt: thing A (6 px, class 0), thing B (2 px, class 0), stuff (8 px, class 1)
        gt = torch.tensor([[1, 1, 1, 2], [1, 1, 1, 2], [3, 3, 3, 3], [3, 3, 3, 3]])
        gs = [_seg(1, 0), _seg(2, 0), _seg(3, 1)]
        # pred: A' covers 5 of A's pixels -> IoU 5/6 (TP); B missed (FN); a stray thing (FP)
        # that takes 2 px of the stuff region; stuff' covers the other 6 stuff px + B -> IoU 6/10
        pred = torch.tensor([[1, 1, 1, 3], [1, 1, 3, 3], [4, 4, 3, 3], [3, 3, 3, 3]])
        ps = [_seg(1, 0), _seg(3, 1), _seg(4, 0)]
        r = panoptic_quality(pred, ps, gt, gs, things=[0], stuff=[1])
        # class 0: TP=1 (IoU 5/6), FP=1, FN=1 -> PQ = (5/6) / 2
        # class 1: stuff' has 6 + 1 (from A) + 2 (B) = 9 px, overlap with stuff 6 ->
        #          IoU = 6 / (9 + 8 - 6) = 6/11 > 0.5 -> TP
        pq0 = (5 / 6) / (1 + 0.5 + 0.5)
        pq1 = 6 / 11
        assert r["things"]["pq"] == pytest.approx(pq0)
        assert r["stuff"]["pq"] == pytest.approx(pq1)
        assert r["all"]["pq"] == pytest.approx((pq0 + pq1) / 2)
        assert r["things"]["sq"] == pytest.approx(5 / 6)
        assert r["things"]["rq"] == pytest.approx(0.5)

    def test_void_pixels_are_ignored(self) -> None:
        # gt: thing on 4 px, 4 px void (id 0). The prediction spills onto void -> not penalised.
        gt = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])
        pred = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1]])
        r = panoptic_quality(pred, [_seg(1, 0)], gt, [_seg(1, 0)], things=[0], stuff=[])
        assert r["all"]["pq"] == pytest.approx(1.0)
        # a predicted segment lying mostly on void is not a false positive
        pred2 = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 0]])
        r2 = panoptic_quality(
            pred2, [_seg(1, 0), _seg(2, 0)], gt, [_seg(1, 0)], things=[0], stuff=[]
        )
        assert r2["all"]["pq"] == pytest.approx(1.0)

    def test_crowd_regions(self) -> None:
        # gt: one normal thing, one crowd region of the same class
        gt = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]])
        gs = [_seg(1, 0), _seg(2, 0, crowd=1)]
        # prediction on the crowd is neither TP nor FP; missing crowd is no FN
        pred = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]])
        r = panoptic_quality(pred, [_seg(1, 0), _seg(2, 0)], gt, gs, things=[0], stuff=[])
        assert r["all"]["pq"] == pytest.approx(1.0) and r["all"]["rq"] == pytest.approx(1.0)
        r = panoptic_quality(pred, [_seg(1, 0)], gt, gs, things=[0], stuff=[])
        assert r["all"]["pq"] == pytest.approx(1.0)
        # a prediction of another class on the crowd region is a false positive
        r = panoptic_quality(pred, [_seg(1, 0), _seg(2, 1)], gt, gs, things=[0, 1], stuff=[])
        assert r["all"]["pq"] == pytest.approx(0.5)  # class 0: PQ 1, class 1: 1 FP -> PQ 0

    def test_iou_exactly_half_is_not_a_match(self) -> None:
        gt = torch.tensor([[1, 1, 1, 1]])
        pred = torch.tensor([[1, 1, 2, 2]])
        ps = [_seg(1, 0), _seg(2, 1)]
        r = panoptic_quality(pred, ps, gt, [_seg(1, 0)], things=[0, 1], stuff=[])
        assert r["things"]["pq"] == 0.0

    def test_streaming_equals_pooled_counts(self) -> None:
        metric = PanopticQuality(things=[0], stuff=[])
        gt = torch.tensor([[1, 1, 1, 1]])
        metric.update(gt, [_seg(1, 0)], gt, [_seg(1, 0)])
        metric.update(torch.zeros(1, 4).long(), [], gt, [_seg(1, 0)])
        r = metric.compute()
        # class 0 over both images: TP=1 (IoU 1), FN=1 -> PQ = 1 / 1.5
        assert r["all"]["pq"] == pytest.approx(1 / 1.5)
        metric.reset()
        assert metric.compute()["all"]["n"] == 0

    def test_accepts_segment_objects(self) -> None:
        gt = torch.tensor([[1, 2]])
        segs = [Segment(1, 0, True, 1), Segment(2, 1, False, 1)]
        assert panoptic_quality(gt, segs, gt, segs, things=[0], stuff=[1])["all"]["pq"] == 1.0

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="pred"):
            panoptic_quality(
                torch.zeros(2, 2).long(), [], torch.zeros(2, 3).long(), [], things=[0], stuff=[]
            )
