"""Semantic-segmentation IoU from a streaming confusion matrix, with an ignore index.

`SemanticIoU` accumulates a `(T, T)` confusion matrix over any number of batches (rows: ground
truth, columns: prediction) and `mean_iou` is its one-shot functional form. Classes that appear
neither in the ground truth nor in the predictions have an undefined IoU (`NaN` per class) and are
left out of the mean, as in mmsegmentation and `torchmetrics`' `MulticlassJaccardIndex` with
`average="macro"` over present classes.

Axis legend: `B` images, `T` classes, `H W` pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from samkit._checks import check_shape

__all__ = ["SemanticIoU", "confusion_matrix", "mean_iou"]


def _as_labels(preds: Tensor, num_classes: int) -> Tensor:
    """Turn `(B, T, H, W)` scores into `(B, H, W)` labels; pass label maps through."""
    if preds.dim() == 4:
        check_shape(preds, "B T H W", name="preds", known={"T": num_classes})
        return preds.argmax(dim=1)
    return preds


def confusion_matrix(
    preds: Tensor, targets: Tensor, *, num_classes: int, ignore_index: int | None = 255
) -> Tensor:
    """Count `(ground truth, prediction)` pairs over all valid pixels.

    Args:
        preds: Predicted labels `(B, H, W)` or class scores `(B, T, H, W)` (argmax taken).
        targets: Ground-truth labels `(B, H, W)`; pixels equal to `ignore_index` are skipped, and so
            are labels outside `[0, num_classes)`.
        num_classes: Number of classes `T`.
        ignore_index: Label to skip, or `None`.

    Returns:
        A `(T, T)` int64 matrix; entry `[i, j]` counts pixels of class `i` predicted as `j`.

    Raises:
        ValueError: If the label maps do not share `(B, H, W)`.

    Examples:
        >>> confusion_matrix(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]), num_classes=2)
        tensor([[1, 1],
                [0, 0]])
    """
    labels = _as_labels(preds, num_classes)
    sizes = check_shape(targets, "B H W", name="targets")
    check_shape(labels, "B H W", name="preds", known=sizes)
    t = targets.reshape(-1).long()
    p = labels.reshape(-1).long()
    valid = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        valid &= t != ignore_index
    p = p.clamp(0, num_classes - 1)
    idx = torch.where(valid, t * num_classes + p, torch.full_like(t, num_classes * num_classes))
    counts = torch.bincount(idx, minlength=num_classes * num_classes + 1)
    return counts[: num_classes * num_classes].reshape(num_classes, num_classes)


def _iou_from_confusion(conf: Tensor) -> tuple[Tensor, Tensor]:
    conf = conf.double()
    tp = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - tp
    per_class = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    present = ~per_class.isnan()
    miou = per_class[present].mean() if bool(present.any()) else torch.zeros((), dtype=conf.dtype)
    return miou, per_class


def mean_iou(
    preds: Tensor,
    targets: Tensor,
    *,
    num_classes: int,
    ignore_index: int | None = 255,
    per_class: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mean intersection-over-union of one batch of label maps.

    Args:
        preds: Predicted labels `(B, H, W)` or class scores `(B, T, H, W)`.
        targets: Ground-truth labels `(B, H, W)`; `ignore_index` pixels are skipped.
        num_classes: Number of classes `T`.
        ignore_index: Label to skip, or `None`.
        per_class: Also return the per-class IoU `(T,)` (`NaN` for absent classes).

    Returns:
        The mIoU as a float64 scalar over classes present in prediction or ground truth (0 when no
        valid pixel exists), and optionally the per-class IoU.

    Examples:
        >>> p = torch.tensor([[[0, 0], [1, 1]]])
        >>> t = torch.tensor([[[0, 1], [1, 1]]])
        >>> round(float(mean_iou(p, t, num_classes=2)), 4)  # (1/2 + 2/3) / 2
        0.5833
    """
    conf = confusion_matrix(preds, targets, num_classes=num_classes, ignore_index=ignore_index)
    miou, iou = _iou_from_confusion(conf)
    return (miou, iou) if per_class else miou


class SemanticIoU(nn.Module):
    """Streaming mIoU: accumulate a confusion matrix with `update`, read it with `compute`.

    The matrix is a buffer, so `.to(device)` moves it and `state_dict` saves it.

    Examples:
        >>> metric = SemanticIoU(num_classes=3)
        >>> metric.update(torch.tensor([[[0, 1, 2]]]), torch.tensor([[[0, 1, 1]]]))
        >>> metric.update(torch.tensor([[[2, 2, 2]]]), torch.tensor([[[2, 255, 2]]]))
        >>> round(float(metric.compute()), 4)  # IoUs 1, 1/2, 2/3
        0.7222
    """

    confusion: Tensor

    def __init__(self, *, num_classes: int, ignore_index: int | None = 255) -> None:
        """Create an empty metric.

        Args:
            num_classes: Number of classes `T`.
            ignore_index: Ground-truth label to skip, or `None`.
        """
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.register_buffer(
            "confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), persistent=True
        )

    def reset(self) -> None:
        """Zero the accumulated confusion matrix."""
        self.confusion.zero_()

    @torch.no_grad()
    def update(self, preds: Tensor, targets: Tensor) -> None:
        """Add one batch.

        Args:
            preds: Predicted labels `(B, H, W)` or class scores `(B, T, H, W)`.
            targets: Ground-truth labels `(B, H, W)`.
        """
        conf = confusion_matrix(
            preds, targets, num_classes=self.num_classes, ignore_index=self.ignore_index
        )
        self.confusion += conf.to(self.confusion.device)

    def compute(self) -> Tensor:
        """Mean IoU over classes seen so far (float64 scalar)."""
        return _iou_from_confusion(self.confusion)[0]

    def per_class(self) -> Tensor:
        """Per-class IoU `(T,)`, `NaN` for classes never seen in ground truth or prediction."""
        return _iou_from_confusion(self.confusion)[1]

    def pixel_accuracy(self) -> Tensor:
        """Fraction of valid pixels labelled correctly (float64 scalar; 0 when none seen)."""
        conf = self.confusion.double()
        return conf.diagonal().sum() / conf.sum().clamp_min(1)

    def forward(self, preds: Tensor, targets: Tensor) -> Tensor:
        """Update with one batch and return that batch's own mIoU.

        Args:
            preds: Predicted labels `(B, H, W)` or class scores `(B, T, H, W)`.
            targets: Ground-truth labels `(B, H, W)`.

        Returns:
            The mIoU of this batch alone (float64 scalar).
        """
        conf = confusion_matrix(
            preds, targets, num_classes=self.num_classes, ignore_index=self.ignore_index
        )
        self.confusion += conf.to(self.confusion.device)
        return _iou_from_confusion(conf)[0]
