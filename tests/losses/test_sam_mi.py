from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from samkit.losses.sam_mi import SAMMILoss, cost_aggregation_loss, tspp_loss
from samkit.modules.tspp import masks_from_labels, tspp_targets
from samkit.types import SAMMIOutput, TSPPOutput


def _tspp_out(
    b: int = 2, t: int = 3, g: int = 8, h: int = 4, requires_grad: bool = False
) -> TSPPOutput:
    mask_logits = torch.randn(b, t, h, h, requires_grad=requires_grad)
    prob_logits = torch.randn(b, t, g, g, requires_grad=requires_grad)
    return TSPPOutput(
        prob=prob_logits.amax(1).sigmoid(),
        prob_logits=prob_logits,
        mask_logits=mask_logits,
        text_masks=torch.zeros(b, t, h, h, dtype=torch.bool),
    )


def _output(tspp: TSPPOutput | None, logits: torch.Tensor) -> SAMMIOutput:
    b = logits.shape[0]
    empty = torch.zeros(b, 0, *logits.shape[-2:], dtype=torch.bool)
    return SAMMIOutput(
        logits,
        torch.zeros(b, 0, 2),
        torch.zeros(b, 0).bool(),
        empty,
        empty,
        torch.zeros(b, 0).bool(),
        tspp,
    )


class TestCostAggregationLoss:
    def test_matches_reference_formula(self) -> None:
        logits, labels = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 8, 8))
        labels[0, 0, 0] = 255
        up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
        onehot = F.one_hot(labels.clamp_max(2), 3).permute(0, 3, 1, 2).float()
        onehot[0, :, 0, 0] = 0  # the void pixel has an all-zero target
        ref = F.binary_cross_entropy_with_logits(up, onehot)
        torch.testing.assert_close(cost_aggregation_loss(logits, labels), ref)

    def test_exclude_mode(self) -> None:
        logits, labels = torch.randn(1, 2, 4, 4), torch.full((1, 4, 4), 255)
        labels[0, 0, 0] = 1
        got = cost_aggregation_loss(logits, labels, ignore_mode="exclude")
        ref = F.binary_cross_entropy_with_logits(logits[0, :, 0, 0], torch.tensor([0.0, 1.0]))
        torch.testing.assert_close(got, ref)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="labels"):
            cost_aggregation_loss(torch.randn(2, 3, 4, 4), torch.zeros(3, 4, 4).long())
        with pytest.raises(ValueError, match="ignore_mode"):
            cost_aggregation_loss(
                torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4).long(), ignore_mode="x"
            )  # type: ignore[arg-type]

    def test_gradcheck(self) -> None:
        logits = torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
        labels = torch.tensor([[[0, 1, 1, 255]] * 4])
        assert torch.autograd.gradcheck(
            lambda x: cost_aggregation_loss(x, labels), (logits,), fast_mode=True
        )


class TestTSPPLoss:
    def test_matches_definition(self) -> None:
        out, labels = _tspp_out(), torch.randint(0, 3, (2, 16, 16))
        labels[:, :2] = 255
        targets = torch.rand(2, 8, 8)
        up = F.interpolate(out.mask_logits, size=(16, 16), mode="bilinear", align_corners=False)
        ref = F.cross_entropy(up, labels, ignore_index=255) + 0.5 * F.mse_loss(out.prob, targets)
        torch.testing.assert_close(tspp_loss(out, targets, labels), ref)

    def test_all_void_is_finite(self) -> None:
        out = _tspp_out()
        loss = tspp_loss(out, torch.zeros(2, 8, 8), torch.full((2, 4, 4), 255))
        torch.testing.assert_close(loss, 0.5 * out.prob.square().mean())

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="prob"):
            tspp_loss(_tspp_out(), torch.zeros(2, 6, 6), torch.zeros(2, 4, 4).long())


class TestSAMMILoss:
    def test_stages(self) -> None:
        out = _output(_tspp_out(requires_grad=True), torch.randn(2, 3, 8, 8, requires_grad=True))
        labels = torch.randint(0, 3, (2, 16, 16))
        crit = SAMMILoss()
        targets = tspp_targets(masks_from_labels(labels, 3), grid=8)
        l_tspp = tspp_loss(out.tspp, targets, labels)  # type: ignore[arg-type]
        torch.testing.assert_close(crit(out, labels, stage=1), l_tspp)
        l_ce = cost_aggregation_loss(out.logits, labels)
        total = crit(out, labels, stage=2)
        torch.testing.assert_close(total, l_ce + 0.1 * l_tspp)
        assert crit.last_terms["ce"] == pytest.approx(l_ce.item(), rel=1e-5)
        total.backward()
        assert out.logits.grad is not None and out.tspp.mask_logits.grad is not None  # type: ignore[union-attr]

    def test_without_tspp(self) -> None:
        out = _output(None, torch.randn(1, 3, 8, 8))
        labels = torch.randint(0, 3, (1, 8, 8))
        torch.testing.assert_close(
            SAMMILoss()(out, labels), cost_aggregation_loss(out.logits, labels)
        )
        with pytest.raises(ValueError, match="no TSPP"):
            SAMMILoss()(out, labels, stage=1)
        with pytest.raises(ValueError, match="stage must be"):
            SAMMILoss()(out, labels, stage=3)


class TestInputContract:
    """Regression tests of issue #11 item 5 (each failed on f8b78a2)."""

    def test_zero_classes(self) -> None:
        labels = torch.zeros(1, 8, 8, dtype=torch.long)
        with pytest.raises(ValueError, match=r"^logits: expected at least one class \(T >= 1\)"):
            cost_aggregation_loss(torch.zeros(1, 0, 4, 4), labels)

    def test_empty_batch(self) -> None:
        # before: NaN
        labels = torch.zeros(0, 8, 8, dtype=torch.long)
        assert cost_aggregation_loss(torch.zeros(0, 3, 4, 4), labels).item() == 0.0
        out = TSPPOutput(
            torch.zeros(0, 4, 4),
            torch.zeros(0, 3, 4, 4),
            torch.zeros(0, 3, 4, 4),
            torch.zeros(0, 3, 4, 4, dtype=torch.bool),
        )
        assert tspp_loss(out, torch.zeros(0, 4, 4), labels).item() == 0.0

    def test_probabilities_outside_unit_interval(self) -> None:
        out = TSPPOutput(
            torch.full((1, 4, 4), 0.5),
            torch.zeros(1, 2, 4, 4),
            torch.zeros(1, 2, 4, 4),
            torch.zeros(1, 2, 4, 4, dtype=torch.bool),
        )
        labels = torch.zeros(1, 8, 8, dtype=torch.long)
        with pytest.raises(ValueError, match=r"^prob_targets: expected probabilities in \[0, 1\]"):
            tspp_loss(out, torch.full((1, 4, 4), 3.0), labels)
