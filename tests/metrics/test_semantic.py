from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit.metrics.semantic import SemanticIoU, confusion_matrix, mean_iou


def _reference_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int) -> float:
    """Per-class IoU straight from set definitions (classes absent in both are skipped)."""
    valid = gt != ignore
    ious = []
    for c in range(num_classes):
        inter = np.sum((pred == c) & (gt == c) & valid)
        union = np.sum(((pred == c) | (gt == c)) & valid)
        if union > 0:
            ious.append(inter / union)
    return float(np.mean(ious)) if ious else 0.0


class TestSemanticIoU:
    def test_smoke(self, device: torch.device) -> None:
        m = SemanticIoU(num_classes=4).to(device)
        m.update(
            torch.zeros(1, 4, 4, dtype=torch.long, device=device),
            torch.zeros(1, 4, 4, device=device).long(),
        )
        assert m.compute().item() == 1.0

    def test_hand_computed(self) -> None:
        pred = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
        gt = torch.tensor([[[0, 1, 1], [1, 2, 255]]])
        # class 0: inter 1, union 2; class 1: inter 2, union 3; class 2: inter 1, union 1
        miou, iou = mean_iou(pred, gt, num_classes=3, per_class=True)
        torch.testing.assert_close(iou, torch.tensor([0.5, 2 / 3, 1.0], dtype=torch.float64))
        assert miou.item() == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)

    def test_absent_class_is_nan_and_skipped(self) -> None:
        miou, iou = mean_iou(
            torch.zeros(1, 2, 2).long(), torch.zeros(1, 2, 2).long(), num_classes=3, per_class=True
        )
        assert iou[0] == 1 and iou[1:].isnan().all() and miou == 1

    def test_scores_input_equals_argmax(self) -> None:
        scores = torch.randn(2, 5, 6, 7)
        gt = torch.randint(0, 5, (2, 6, 7))
        assert mean_iou(scores, gt, num_classes=5) == mean_iou(scores.argmax(1), gt, num_classes=5)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="expected shape"):
            mean_iou(torch.zeros(1, 2, 3).long(), torch.zeros(1, 2, 4).long(), num_classes=2)
        with pytest.raises(ValueError, match="num_classes must be"):
            SemanticIoU(num_classes=0)

    def test_streaming_equals_one_shot(self) -> None:
        preds = torch.randint(0, 6, (4, 9, 9))
        gt = torch.randint(0, 6, (4, 9, 9))
        gt[gt == 5] = 255
        m = SemanticIoU(num_classes=6)
        for i in range(4):
            m.update(preds[i : i + 1], gt[i : i + 1])
        assert m.compute().item() == pytest.approx(mean_iou(preds, gt, num_classes=6).item())
        assert m.confusion.sum().item() == int((gt != 255).sum())
        m.reset()
        assert m.confusion.sum().item() == 0

    def test_module_matches_functional(self) -> None:
        preds, gt = torch.randint(0, 3, (2, 5, 5)), torch.randint(0, 3, (2, 5, 5))
        assert (
            SemanticIoU(num_classes=3)(preds, gt).item()
            == mean_iou(preds, gt, num_classes=3).item()
        )

    def test_confusion_rows_are_ground_truth(self) -> None:
        conf = confusion_matrix(torch.tensor([[[1, 1]]]), torch.tensor([[[0, 1]]]), num_classes=2)
        assert conf.tolist() == [[0, 1], [0, 1]]

    def test_pixel_accuracy_and_state_dict(self) -> None:
        m = SemanticIoU(num_classes=2)
        m.update(torch.tensor([[[0, 1, 1, 1]]]), torch.tensor([[[0, 1, 0, 255]]]))
        assert m.pixel_accuracy().item() == pytest.approx(2 / 3)
        m2 = SemanticIoU(num_classes=2)
        m2.load_state_dict(m.state_dict())
        assert torch.equal(m2.confusion, m.confusion)

    @given(st.data())
    def test_matches_set_definition(self, data: st.DataObject) -> None:
        t = data.draw(st.integers(1, 6))
        seed = data.draw(st.integers(0, 2**16))
        rng = np.random.default_rng(seed)
        pred = rng.integers(0, t, size=(2, 5, 4))
        gt = rng.integers(0, t + 1, size=(2, 5, 4))
        gt[gt == t] = 255
        got = mean_iou(torch.from_numpy(pred), torch.from_numpy(gt), num_classes=t).item()
        assert got == pytest.approx(_reference_miou(pred, gt, t, 255))
