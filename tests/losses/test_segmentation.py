from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit.losses.segmentation import (
    DiceLoss,
    SigmoidFocalLoss,
    dice_loss,
    pairwise_dice_loss,
    sigmoid_focal_loss,
)


def _focal_by_hand(x: float, t: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = 1 / (1 + math.exp(-x))
    p_t = p * t + (1 - p) * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t)
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    return a_t * (1 - p_t) ** gamma * ce


class TestSigmoidFocalLoss:
    def test_hand_computed(self) -> None:
        x = torch.tensor([0.3, -1.2, 2.0])
        t = torch.tensor([1.0, 0.0, 0.0])
        got = sigmoid_focal_loss(x, t, reduction="none")
        want = torch.tensor(
            [_focal_by_hand(0.3, 1), _focal_by_hand(-1.2, 0), _focal_by_hand(2.0, 0)]
        )
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(sigmoid_focal_loss(x, t), want.mean())
        torch.testing.assert_close(sigmoid_focal_loss(x, t, reduction="sum"), want.sum())

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"same shape, got \(2,\) and \(3,\)"):
            sigmoid_focal_loss(torch.zeros(2), torch.zeros(3))
        with pytest.raises(ValueError, match="reduction must be"):
            sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), reduction="max")  # type: ignore[arg-type]

    def test_module_matches_functional(self, device: torch.device) -> None:
        x, t = torch.randn(2, 5, 5, device=device), torch.rand(2, 5, 5, device=device).round()
        torch.testing.assert_close(
            SigmoidFocalLoss(alpha=0.4, gamma=1.5)(x, t),
            sigmoid_focal_loss(x, t, alpha=0.4, gamma=1.5),
        )

    def test_gradcheck(self) -> None:
        x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        t = torch.rand(3, 4, dtype=torch.float64).round()
        assert torch.autograd.gradcheck(lambda a: sigmoid_focal_loss(a, t), (x,))


class TestDiceLoss:
    def test_hand_computed(self) -> None:
        logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # p = 0.5 everywhere
        target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
        # 1 - (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5
        torch.testing.assert_close(dice_loss(logits, target), torch.tensor(0.5))

    def test_perfect_and_disjoint(self) -> None:
        t = torch.zeros(2, 8, 8)
        t[0, :4] = 1
        t[1, :, :2] = 1
        perfect = dice_loss(torch.where(t > 0, 30.0, -30.0), t, reduction="none", eps=1e-6)
        wrong = dice_loss(torch.where(t > 0, -30.0, 30.0), t, reduction="none", eps=1e-6)
        assert perfect.shape == (2,)
        torch.testing.assert_close(perfect, torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(wrong, torch.ones(2), atol=1e-5, rtol=0)

    def test_spatial_dims(self) -> None:
        x, t = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4).round()
        torch.testing.assert_close(
            dice_loss(x, t, reduction="none"),
            dice_loss(x.flatten(-2), t.flatten(-2), spatial_dims=1, reduction="none"),
        )
        assert dice_loss(x, t, spatial_dims=3, reduction="none").shape == (2,)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="same shape"):
            dice_loss(torch.zeros(2, 3), torch.zeros(3, 2))
        with pytest.raises(ValueError, match="at least 2 dims"):
            dice_loss(torch.zeros(3), torch.zeros(3))

    def test_module_matches_functional(self, device: torch.device) -> None:
        x, t = torch.randn(2, 5, 5, device=device), torch.rand(2, 5, 5, device=device).round()
        torch.testing.assert_close(DiceLoss(eps=0.5)(x, t), dice_loss(x, t, eps=0.5))

    def test_gradcheck(self) -> None:
        x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
        t = torch.rand(2, 3, 3, dtype=torch.float64).round()
        assert torch.autograd.gradcheck(lambda a: dice_loss(a, t), (x,))

    def test_compile(self) -> None:
        x, t = torch.randn(2, 4, 4), torch.rand(2, 4, 4).round()
        compiled = torch.compile(DiceLoss(), backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x, t), DiceLoss()(x, t))

    @given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.integers(0, 1000))
    def test_pairwise_matches_elementwise(self, k: int, m: int, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(k, n, generator=g)
        targets = (torch.rand(m, n, generator=g) > 0.5).float()
        cost = pairwise_dice_loss(logits, targets)
        assert cost.shape == (k, m)
        for i in range(k):
            for j in range(m):
                want = dice_loss(logits[i : i + 1], targets[j : j + 1], spatial_dims=1)
                torch.testing.assert_close(cost[i, j], want)

    def test_pairwise_exception(self) -> None:
        with pytest.raises(ValueError, match=r"expected \(K, N\) and \(M, N\)"):
            pairwise_dice_loss(torch.zeros(2, 3), torch.zeros(2, 4))


class TestInputContract:
    """Regression tests of issue #11 item 5 (each failed on f8b78a2)."""

    def test_empty_batch_is_zero_not_nan(self) -> None:
        logits = torch.zeros(0, 1, 8, 8, requires_grad=True)
        targets = torch.zeros(0, 1, 8, 8)
        for loss in (dice_loss(logits, targets), sigmoid_focal_loss(logits, targets)):
            assert loss.shape == () and loss.item() == 0.0
            loss.backward()  # still part of the graph

    def test_targets_outside_unit_interval(self) -> None:
        # before: targets of 255 (a label map passed as a mask) gave a finite, meaningless loss
        logits = torch.zeros(1, 4, 4)
        with pytest.raises(ValueError, match=r"^targets: expected probabilities in \[0, 1\]"):
            dice_loss(logits, torch.full((1, 4, 4), 255.0))
        with pytest.raises(ValueError, match=r"^targets: expected probabilities in \[0, 1\]"):
            sigmoid_focal_loss(logits, torch.full((1, 4, 4), -1.0))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_logits_give_the_float32_loss(self, dtype: torch.dtype) -> None:
        logits = torch.randn(2, 1, 8, 8)
        targets = (torch.rand(2, 1, 8, 8) > 0.5).float()
        for fn in (dice_loss, sigmoid_focal_loss):
            got = fn(logits.to(dtype), targets)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, fn(logits, targets), atol=1e-2, rtol=1e-2)
