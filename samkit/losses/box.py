"""Box regression losses: L1 and generalised IoU (via `torchvision.ops`).

Boxes are `(..., 4)`; the last axis holds one box in `box_format` (`"cxcywh"`, `"xyxy"` or
`"xywh"`, as in `torchvision.ops.box_convert`). Every leading index is one (prediction, target)
pair. With `reduction="mean"` the per-box losses are averaged over boxes, which equals DETR's
"sum over boxes / number of boxes".
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torchvision.ops import box_convert
from torchvision.ops import generalized_box_iou_loss as _tv_giou_loss

from samkit._checks import as_float
from samkit.losses.segmentation import Reduction, _loss_dtype, _reduce

__all__ = ["BoxL1Loss", "GIoULoss", "box_l1_loss", "giou_loss"]

BoxFormat = Literal["cxcywh", "xyxy", "xywh"]


def _check_boxes(pred: Tensor, target: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Check shapes; return `(pred, target)` in float32 (float64 for float64 predictions)."""
    if pred.shape != target.shape or pred.dim() < 1 or pred.shape[-1] != 4:
        raise ValueError(
            f"{name}: expected pred and target of the same shape (..., 4), "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    dtype = _loss_dtype(pred)
    target = target.to(dtype) if not target.is_floating_point() else target
    return as_float(pred, name="pred", dtype=dtype), as_float(target, name="target", dtype=dtype)


def box_l1_loss(pred: Tensor, target: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """L1 distance between paired boxes, summed over the 4 coordinates of each box.

    Args:
        pred: Predicted boxes `(..., 4)`, any format (both in the same one).
        target: Target boxes `(..., 4)`.
        reduction: `"none"` gives one value per box `(...)`; `"mean"` / `"sum"` over boxes.

    Returns:
        The loss.

    Raises:
        ValueError: If the shapes differ or the last axis is not 4.

    Examples:
        >>> box_l1_loss(torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.tensor([[0.4, 0.5, 0.2, 0.4]]))
        tensor(0.3000)
    """
    pred, target = _check_boxes(pred, target, "box_l1_loss")
    return _reduce((pred - target).abs().sum(-1), reduction)


def giou_loss(
    pred: Tensor,
    target: Tensor,
    *,
    box_format: BoxFormat = "cxcywh",
    reduction: Reduction = "mean",
    eps: float = 1e-7,
) -> Tensor:
    """`1 - GIoU` between paired boxes (Rezatofighi et al., 2019), via `torchvision.ops`.

    Args:
        pred: Predicted boxes `(..., 4)` in `box_format`.
        target: Target boxes `(..., 4)` in `box_format`; degenerate (zero-size) boxes are allowed.
        box_format: `"cxcywh"` (SSP-SAM's normalised boxes), `"xyxy"` or `"xywh"`.
        reduction: `"none"` gives one value per box `(...)`; `"mean"` / `"sum"` over boxes.
        eps: Guard against division by zero (torchvision's).

    Returns:
        The loss, in `[0, 2]` per box.

    Raises:
        ValueError: If the shapes differ or the last axis is not 4.

    Examples:
        >>> b = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
        >>> round(giou_loss(b, b).item(), 4), round(giou_loss(b, b + 0.5).item(), 4)
        (0.0, 1.4127)
    """
    pred, target = _check_boxes(pred, target, "giou_loss")
    shape = pred.shape[:-1]
    p = box_convert(pred.reshape(-1, 4), box_format, "xyxy")
    t = box_convert(target.reshape(-1, 4), box_format, "xyxy")
    loss = _tv_giou_loss(p, t, reduction="none", eps=eps).reshape(shape)
    return _reduce(loss, reduction)


class BoxL1Loss(nn.Module):
    """Module form of `box_l1_loss`.

    Examples:
        >>> BoxL1Loss()(torch.zeros(2, 4), torch.ones(2, 4))
        tensor(4.)
    """

    def __init__(self, *, reduction: Reduction = "mean") -> None:
        """Create the loss.

        Args:
            reduction: `"none"`, `"mean"` or `"sum"`.
        """
        super().__init__()
        self.reduction: Reduction = reduction

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Compute the loss; see `box_l1_loss`."""
        return box_l1_loss(pred, target, reduction=self.reduction)


class GIoULoss(nn.Module):
    """Module form of `giou_loss`.

    Examples:
        >>> loss = GIoULoss(box_format="xyxy", reduction="none")
        >>> loss(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[0.0, 0, 2, 1]])).shape
        torch.Size([1])
    """

    def __init__(
        self, *, box_format: BoxFormat = "cxcywh", reduction: Reduction = "mean", eps: float = 1e-7
    ) -> None:
        """Create the loss.

        Args:
            box_format: `"cxcywh"`, `"xyxy"` or `"xywh"`.
            reduction: `"none"`, `"mean"` or `"sum"`.
            eps: Division guard.
        """
        super().__init__()
        self.box_format: BoxFormat = box_format
        self.reduction: Reduction = reduction
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Compute the loss; see `giou_loss`."""
        return giou_loss(
            pred, target, box_format=self.box_format, reduction=self.reduction, eps=self.eps
        )
