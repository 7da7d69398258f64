from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit.losses.box import BoxL1Loss, GIoULoss, box_l1_loss, giou_loss


def _detr_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Paired GIoU on xyxy boxes, DETR's util/box_ops formula written out."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    lt_c, rb_c = torch.min(a[:, :2], b[:, :2]), torch.max(a[:, 2:], b[:, 2:])
    area_c = (rb_c - lt_c).clamp(min=0).prod(-1)
    return inter / union - (area_c - union) / area_c


def _cxcywh(n: int, g: torch.Generator | None = None) -> torch.Tensor:
    c = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat([c, wh], -1)


class TestBoxL1Loss:
    def test_hand_values(self) -> None:
        p = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]])
        t = torch.tensor([[0.4, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1]])
        torch.testing.assert_close(box_l1_loss(p, t, reduction="none"), torch.tensor([0.3, 0.4]))
        torch.testing.assert_close(box_l1_loss(p, t), torch.tensor(0.35))
        torch.testing.assert_close(box_l1_loss(p, t, reduction="sum"), torch.tensor(0.7))

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"box_l1_loss: expected pred and target .*\(..., 4\)"):
            box_l1_loss(torch.zeros(2, 4), torch.zeros(3, 4))
        with pytest.raises(ValueError, match="reduction must be"):
            box_l1_loss(torch.zeros(2, 4), torch.zeros(2, 4), reduction="max")  # type: ignore[arg-type]

    def test_module_matches_functional(self) -> None:
        p, t = _cxcywh(5), _cxcywh(5)
        torch.testing.assert_close(
            BoxL1Loss(reduction="sum")(p, t), box_l1_loss(p, t, reduction="sum")
        )

    def test_gradcheck(self) -> None:
        p, t = _cxcywh(3).double().requires_grad_(), _cxcywh(3).double()
        assert torch.autograd.gradcheck(lambda x: box_l1_loss(x, t), (p,))


class TestGIoULoss:
    def test_hand_values(self) -> None:
        a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
        b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0]])
        # pair 0: inter 1, union 7, hull 9 -> giou = 1/7 - 2/9; pair 1: disjoint, hull 3 -> -1/3
        expected = torch.tensor([1 - (1 / 7 - 2 / 9), 1 + 1 / 3])
        torch.testing.assert_close(giou_loss(a, b, box_format="xyxy", reduction="none"), expected)

    def test_matches_detr_formula(self) -> None:
        p, t = _cxcywh(6), _cxcywh(6)
        to_xyxy = lambda x: torch.cat([x[:, :2] - x[:, 2:] / 2, x[:, :2] + x[:, 2:] / 2], -1)  # noqa: E731
        expected = (1 - _detr_giou(to_xyxy(p), to_xyxy(t))).mean()
        torch.testing.assert_close(giou_loss(p, t), expected, atol=1e-5, rtol=1e-5)

    def test_degenerate_target_is_finite(self) -> None:
        out = giou_loss(_cxcywh(2), torch.zeros(2, 4), reduction="none")
        assert out.isfinite().all() and (out > 1).all()

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="giou_loss"):
            giou_loss(torch.zeros(2, 3), torch.zeros(2, 3))

    def test_module_matches_functional(self, device: torch.device) -> None:
        p, t = _cxcywh(4).to(device), _cxcywh(4).to(device)
        out = GIoULoss()(p, t)
        assert out.device.type == device.type
        torch.testing.assert_close(out, giou_loss(p, t))

    def test_gradcheck(self) -> None:
        p = _cxcywh(3).double().requires_grad_()
        t = _cxcywh(3).double()
        assert torch.autograd.gradcheck(lambda x: giou_loss(x, t), (p,))

    def test_compile(self) -> None:
        p, t = _cxcywh(4), _cxcywh(4)
        compiled = torch.compile(GIoULoss(), backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(p, t), giou_loss(p, t))


@given(st.integers(0, 2**16))
def test_giou_symmetric_and_bounded(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    p, t = _cxcywh(4, g), _cxcywh(4, g)
    a, b = giou_loss(p, t, reduction="none"), giou_loss(t, p, reduction="none")
    torch.testing.assert_close(a, b)
    assert ((a >= 0) & (a <= 2)).all()
    assert giou_loss(p, p).abs() < 1e-3  # torchvision's eps=1e-7 in the IoU denominator


class TestInputContract:
    """Regression tests of issue #11 item 5 (each failed on f8b78a2)."""

    def test_empty_batch_is_zero_not_nan(self) -> None:
        assert giou_loss(torch.zeros(0, 4), torch.zeros(0, 4)).item() == 0.0
        assert box_l1_loss(torch.zeros(0, 4), torch.zeros(0, 4)).item() == 0.0

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_boxes_give_the_float32_loss(self, dtype: torch.dtype) -> None:
        # a pin, not a regression: torchvision already computed this in float32 on f8b78a2
        pred, target = torch.rand(5, 4) * 0.5 + 0.25, torch.rand(5, 4) * 0.5 + 0.25
        got = giou_loss(pred.to(dtype), target)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, giou_loss(pred, target), atol=2e-2, rtol=2e-2)
