from __future__ import annotations

import builtins

import pytest
import torch

pytest.importorskip("pycocotools")

from samkit.metrics.instance import MaskAP, mask_ap  # noqa: E402


def _square(h: int, w: int, y: int, x: int, s: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y : y + s, x : x + s] = True
    return m


class TestMaskAP:
    def test_perfect_predictions(self) -> None:
        gt = torch.stack([_square(32, 32, 0, 0, 8), _square(32, 32, 16, 16, 10)])
        labels = torch.tensor([0, 1])
        r = mask_ap([(gt, torch.tensor([0.9, 0.8]), labels)], [(gt, labels)])
        assert r["ap"] == pytest.approx(1.0) and r["ap50"] == pytest.approx(1.0)

    def test_wrong_class_and_missed(self) -> None:
        gt = torch.stack([_square(32, 32, 0, 0, 8), _square(32, 32, 16, 16, 10)])
        labels = torch.tensor([0, 0])
        # only the first object is found -> recall 0.5 at every threshold
        r = mask_ap([(gt[:1], torch.tensor([0.9]), torch.tensor([0]))], [(gt, labels)])
        assert 0.4 < r["ap"] < 0.6
        # right mask, wrong class -> AP 0 for the gt class
        r = mask_ap([(gt, torch.tensor([0.9, 0.9]), torch.tensor([1, 1]))], [(gt, labels)])
        assert r["ap"] == pytest.approx(0.0)

    def test_iou_threshold_behaviour(self) -> None:
        gt = _square(32, 32, 0, 0, 10)[None]
        pred = _square(32, 32, 0, 0, 10)
        pred[:, 7:] = False  # IoU = 0.7 -> counted at 0.5..0.7, not at 0.75+
        metric = MaskAP()
        metric.update(pred[None], torch.tensor([0.9]), torch.tensor([0]), gt, torch.tensor([0]))
        r = metric.compute()
        assert r["ap50"] == pytest.approx(1.0) and r["ap75"] == pytest.approx(0.0)
        assert r["ap"] == pytest.approx(0.5, abs=0.01)  # thresholds .50 .55 .60 .65 .70 of 10

    def test_no_predictions(self) -> None:
        gt = _square(8, 8, 0, 0, 4)[None]
        metric = MaskAP()
        metric.update(
            torch.zeros(0, 8, 8, dtype=torch.bool),
            torch.zeros(0),
            torch.zeros(0),
            gt,
            torch.tensor([0]),
        )
        assert metric.compute()["ap"] == 0.0

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="pred_masks"):
            MaskAP().update(
                torch.zeros(1, 4, 4, dtype=torch.bool),
                torch.ones(1),
                torch.zeros(1),
                torch.zeros(1, 5, 5, dtype=torch.bool),
                torch.zeros(1),
            )
        with pytest.raises(ValueError, match="2 targets"):
            mask_ap(
                [], [(torch.zeros(0, 2, 2), torch.zeros(0)), (torch.zeros(0, 2, 2), torch.zeros(0))]
            )


def test_missing_pycocotools_message(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if name.startswith("pycocotools"):
            raise ImportError("no pycocotools")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install pycocotools"):
        MaskAP()
