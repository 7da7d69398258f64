from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit.metrics.referring import (
    PR_THRESHOLDS,
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
        # Pr@X over the 3 targeted samples only (ReLA), IoUs 0.8, 1, 0
        assert r["pr@0.5"] == pytest.approx(2 / 3)
        assert r["pr@0.8"] == pytest.approx(2 / 3)
        assert r["pr@0.85"] == pytest.approx(1 / 3)
        assert r["n_acc"] == pytest.approx(1 / 2)  # TN=1, FP=1
        assert r["t_acc"] == pytest.approx(2 / 3)  # TP=2, FN=1
        assert r["n_acc_ref"] == pytest.approx(2 / 2)  # IoU==1: the perfect hit + the TN
        assert r["t_acc_ref"] == pytest.approx(1 / 3)  # only 0 < IoU < 1
        assert r["count"] == 5 and r["count_target"] == 3 and r["count_no_target"] == 2

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


def _rela_evaluate(
    preds: torch.Tensor, targets: torch.Tensor, pred_nt: torch.Tensor
) -> dict[str, float]:
    """Independent re-statement of ReLA's `ReferEvaluator.evaluate` (gres_model/evaluation/
    refer_evaluation.py), one source, with the paper's N-acc/T-acc and NaN for empty ratios.

    ReLA calls a correctly detected no-target sample TP; here "positive" is "has target", so
    ReLA's TP/FN on no-target samples are our TN/FP.
    """
    acc_iou = acc_i = acc_u = 0.0
    pr = dict.fromkeys(PR_THRESHOLDS, 0)
    n_targeted = n_empty = nt_correct = t_correct = 0
    for p, g, nt in zip(preds, targets, pred_nt.tolist(), strict=True):
        i, u = float((p & g).sum()), float((p | g).sum())
        if not g.any():
            n_empty += 1
            if nt:
                nt_correct += 1
                acc_iou += 1
            else:
                acc_u += u
        else:
            if nt:
                i = 0.0
            else:
                t_correct += 1
            this = 0.0 if u == 0 else i / u
            acc_iou += this
            acc_i += i
            acc_u += u
            n_targeted += 1
            for t in PR_THRESHOLDS:
                pr[t] += this >= t
    n = len(preds)
    out = {
        "giou": acc_iou / n if n else math.nan,
        "ciou": acc_i / acc_u if acc_u else math.nan,
        "n_acc": nt_correct / n_empty if n_empty else math.nan,
        "t_acc": t_correct / n_targeted if n_targeted else math.nan,
    }
    for t in PR_THRESHOLDS:
        out[f"pr@{t:g}"] = pr[t] / n_targeted if n_targeted else math.nan
    return out


class TestReLADefinitions:
    def test_pr_counts_targeted_samples_only(self) -> None:
        # two perfect no-target samples must not raise Pr@X (they did before: 3/5 instead of 2/3)
        preds, targets = _cases()
        r = referring_metrics(preds[:4], targets[:4])
        assert r["pr@0.5"] == pytest.approx(2 / 3)

    def test_has_target_decides_no_target(self) -> None:
        preds, targets = _cases()
        # the head says: has target, has target, none, none, none
        head = torch.tensor([True, True, False, False, False])
        inter, union, iou, pred_nt = referring_iou(preds, targets, has_target=head)
        assert pred_nt.tolist() == [False, False, True, True, True]
        # sample 4: 25 px mask but the head says "no target" on a no-target GT -> IoU 1, U 0
        assert iou.tolist() == pytest.approx([0.8, 1.0, 0.0, 1.0, 1.0])
        assert union.tolist() == [20, 4, 9, 0, 0]
        r = referring_metrics(preds, targets, has_target=head)
        assert r["n_acc"] == 1.0 and r["t_acc"] == pytest.approx(2 / 3)
        # a targeted sample the head rejects has I = 0 but keeps its mask's union (ReLA)
        head2 = torch.tensor([False, True, True, True, True])
        inter, union, iou, _ = referring_iou(preds, targets, has_target=head2)
        assert inter[0] == 0 and union[0] == 20 and iou[0] == 0
        # a no-target sample the head accepts with an empty mask is still wrong (IoU 0)
        assert iou[3] == 0 and union[3] == 0
        r2 = referring_metrics(preds, targets, has_target=head2)
        assert r2["n_acc"] == 0.0 and r2["t_acc"] == pytest.approx(2 / 3)
        assert r2["giou"] == pytest.approx((0 + 1 + 0 + 0 + 0) / 5)
        assert r2["ciou"] == pytest.approx(4 / (20 + 4 + 9 + 0 + 25))

    @given(st.integers(0, 2**16), st.booleans())
    def test_matches_rela_evaluator(self, seed: int, use_head: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        b = 12
        preds = torch.rand(b, 6, 6, generator=g) > torch.rand(b, 1, 1, generator=g)
        targets = torch.rand(b, 6, 6, generator=g) > torch.rand(b, 1, 1, generator=g)
        targets[torch.rand(b, generator=g) < 0.35] = False
        preds[torch.rand(b, generator=g) < 0.2] = False
        if use_head:
            head = torch.rand(b, generator=g) < 0.6
            got = referring_metrics(preds, targets, has_target=head)
            ref = _rela_evaluate(preds, targets, ~head)
        else:  # without a head, "no target" is an empty mask
            got = referring_metrics(preds, targets)
            ref = _rela_evaluate(preds, targets, ~preds.flatten(1).any(-1))
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, nan_ok=True), k

    def test_nan_when_a_denominator_is_empty(self) -> None:
        empty = torch.zeros(2, 3, 3, dtype=torch.bool)
        r = referring_metrics(empty, empty)  # no targeted sample
        assert r["giou"] == 1.0 and r["n_acc"] == 1.0
        assert math.isnan(r["t_acc"]) and math.isnan(r["pr@0.5"]) and math.isnan(r["ciou"])
        full = torch.ones(2, 3, 3, dtype=torch.bool)
        r = referring_metrics(full, full)  # no no-target sample
        assert math.isnan(r["n_acc"]) and math.isnan(r["n_acc_ref"]) and r["t_acc"] == 1.0

    @pytest.mark.parametrize("frame", ["original", "sam_padded"])
    def test_empty_batch(self, frame: str) -> None:
        m = ReferringMetrics(frame=frame, long_side=8, frame_size=4)  # type: ignore[arg-type]
        m.update(
            torch.zeros(0, 5, 6), torch.zeros(0, 5, 6, dtype=torch.bool), has_target=torch.zeros(0)
        )
        r = m.compute()
        assert r["count"] == 0 and math.isnan(r["giou"]) and math.isnan(r["n_acc"])

    def test_input_contract(self) -> None:
        preds, targets = _cases()
        with pytest.raises(ValueError, match="targets: expected a binary mask"):
            referring_metrics(preds, targets.float() * 0.7)
        with pytest.raises(ValueError, match="preds: expected a binary mask"):
            referring_iou(preds.long() * 2, targets)
        with pytest.raises(ValueError, match=r"has_target: expected shape \(B\) with B=5"):
            referring_metrics(preds, targets, has_target=torch.ones(4, dtype=torch.bool))
        with pytest.raises(ValueError, match="has_target: expected a binary mask"):
            referring_iou(preds, targets, has_target=torch.full((5,), 0.3))
        with pytest.raises(ValueError, match="empty_tolerance: expected an int >= 1"):
            ReferringMetrics(empty_tolerance=0)
        # 0/1 masks of any dtype are fine
        assert referring_metrics(preds.long(), targets.float()) == referring_metrics(preds, targets)
