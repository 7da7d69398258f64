from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
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


def _panopticapi_image(
    pred: np.ndarray, pred_segs: list[dict], gt: np.ndarray, gt_segs: list[dict]
) -> dict[int, list[float]]:
    """Independent re-statement of panopticapi's per-image `pq_compute_single_core` loop.

    Returns per category `[iou, tp, fp, fn]`. Areas are pixel counts (panopticapi reads the gt
    area from the JSON, which equals the pixel count for consistent data).
    """
    stats: dict[int, list[float]] = defaultdict(lambda: [0.0, 0, 0, 0])
    gt_info = {s["id"]: s for s in gt_segs}
    pred_info = {s["id"]: s for s in pred_segs}
    area_g = {i: int((gt == i).sum()) for i in gt_info}
    area_p = {i: int((pred == i).sum()) for i in pred_info}
    inter: dict[tuple[int, int], int] = defaultdict(int)
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist(), strict=True):
        inter[(g, p)] += 1
    gt_matched, pred_matched = set(), set()
    for (g, p), n in inter.items():
        if g not in gt_info or p not in pred_info or gt_info[g].get("iscrowd", 0) == 1:
            continue
        if gt_info[g]["category_id"] != pred_info[p]["category_id"]:
            continue
        iou = n / (area_p[p] + area_g[g] - n - inter.get((0, p), 0))
        if iou > 0.5:
            st = stats[gt_info[g]["category_id"]]
            st[0] += iou
            st[1] += 1
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, info in gt_info.items():
        if g in gt_matched:
            continue
        if info.get("iscrowd", 0) == 1:
            crowd[info["category_id"]] = g
            continue
        stats[info["category_id"]][3] += 1
    for p, info in pred_info.items():
        if p in pred_matched:
            continue
        ignored = inter.get((0, p), 0)
        if info["category_id"] in crowd:
            ignored += inter.get((crowd[info["category_id"]], p), 0)
        if ignored / area_p[p] > 0.5:
            continue
        stats[info["category_id"]][2] += 1
    return stats


def _pq_average(stats: dict[int, list[float]], categories: list[int]) -> float:
    pqs = []
    for c in categories:
        iou, tp, fp, fn = stats.get(c, [0.0, 0, 0, 0])
        if tp + fp + fn:
            pqs.append(iou / (tp + 0.5 * fp + 0.5 * fn))
    return sum(pqs) / len(pqs) if pqs else math.nan


def _random_panoptic(rng: np.random.Generator, things: list[int], stuff: list[int]):
    """A gt map and a prediction that partly copies it; crowd and void included."""
    h, w = 8, 10
    gt = rng.integers(0, 7, size=(h, w))
    gt[rng.random((h, w)) < 0.1] = 0
    pred = gt.copy()
    pred[rng.random((h, w)) < 0.3] = 0
    noise = rng.random((h, w)) < 0.3
    pred[noise] = rng.integers(1, 9, size=int(noise.sum()))
    cats = things + stuff
    gt_segs = [
        {"id": int(i), "category_id": int(rng.choice(cats)), "iscrowd": int(rng.random() < 0.25)}
        for i in np.unique(gt)
        if i != 0
    ]
    cat_of = {s["id"]: s["category_id"] for s in gt_segs}
    pred_segs = [
        {
            "id": int(i),
            "category_id": cat_of[int(i)]
            if int(i) in cat_of and rng.random() < 0.8
            else int(rng.choice(cats)),
        }
        for i in np.unique(pred)
        if i != 0
    ]
    return pred, pred_segs, gt, gt_segs


