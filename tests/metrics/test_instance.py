from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")

from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from samkit.metrics.instance import MaskAP, mask_ap  # noqa: E402

STATS = (
    "ap ap50 ap75 ap_small ap_medium ap_large ar1 ar10 ar100 ar_small ar_medium ar_large".split()
)


def _pycocotools_stats(images: list[dict]) -> list[float]:
    """COCOeval straight from pycocotools on the same images (categories 1..9, RLE masks)."""
    gt_anns, dets, imgs = [], [], []
    for i, im in enumerate(images, start=1):
        h, w = im["gt_masks"].shape[-2:]
        imgs.append({"id": i, "height": h, "width": w})
        for m, c, crowd in zip(im["gt_masks"], im["gt_labels"], im["crowd"], strict=True):
            rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": i,
                    "category_id": int(c) + 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": list(mask_utils.toBbox(rle)),
                    "iscrowd": int(crowd),
                }
            )
        for m, s, c in zip(im["pred_masks"], im["scores"], im["pred_labels"], strict=True):
            rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
            dets.append(
                {"image_id": i, "category_id": int(c) + 1, "segmentation": rle, "score": float(s)}
            )
    cats = [{"id": c} for c in range(1, 10)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": imgs, "annotations": gt_anns, "categories": cats}
        gt.createIndex()
        if dets:
            dt = gt.loadRes(dets)
        else:  # loadRes cannot read an empty list: an empty result set
            dt = COCO()
            dt.dataset = {"images": imgs, "annotations": [], "categories": cats}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def _random_image(rng: np.random.Generator, n_gt: int, n_pred: int) -> dict:
    h, w = int(rng.integers(24, 160)), int(rng.integers(24, 160))

    def boxes(n: int) -> torch.Tensor:
        out = torch.zeros(n, h, w, dtype=torch.bool)
        for k in range(n):
            y0, x0 = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
            y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
            out[k, y0:y1, x0:x1] = True
        return out

    gt_masks, gt_labels = boxes(n_gt), rng.integers(0, 3, n_gt)
    pred_masks, pred_labels = boxes(n_pred), rng.integers(0, 3, n_pred)
    # most predictions are degraded copies of a ground truth (some rows dropped, usually the
    # right class), so that matches happen at every IoU threshold
    for k in range(min(n_gt, n_pred)):
        if rng.random() < 0.8:
            pred_masks[k] = gt_masks[k]
            rows = pred_masks[k].any(1).nonzero().flatten()
            drop = int(len(rows) * rng.random() * 0.5)
            pred_masks[k, rows[len(rows) - drop :]] = False
            if rng.random() < 0.8:
                pred_labels[k] = gt_labels[k]
    return {
        "gt_masks": gt_masks,
        "gt_labels": torch.from_numpy(gt_labels),
        "crowd": torch.from_numpy(rng.random(n_gt) < 0.15),
        "pred_masks": pred_masks,
        "scores": torch.from_numpy(rng.random(n_pred)).float(),
        "pred_labels": torch.from_numpy(pred_labels),
    }


def _ours(images: list[dict]) -> dict[str, float]:
    metric = MaskAP()
    for im in images:
        metric.update(
            im["pred_masks"],
            im["scores"],
            im["pred_labels"],
            im["gt_masks"],
            im["gt_labels"],
            im["crowd"],
        )
    return metric.compute()


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

    def test_reports_the_twelve_coco_stats(self) -> None:
        r = mask_ap(
            [(_square(32, 32, 0, 0, 8)[None], torch.tensor([0.9]), torch.tensor([0]))],
            [(_square(32, 32, 0, 0, 8)[None], torch.tensor([0]))],
        )
        assert tuple(r) == tuple(STATS) == MaskAP.KEYS
        # one small object found: AP/AR 1 overall and for "small", -1 (undefined) for the rest
        for k in ("ap", "ap50", "ap75", "ap_small", "ar1", "ar10", "ar100", "ar_small"):
            assert r[k] == pytest.approx(1.0), k
        assert r["ap_medium"] == r["ap_large"] == r["ar_medium"] == r["ar_large"] == -1.0

    @pytest.mark.parametrize("seed", range(6))
    def test_equals_pycocotools_on_random_images(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        images = [
            _random_image(rng, int(rng.integers(0, 6)), int(rng.integers(0, 8))) for _ in range(5)
        ]
        got = _ours(images)
        ref = _pycocotools_stats(images)
        assert [got[k] for k in STATS] == pytest.approx(ref, abs=1e-12)

    @pytest.mark.parametrize(
        "case", ["no_predictions", "image_without_predictions", "no_ground_truth", "nothing"]
    )
    def test_no_detection_cases_equal_pycocotools(self, case: str) -> None:
        rng = np.random.default_rng(7)
        images = [_random_image(rng, 4, 5) for _ in range(3)]
        if case in ("no_predictions", "nothing"):
            for im in images:
                im["pred_masks"] = im["pred_masks"][:0]
                im["scores"], im["pred_labels"] = im["scores"][:0], im["pred_labels"][:0]
        if case == "image_without_predictions":
            im = images[1]
            im["pred_masks"] = im["pred_masks"][:0]
            im["scores"], im["pred_labels"] = im["scores"][:0], im["pred_labels"][:0]
        if case in ("no_ground_truth", "nothing"):
            for im in images:
                im["gt_masks"] = im["gt_masks"][:0]
                im["gt_labels"], im["crowd"] = im["gt_labels"][:0], im["crowd"][:0]
        got = _ours(images)
        assert [got[k] for k in STATS] == pytest.approx(_pycocotools_stats(images), abs=1e-12)
        if case in ("no_ground_truth", "nothing"):
            assert set(got.values()) == {-1.0}
        assert set(_ours([]).values()) == {-1.0}  # before any image

    def test_input_contract(self) -> None:
        gt = _square(8, 8, 0, 0, 4)[None]
        ok = (gt, torch.tensor([0.5]), torch.tensor([0]), gt, torch.tensor([0]))
        MaskAP().update(*ok)
        with pytest.raises(ValueError, match="pred_masks: expected a binary mask"):
            MaskAP().update(gt.float() * 0.5, *ok[1:])
        with pytest.raises(ValueError, match="gt_masks: expected a binary mask"):
            MaskAP().update(*ok[:3], gt.long() * 3, ok[4])
        with pytest.raises(ValueError, match="pred_scores: expected finite"):
            MaskAP().update(ok[0], torch.tensor([float("nan")]), *ok[2:])
        with pytest.raises(ValueError, match=r"pred_scores: expected shape \(M\) with M=1"):
            MaskAP().update(ok[0], torch.tensor([0.5, 0.5]), *ok[2:])
        with pytest.raises(ValueError, match="pred_labels: expected integer class ids >= 0"):
            MaskAP().update(*ok[:2], torch.tensor([-1]), *ok[3:])
        with pytest.raises(ValueError, match="gt_labels: expected integer class ids >= 0"):
            MaskAP().update(*ok[:4], torch.tensor([0.5]))
        with pytest.raises(ValueError, match=r"gt_iscrowd: expected shape \(G\) with G=1"):
            MaskAP().update(*ok, torch.tensor([0, 1]))

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
