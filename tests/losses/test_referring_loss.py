from __future__ import annotations

import pytest
import torch

from samkit.losses.referring import ReferringLoss, referring_loss


def _reference_dice(logits: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid().flatten(1)
    g = g.flatten(1)
    return (1 - (2 * (p * g).sum(1) + 1) / (p.sum(1) + g.sum(1) + 1)).sum() / logits.shape[0]


def _reference_focal(logits: torch.Tensor, g: torch.Tensor, alpha=0.25, gamma=2.0) -> torch.Tensor:
    p = logits.sigmoid()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, g, reduction="none")
    pt = (1 - p) * g + p * (1 - g)
    return (bce * (alpha * g + (1 - alpha) * (1 - g)) * pt**gamma).mean()


def _batch():
    logits = torch.randn(3, 1, 8, 8)
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, :, 1:5, 2:6] = 1
    masks[1, :, 4:, :] = 1
    pred_boxes = torch.rand(3, 4) * 0.5 + 0.25
    boxes = torch.tensor([[0.5, 0.375, 0.5, 0.5], [0.5, 0.75, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    return logits, masks, pred_boxes, boxes


class TestReferringLoss:
    def test_reference_terms_and_weights(self) -> None:
        logits, masks, pb, tb = _batch()
        out = referring_loss(logits, masks, pb, tb, empty_box="include")
        torch.testing.assert_close(out.dice, _reference_dice(logits, masks))
        torch.testing.assert_close(out.focal, _reference_focal(logits, masks))
        torch.testing.assert_close(out.l1, (pb - tb).abs().sum() / 3)
        expected = 4 * out.dice + 4 * out.focal + 5 * out.l1 + 2 * out.giou
        torch.testing.assert_close(out.total, expected)

    def test_empty_box_skip(self) -> None:
        logits, masks, pb, tb = _batch()
        skip = referring_loss(logits, masks, pb, tb)
        torch.testing.assert_close(skip.l1, (pb[:2] - tb[:2]).abs().sum() / 2)
        only_empty = referring_loss(None, None, pb[2:], tb[2:])
        assert only_empty.l1 == 0 and only_empty.giou == 0 and only_empty.total == 0

    def test_box_only(self) -> None:
        _, _, pb, tb = _batch()
        out = referring_loss(None, None, pb, tb, dice_weight=0, focal_weight=0)
        torch.testing.assert_close(out.total, 5 * out.l1 + 2 * out.giou)

    def test_presence_term(self) -> None:
        logits, masks, pb, tb = _batch()
        presence, has = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([True, True, False])
        out = referring_loss(
            logits, masks, pb, tb, presence_logits=presence, has_target=has, presence_weight=3.0
        )
        p = presence.sigmoid()
        expected = -(torch.log(p[0]) + torch.log(p[1]) + torch.log(1 - p[2])) / 3
        torch.testing.assert_close(out.presence, expected)
        plain = referring_loss(logits, masks, pb, tb)
        assert plain.presence is None
        torch.testing.assert_close(out.total, plain.total + 3.0 * expected)
        with pytest.raises(ValueError, match="presence_logits need has_target"):
            referring_loss(logits, masks, pb, tb, presence_logits=presence)

    def test_exception(self) -> None:
        logits, masks, pb, tb = _batch()
        with pytest.raises(ValueError, match=r"mask_targets: expected shape \(B, 1, H, W\)"):
            referring_loss(logits, masks[:, :, :4], pb, tb)
        with pytest.raises(ValueError, match="pred_boxes"):
            referring_loss(logits, masks, pb[:, :3], tb)
        with pytest.raises(ValueError, match="empty_box must be"):
            referring_loss(logits, masks, pb, tb, empty_box="drop")  # type: ignore[arg-type]

    def test_module_matches_functional(self, device: torch.device) -> None:
        args = [t.to(device) for t in _batch()]
        a = ReferringLoss(dice_weight=1, empty_box="include")(*args)
        b = referring_loss(*args, dice_weight=1, empty_box="include")
        assert a.total.device.type == device.type
        torch.testing.assert_close(a.total, b.total)

    def test_gradcheck(self) -> None:
        logits, masks, pb, tb = (t.double() for t in _batch())
        logits = logits[..., :3, :3].contiguous().requires_grad_()
        masks = masks[..., :3, :3].contiguous()
        pb = pb.requires_grad_()
        assert torch.autograd.gradcheck(
            lambda x, b: referring_loss(x, masks, b, tb).total, (logits, pb), fast_mode=True
        )

    def test_compile(self) -> None:
        args = _batch()
        compiled = torch.compile(ReferringLoss(), backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(*args).total, referring_loss(*args).total)


class TestInputContract:
    """Regression tests of issue #11 item 5 (each failed on f8b78a2)."""

    def test_empty_batch(self) -> None:
        # before: NaN (mean over no mask)
        out = referring_loss(
            torch.zeros(0, 1, 8, 8), torch.zeros(0, 1, 8, 8), torch.zeros(0, 4), torch.zeros(0, 4)
        )
        assert out.total.shape == () and out.total.item() == 0.0

    def test_soft_mask_targets_are_rejected(self) -> None:
        with pytest.raises(ValueError, match=r"^mask_targets: expected a binary mask"):
            referring_loss(
                torch.zeros(1, 1, 4, 4),
                torch.full((1, 1, 4, 4), 0.5),
                torch.rand(1, 4),
                torch.rand(1, 4),
            )
        with pytest.raises(ValueError, match=r"^has_target: expected a binary mask"):
            referring_loss(
                None,
                None,
                torch.rand(1, 4),
                torch.rand(1, 4),
                presence_logits=torch.zeros(1),
                has_target=torch.tensor([0.7]),
            )