class TestPanopticApiConventions:
    def test_unknown_category_is_an_error(self) -> None:
        gt = torch.tensor([[1, 1, 2, 2]])
        with pytest.raises(ValueError, match="pred_segments: segment 2 has category_id 5"):
            panoptic_quality(
                gt, [_seg(1, 0), _seg(2, 5)], gt, [_seg(1, 0), _seg(2, 1)], things=[0], stuff=[1]
            )
        with pytest.raises(ValueError, match="target_segments: segment 1 has category_id 7"):
            panoptic_quality(gt, [_seg(1, 0)], gt, [_seg(1, 7)], things=[0], stuff=[1])

    def test_invalid_configuration_and_segments(self) -> None:
        with pytest.raises(ValueError, match="expected disjoint sets, got \\[1\\]"):
            PanopticQuality(things=[0, 1], stuff=[1])
        with pytest.raises(ValueError, match="at least one category"):
            PanopticQuality(things=[], stuff=[])
        gt = torch.tensor([[1, 1]])
        with pytest.raises(ValueError, match="target_segments: expected segment ids >= 1"):
            panoptic_quality(gt, [], gt, [_seg(0, 0)], things=[0], stuff=[])
        with pytest.raises(ValueError, match="pred_segments: expected unique segment ids"):
            panoptic_quality(gt, [_seg(1, 0), _seg(1, 0)], gt, [], things=[0], stuff=[])
        with pytest.raises(TypeError, match="pred: expected integer segment ids"):
            panoptic_quality(gt.float(), [], gt, [], things=[0], stuff=[])

    def test_average_over_no_category_is_nan(self) -> None:
        metric = PanopticQuality(things=[0], stuff=[1])
        r = metric.compute()
        assert r["all"]["n"] == 0 and math.isnan(r["all"]["pq"])
        gt = torch.tensor([[1, 1]])
        r = panoptic_quality(gt, [_seg(1, 0)], gt, [_seg(1, 0)], things=[0], stuff=[1])
        assert r["things"]["pq"] == 1.0 and math.isnan(r["stuff"]["pq"]) and r["stuff"]["n"] == 0
        # an empty image adds nothing
        metric.update(torch.zeros(0, 0).long(), [], torch.zeros(0, 0).long(), [])
        assert metric.compute()["all"]["n"] == 0

    def test_crowd_region_absorbs_predictions_of_its_category(self) -> None:
        # gt: thing (4 px), crowd region of class 0 (4 px). A class-0 prediction covering 3 px of
        # the crowd and 1 void-free px of the thing is not a FP (3/4 > 0.5); the thing is a FN.
        gt = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]])
        gs = [_seg(1, 0), _seg(2, 0, crowd=1)]
        pred = torch.tensor([[3, 0, 3, 3], [0, 0, 3, 0]])
        r = panoptic_quality(pred, [_seg(3, 0)], gt, gs, things=[0], stuff=[])
        assert r["all"]["pq"] == 0.0 and r["all"]["n"] == 1  # only the FN of segment 1
        stats = _panopticapi_image(pred.numpy(), [_seg(3, 0)], gt.numpy(), gs)
        assert stats[0][1:] == [0, 0, 1]

    @pytest.mark.parametrize("seed", range(25))
    def test_matches_panopticapi_restatement(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        things, stuff = [0, 1, 2], [3, 4]
        metric = PanopticQuality(things=things, stuff=stuff)
        total: dict[int, list[float]] = defaultdict(lambda: [0.0, 0, 0, 0])
        for _ in range(3):
            pred, ps, gt, gs = _random_panoptic(rng, things, stuff)
            metric.update(torch.from_numpy(pred), ps, torch.from_numpy(gt), gs)
            for c, st in _panopticapi_image(pred, ps, gt, gs).items():
                total[c] = [a + b for a, b in zip(total[c], st, strict=True)]
        r = metric.compute()
        for name, cats in (("all", things + stuff), ("things", things), ("stuff", stuff)):
            assert r[name]["pq"] == pytest.approx(_pq_average(total, cats), nan_ok=True), name
        for c in things + stuff:
            st = metric.stats.get(c)
            got = [st.iou, st.tp, st.fp, st.fn] if st else [0.0, 0, 0, 0]
            assert got == pytest.approx(total.get(c, [0.0, 0, 0, 0])), c
