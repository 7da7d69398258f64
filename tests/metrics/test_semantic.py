from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit.metrics.semantic import (
    SemanticIoU,
    confusion_matrix,
    intersect_and_union,
    mean_iou,
    semantic_metrics,
)


def _mmseg_intersect_and_union(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Independent numpy re-statement of MMSegmentation's `IoUMetric.intersect_and_union`.

    MMSeg keeps the pixels whose *label* differs from `ignore_index`, then histograms the correct
    predictions, the predictions and the labels over the bins `[0, T)` (values outside are not
    counted by `torch.histc(min=0, max=T-1)`); union = pred + label - intersect.
    """
    keep = gt != ignore
    p, g = pred[keep], gt[keep]

    def hist(x: np.ndarray) -> np.ndarray:
        x = x[(x >= 0) & (x < num_classes)]
        return np.bincount(x, minlength=num_classes)

    inter = hist(p[p == g])
    area_p, area_g = hist(p), hist(g)
    return inter, area_p + area_g - inter, area_p, area_g


def _mmseg_summary(areas: list[np.ndarray]) -> dict[str, float]:
    """MMSeg's `total_area_to_metrics` + `np.nanmean`, as fractions."""
    inter, union, _, label = (a.astype(np.float64) for a in areas)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = inter / union, inter / label
        a_acc = inter.sum() / label.sum() if label.sum() else math.nan
    nanmean = lambda v: float(np.nanmean(v)) if (~np.isnan(v)).any() else math.nan  # noqa: E731
    return {"aAcc": float(a_acc), "mIoU": nanmean(iou), "mAcc": nanmean(acc)}


class TestSemanticIoU:
    def test_smoke(self, device: torch.device) -> None:
        m = SemanticIoU(num_classes=4).to(device)
        m.update(
            torch.zeros(1, 4, 4, dtype=torch.long, device=device),
            torch.zeros(1, 4, 4, device=device).long(),
        )
        assert m.compute().item() == 1.0
        assert m.compute_all()["aAcc"] == 1.0

    def test_issue_examples(self) -> None:
        # an all-wrong prediction outside [0, T) is not clamped into a real class
        assert mean_iou(torch.full((1, 2, 2), 7), torch.full((1, 2, 2), 2), num_classes=3) == 0.0
        # void 255 in the prediction is wrong (MMSeg gives 0.5), not ignored
        miou = mean_iou(
            torch.tensor([[[0, 0, 255, 255]]]), torch.tensor([[[0, 0, 1, 1]]]), num_classes=2
        )
        assert miou.item() == pytest.approx(0.5)

    def test_out_of_range_prediction_adds_to_target_union_only(self) -> None:
        pred = torch.tensor([[[0, 9, -1, 1]]])
        gt = torch.tensor([[[0, 0, 1, 1]]])
        inter, union, area_p, area_g = intersect_and_union(pred, gt, num_classes=2)
        assert inter.tolist() == [1, 1]
        assert area_p.tolist() == [1, 1]  # 9 and -1 are nobody's prediction
        assert area_g.tolist() == [2, 2]
        assert union.tolist() == [2, 2]
        r = semantic_metrics(pred, gt, num_classes=2)
        assert r["mIoU"] == pytest.approx(0.5) and r["aAcc"] == pytest.approx(0.5)
        # the confusion matrix has no column for them; its trace counts correct pixels
        assert confusion_matrix(pred, gt, num_classes=2).tolist() == [[1, 0], [0, 1]]

    def test_hand_computed(self) -> None:
        pred = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
        gt = torch.tensor([[[0, 1, 1], [1, 2, 255]]])
        # class 0: inter 1, union 2; class 1: inter 2, union 3; class 2: inter 1, union 1
        miou, iou = mean_iou(pred, gt, num_classes=3, per_class=True)
        torch.testing.assert_close(iou, torch.tensor([0.5, 2 / 3, 1.0], dtype=torch.float64))
        assert miou.item() == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)

    def test_macc_aacc_and_names(self) -> None:
        pred = torch.tensor([[[0, 0, 1, 1, 2, 2]]])
        gt = torch.tensor([[[0, 0, 0, 1, 1, 255]]])
        r = semantic_metrics(pred, gt, num_classes=3, class_names=["sky", "road", "car"])
        # sky: 2 of 3 right, IoU 2/3; road: 1 of 2, IoU 1/3; car: absent from gt, predicted once
        assert r["Acc"]["sky"] == pytest.approx(2 / 3) and r["Acc"]["road"] == pytest.approx(0.5)
        assert math.isnan(r["Acc"]["car"])
        assert r["IoU"] == pytest.approx({"sky": 2 / 3, "road": 1 / 3, "car": 0.0})
        assert r["mAcc"] == pytest.approx((2 / 3 + 0.5) / 2)  # over classes in the ground truth
        assert r["mIoU"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)  # car's union is 1 px
        assert r["aAcc"] == pytest.approx(3 / 5)
        m = SemanticIoU(num_classes=3, class_names=["sky", "road", "car"])
        m.update(pred, gt)
        assert m.compute_all()["IoU"] == pytest.approx(r["IoU"])
        assert m.mean_accuracy().item() == pytest.approx(r["mAcc"])
        assert m.pixel_accuracy().item() == pytest.approx(r["aAcc"])
        assert m.per_class_accuracy()[2].isnan()
        # a str is one class name
        assert list(
            semantic_metrics(pred[..., :2], gt[..., :2], num_classes=1, class_names="sky")["IoU"]
        ) == ["sky"]

    def test_absent_class_is_nan_and_skipped(self) -> None:
        miou, iou = mean_iou(
            torch.zeros(1, 2, 2).long(), torch.zeros(1, 2, 2).long(), num_classes=3, per_class=True
        )
        assert iou[0] == 1 and iou[1:].isnan().all() and miou == 1

    def test_nothing_counted_is_nan(self) -> None:
        # empty batch and an all-ignored batch: no crash, every ratio NaN
        assert mean_iou(
            torch.zeros(0, 3, 3).long(), torch.zeros(0, 3, 3).long(), num_classes=2
        ).isnan()
        r = semantic_metrics(torch.zeros(1, 2, 2).long(), torch.full((1, 2, 2), 255), num_classes=2)
        assert all(math.isnan(r[k]) for k in ("mIoU", "mAcc", "aAcc"))
        m = SemanticIoU(num_classes=2)
        m.update(torch.zeros(0, 2, 5, 5), torch.zeros(0, 5, 5).long())
        assert m.compute().isnan() and m.pixel_accuracy().isnan()

    def test_ignore_index_none_and_inside_range(self) -> None:
        pred, gt = torch.tensor([[[0, 1, 1]]]), torch.tensor([[[0, 1, 0]]])
        assert confusion_matrix(pred, gt, num_classes=2, ignore_index=None).sum() == 3
        # ignore_index=0 drops ground-truth class 0 pixels; predicting 0 elsewhere still counts
        inter, union, _, _ = intersect_and_union(
            torch.tensor([[[0, 0]]]), torch.tensor([[[0, 1]]]), num_classes=2, ignore_index=0
        )
        assert inter.tolist() == [0, 0] and union.tolist() == [1, 1]

    def test_scores_input_equals_argmax(self) -> None:
        scores = torch.randn(2, 5, 6, 7)
        gt = torch.randint(0, 5, (2, 6, 7))
        assert mean_iou(scores, gt, num_classes=5) == mean_iou(scores.argmax(1), gt, num_classes=5)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="expected shape"):
            mean_iou(torch.zeros(1, 2, 3).long(), torch.zeros(1, 2, 4).long(), num_classes=2)
        with pytest.raises(ValueError, match=r"preds: expected shape \(B, T, H, W\) with T=3"):
            mean_iou(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2).long(), num_classes=3)
        with pytest.raises(ValueError, match="num_classes: expected an int >= 1, got 0"):
            SemanticIoU(num_classes=0)
        with pytest.raises(ValueError, match=r"targets: expected labels in \[0, 3\).*got label 7"):
            mean_iou(torch.zeros(1, 1, 2).long(), torch.tensor([[[0, 7]]]), num_classes=3)
        with pytest.raises(ValueError, match="targets: .*got label -1"):
            SemanticIoU(num_classes=3).update(torch.zeros(1, 1, 1).long(), torch.tensor([[[-1]]]))
        with pytest.raises(TypeError, match="preds: expected integer labels"):
            mean_iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2).long(), num_classes=2)
        with pytest.raises(TypeError, match="targets: expected integer labels"):
            mean_iou(torch.zeros(1, 2, 2).long(), torch.zeros(1, 2, 2), num_classes=2)
        with pytest.raises(ValueError, match="class_names: expected 2 names"):
            SemanticIoU(num_classes=2, class_names=["a", "b", "c"])

    def test_streaming_equals_one_shot(self) -> None:
        preds = torch.randint(-1, 7, (4, 9, 9))
        gt = torch.randint(0, 6, (4, 9, 9))
        gt[gt == 5] = 255
        m = SemanticIoU(num_classes=6)
        for i in range(4):
            m.update(preds[i : i + 1], gt[i : i + 1])
        assert m.compute().item() == pytest.approx(mean_iou(preds, gt, num_classes=6).item())
        one, streamed = semantic_metrics(preds, gt, num_classes=6), m.compute_all()
        for k in ("mIoU", "mAcc", "aAcc", "IoU", "Acc"):
            assert streamed[k] == pytest.approx(one[k], nan_ok=True), k
        assert m.confusion.sum().item() + m.out_of_range.sum().item() == int((gt != 255).sum())
        m.reset()
        assert m.confusion.sum().item() == 0 and m.out_of_range.sum().item() == 0

    def test_module_matches_functional(self) -> None:
        preds, gt = torch.randint(0, 4, (2, 5, 5)), torch.randint(0, 3, (2, 5, 5))
        assert (
            SemanticIoU(num_classes=3)(preds, gt).item()
            == mean_iou(preds, gt, num_classes=3).item()
        )

    def test_confusion_rows_are_ground_truth(self) -> None:
        conf = confusion_matrix(torch.tensor([[[1, 1]]]), torch.tensor([[[0, 1]]]), num_classes=2)
        assert conf.tolist() == [[0, 1], [0, 1]]

    def test_pixel_accuracy_and_state_dict(self) -> None:
        m = SemanticIoU(num_classes=2)
        m.update(torch.tensor([[[0, 1, 1, 1, 5]]]), torch.tensor([[[0, 1, 0, 255, 1]]]))
        assert m.pixel_accuracy().item() == pytest.approx(2 / 4)
        m2 = SemanticIoU(num_classes=2)
        m2.load_state_dict(m.state_dict())
        assert torch.equal(m2.confusion, m.confusion)
        assert torch.equal(m2.out_of_range, m.out_of_range)
        assert m2.compute().item() == m.compute().item()

    @given(st.data())
    def test_matches_mmseg_intersect_and_union(self, data: st.DataObject) -> None:
        t = data.draw(st.integers(1, 6))
        seed = data.draw(st.integers(0, 2**16))
        rng = np.random.default_rng(seed)
        preds = rng.integers(-2, t + 2, size=(3, 5, 4))  # includes out-of-range predictions
        preds[rng.random(preds.shape) < 0.1] = 255
        gt = rng.integers(0, t + 1, size=(3, 5, 4))
        gt[gt == t] = 255
        m = SemanticIoU(num_classes=t)
        total = [np.zeros(t, dtype=np.int64) for _ in range(4)]
        for b in range(3):
            ref = _mmseg_intersect_and_union(preds[b], gt[b], t, 255)
            got = intersect_and_union(
                torch.from_numpy(preds[b : b + 1]), torch.from_numpy(gt[b : b + 1]), num_classes=t
            )
            for r, g in zip(ref, got, strict=True):
                assert g.tolist() == r.tolist()
            total = [a + r for a, r in zip(total, ref, strict=True)]
            m.update(torch.from_numpy(preds[b : b + 1]), torch.from_numpy(gt[b : b + 1]))
        ref_summary = _mmseg_summary(total)
        got_summary = m.compute_all()
        for k, v in ref_summary.items():
            assert got_summary[k] == pytest.approx(v, nan_ok=True), k

    @given(st.data())
    def test_trace_counts_correct_pixels(self, data: st.DataObject) -> None:
        t = data.draw(st.integers(1, 5))
        ignore = data.draw(st.sampled_from([255, 0, None]))
        seed = data.draw(st.integers(0, 2**16))
        g = torch.Generator().manual_seed(seed)
        preds = torch.randint(-1, t + 2, (2, 4, 6), generator=g)
        gt = torch.randint(0, t, (2, 4, 6), generator=g)
        if ignore == 255:
            gt[torch.rand(gt.shape, generator=g) < 0.3] = 255
        conf = confusion_matrix(preds, gt, num_classes=t, ignore_index=ignore)
        counted = gt != ignore if ignore is not None else torch.ones_like(gt, dtype=torch.bool)
        assert int(conf.trace()) == int(((preds == gt) & counted).sum())
