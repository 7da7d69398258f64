from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit.metrics.referring import (
    REFERENCE_EMPTY_TOLERANCE,
    ReferringMetrics,
    has_target_from_mask,
    referring_iou,
    referring_metrics,
    to_sam_padded_frame,
)


def _mask(h: int, w: int, *boxes: tuple[int, int, int, int]) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def _cases():
    """Five samples on a 10x10 frame, with hand-computed I/U."""
    preds = torch.stack(
        [
            _mask(10, 10, (0, 4, 0, 5)),  # GT 4x4 at (0,0): I=16, U=20, IoU=0.8
            _mask(10, 10, (0, 2, 0, 2)),  # perfect: I=U=4
            _mask(10, 10),  # target missed: I=0, U=9, IoU=0
            _mask(10, 10),  # no target, empty pred: IoU 1, I=U=0
            _mask(10, 10, (5, 10, 5, 10)),  # no target, 25 px pred: IoU 0, U=25
        ]
    )
    targets = torch.stack(
        [
            _mask(10, 10, (0, 4, 0, 4)),
            _mask(10, 10, (0, 2, 0, 2)),
            _mask(10, 10, (7, 10, 7, 10)),
            _mask(10, 10),
            _mask(10, 10),
        ]
    )
    return preds, targets


class TestReferringMetrics:
    def test_hand_computed(self) -> None:
        r = referring_metrics(*_cases())
        assert r["giou"] == pytest.approx((0.8 + 1 + 0 + 1 + 0) / 5)
        assert r["miou"] == r["giou"]
        assert r["ciou"] == pytest.approx((16 + 4) / (20 + 4 + 9 + 0 + 25))
        assert r["oiou"] == r["ciou"]
        assert r["pr@0.5"] == pytest.approx(3 / 5)
        assert r["pr@0.8"] == pytest.approx(3 / 5)
        assert r["pr@0.85"] == pytest.approx(2 / 5)
        assert r["n_acc"] == pytest.approx(1 / 2)  # TN=1, FP=1
        assert r["t_acc"] == pytest.approx(2 / 3)  # TP=2, FN=1
        assert r["n_acc_ref"] == pytest.approx(2 / 2)  # IoU==1: the perfect hit + the TN
        assert r["t_acc_ref"] == pytest.approx(1 / 3)  # only 0 < IoU < 1
        assert r["count"] == 5

    def test_empty_tolerance(self) -> None:
        preds, targets = _cases()
        r = referring_metrics(preds, targets, empty_tolerance=26)  # the 25 px FP becomes a TN
        assert r["n_acc"] == 1.0
        assert r["giou"] == pytest.approx((0.8 + 1 + 0 + 1 + 1) / 5)
        assert r["ciou"] == pytest.approx(20 / 33)
        assert REFERENCE_EMPTY_TOLERANCE == 50

    def test_streaming_equals_one_shot(self) -> None:
        preds, targets = _cases()
        m = ReferringMetrics()
        for i in range(5):
            m.update(preds[i : i + 1], targets[i : i + 1])
        one = referring_metrics(preds, targets)
        for k, v in m.compute().items():
            assert v == pytest.approx(one[k]), k
        m.reset()
        assert math.isnan(m.compute()["giou"])

    def test_logits(self) -> None:
        preds, targets = _cases()
        logits = torch.where(preds, 3.0, -3.0)
        assert referring_metrics(logits, targets) == referring_metrics(preds, targets)

    def test_sam_padded_frame(self) -> None:
        targets = _mask(6, 12, (0, 6, 0, 6))[None]  # left half of a 6x12 image
        preds = _mask(6, 12, (0, 6, 0, 12))[None]
        out = to_sam_padded_frame(targets, long_side=24, frame_size=12)
        assert out.shape == (1, 12, 12)
        assert out[0, :6, :6].all() and out.sum() == 36  # the image occupies the top 6 rows
        r = referring_metrics(preds, targets, frame="sam_padded", long_side=24, frame_size=12)
        assert r["giou"] == pytest.approx(0.5)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"preds: expected shape \(B, H, W\)"):
            referring_iou(torch.zeros(2, 4, 5), torch.zeros(2, 4, 4))
        with pytest.raises(ValueError, match="frame must be"):
            ReferringMetrics(frame="crop")  # type: ignore[arg-type]

    def test_device(self, device: torch.device) -> None:
        preds, targets = _cases()
        r = referring_metrics(preds.to(device), targets.to(device))
        assert r["giou"] == pytest.approx(0.56)


def test_has_target_from_mask() -> None:
    logits = torch.full((3, 1, 8, 8), -1.0)
    logits[0, 0, 0, 0] = 1
    logits[1, 0, :4, :4] = 1
    assert has_target_from_mask(logits).tolist() == [True, True, False]
    assert has_target_from_mask(logits, min_fraction=4 / 64).tolist() == [False, True, False]


@given(st.integers(0, 2**16))
def test_iou_matches_definition(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    preds = torch.rand(4, 5, 5, generator=g) > 0.6
    targets = torch.rand(4, 5, 5, generator=g) > 0.6
    targets[0] = False
    inter, union, iou, _ = referring_iou(preds, targets)
    for i in range(4):
        p, t = preds[i], targets[i]
        if not t.any():
            assert iou[i] == (0.0 if p.any() else 1.0)
        else:
            assert iou[i] == pytest.approx((p & t).sum().item() / (p | t).sum().item())
    assert (iou >= 0).all() and (iou <= 1).all() and (inter <= union).all()
