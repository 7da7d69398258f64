"""Semantic-segmentation metrics (mIoU, mAcc, aAcc) with MMSegmentation's conventions, streaming.

The counts follow MMSegmentation's `IoUMetric.intersect_and_union`:

* `ignore_index` (default 255) removes pixels by the **ground truth** only. A prediction equal to
  `ignore_index` (SAM-CP writes 255 on unassigned pixels, for example) is not ignored: it is a
  wrong answer for that pixel.
* A predicted label outside `[0, T)` is wrong for its pixel: the pixel adds to its ground-truth
  class's area (so to that class's union), never to an intersection and never to any class's
  predicted area. Nothing is clamped.
* A ground-truth label outside `[0, T)` that is not `ignore_index` is a `ValueError` (MMSeg
  counts such a pixel only through its prediction, which is almost always a data bug).

From the per-class areas, as in MMSeg's `total_area_to_metrics`:

* `IoU_c = intersect_c / union_c` (`NaN` when `union_c == 0`); **mIoU** is the mean over the
  classes with a defined IoU (`np.nanmean`), i.e. classes present in prediction or ground truth.
* `Acc_c = intersect_c / label_c` (`NaN` when the class is absent from the ground truth); **mAcc**
  is the mean over the classes present in the ground truth.
* **aAcc** = all correct pixels / all counted ground-truth pixels.

A mean or ratio with nothing in its denominator (no valid pixel at all) is `NaN`. Values are
fractions in `[0, 1]` (MMSeg prints percentages).

Axis legend: `B` images, `T` classes, `H W` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
from torch import Tensor, nn

from samkit._checks import as_class_names, check_positive, check_shape
from samkit.metrics._sync import all_reduce_sum, check_not_synced

__all__ = [
    "SemanticIoU",
    "SemanticScores",
    "confusion_matrix",
    "intersect_and_union",
    "mean_iou",
    "semantic_metrics",
]


class SemanticScores(TypedDict):
    """The summary of `SemanticIoU.compute_all` / `semantic_metrics` (fractions in `[0, 1]`).

    Attributes:
        mIoU: Mean IoU over classes present in prediction or ground truth (`NaN` if none).
        mAcc: Mean per-class accuracy over classes present in the ground truth (`NaN` if none).
        aAcc: Overall pixel accuracy over the counted ground-truth pixels (`NaN` if none).
        IoU: Per-class IoU keyed by class name (`str(index)` without names); `NaN` if undefined.
        Acc: Per-class accuracy keyed like `IoU`; `NaN` for classes absent from the ground truth.
    """

    mIoU: float
    mAcc: float
    aAcc: float
    IoU: dict[str, float]
    Acc: dict[str, float]


def _as_labels(preds: Tensor, num_classes: int, sizes: dict[str, int]) -> Tensor:
    """Turn `(B, T, H, W)` scores into `(B, H, W)` labels; check and pass label maps through."""
    if not isinstance(preds, Tensor):
        raise TypeError(f"preds: expected a torch.Tensor, got {type(preds).__name__}")
    if preds.dim() == 4:
        check_shape(preds, "B T H W", name="preds", known={"T": num_classes, **sizes})
        return preds.argmax(dim=1)
    check_shape(preds, "B H W", name="preds", known=sizes)
    if preds.is_floating_point() or preds.is_complex():
        raise TypeError(
            f"preds: expected integer labels (B, H, W) or class scores (B, T, H, W), "
            f"got a {preds.dtype} tensor of shape {tuple(preds.shape)}"
        )
    return preds


def _counts(
    preds: Tensor, targets: Tensor, num_classes: int, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """`(confusion (T, T), out_of_range (T,))` of one batch, int64 on the inputs' device.

    `out_of_range[c]` counts pixels of ground-truth class `c` whose prediction is outside `[0, T)`.
    """
    check_positive(num_classes, name="num_classes")
    sizes = check_shape(targets, "B H W", name="targets")
    if targets.is_floating_point() or targets.is_complex():
        raise TypeError(f"targets: expected integer labels (B, H, W), got dtype {targets.dtype}")
    labels = _as_labels(preds, num_classes, sizes)
    t = targets.reshape(-1).long()
    p = labels.reshape(-1).long().to(t.device)
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    bad = (t < 0) | (t >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"targets: expected labels in [0, {num_classes}) or ignore_index={ignore_index}, "
            f"got label {int(t[bad][0])}"
        )
    in_range = (p >= 0) & (p < num_classes)
    pairs = t[in_range] * num_classes + p[in_range]
    conf = torch.bincount(pairs, minlength=num_classes * num_classes)
    out_of_range = torch.bincount(t[~in_range], minlength=num_classes)
    return conf.reshape(num_classes, num_classes), out_of_range


def confusion_matrix(
    preds: Tensor, targets: Tensor, *, num_classes: int, ignore_index: int | None = 255
) -> Tensor:
    """Count `(ground truth, prediction)` pairs over the pixels not ignored by the ground truth.

    Pixels whose prediction lies outside `[0, T)` have no column and are left out of the matrix;
    `intersect_and_union` (and `SemanticIoU`) count them as errors of their ground-truth class.
    The trace is the number of non-ignored pixels predicted correctly.

    Args:
        preds: Predicted labels `(B, H, W)` (integer) or class scores `(B, T, H, W)` (argmax
            taken).
        targets: Ground-truth labels `(B, H, W)` (integer) in `[0, T)` or `ignore_index`.
        num_classes: Number of classes `T`.
        ignore_index: Ground-truth label whose pixels are skipped, or `None`.

    Returns:
        A `(T, T)` int64 matrix; entry `[i, j]` counts pixels of class `i` predicted as `j`.

    Raises:
        ValueError: On a shape mismatch, `num_classes < 1`, or a ground-truth label outside
            `[0, T)` that is not `ignore_index`.
        TypeError: On floating-point label maps.

    Examples:
        >>> p, t = torch.tensor([[[0, 1, 7]]]), torch.tensor([[[0, 0, 1]]])
        >>> confusion_matrix(p, t, num_classes=2)
        tensor([[1, 1],
                [0, 0]])
    """
    return _counts(preds, targets, num_classes, ignore_index)[0]


def _areas(conf: Tensor, out_of_range: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    intersect = conf.diagonal()
    area_pred = conf.sum(0)
    area_label = conf.sum(1) + out_of_range
    return intersect, area_pred + area_label - intersect, area_pred, area_label


def intersect_and_union(
    preds: Tensor, targets: Tensor, *, num_classes: int, ignore_index: int | None = 255
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-class areas of one batch, as MMSegmentation's `intersect_and_union`.

    Args:
        preds: Predicted labels `(B, H, W)` or class scores `(B, T, H, W)`.
        targets: Ground-truth labels `(B, H, W)` in `[0, T)` or `ignore_index`.
        num_classes: Number of classes `T`.
        ignore_index: Ground-truth label whose pixels are skipped, or `None`.

    Returns:
        `(area_intersect, area_union, area_pred_label, area_label)`, each `(T,)` int64. A pixel
        predicted outside `[0, T)` adds to `area_label` (and so `area_union`) of its ground-truth
        class only.

    Raises:
        ValueError: On a shape mismatch or a ground-truth label outside `[0, T)` that is not
            `ignore_index`.

    Examples:
        >>> p, t = torch.tensor([[[0, 0, 255, 255]]]), torch.tensor([[[0, 0, 1, 1]]])
        >>> [a.tolist() for a in intersect_and_union(p, t, num_classes=2)]
        [[2, 0], [2, 2], [2, 0], [2, 2]]
    """
    return _areas(*_counts(preds, targets, num_classes, ignore_index))


def _nanmean(x: Tensor) -> Tensor:
    ok = ~x.isnan()
    return (
        x[ok].mean()
        if bool(ok.any())
        else torch.full((), float("nan"), dtype=x.dtype, device=x.device)
    )


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """`num / den` in float64, `NaN` where `den == 0`."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, float("nan")))


def _scores(conf: Tensor, out_of_range: Tensor, names: Sequence[str]) -> SemanticScores:
    intersect, union, _, label = _areas(conf.cpu(), out_of_range.cpu())
    iou, acc = _ratio(intersect, union), _ratio(intersect, label)
    return {
        "mIoU": float(_nanmean(iou)),
        "mAcc": float(_nanmean(acc)),
        "aAcc": float(_ratio(intersect.sum(), label.sum())),
        "IoU": dict(zip(names, iou.tolist(), strict=True)),
        "Acc": dict(zip(names, acc.tolist(), strict=True)),
    }


def _names(class_names: str | Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = as_class_names(class_names, name="class_names")
    if len(names) != num_classes:
        raise ValueError(
            f"class_names: expected {num_classes} names (num_classes), got {len(names)}"
        )
    return names


def mean_iou(
    preds: Tensor,
    targets: Tensor,
    *,
    num_classes: int,
    ignore_index: int | None = 255,
    per_class: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mean intersection-over-union of one batch of label maps (MMSegmentation's mIoU).

    Args:
        preds: Predicted labels `(B, H, W)` or class scores `(B, T, H, W)`.
        targets: Ground-truth labels `(B, H, W)`; `ignore_index` pixels are skipped.
        num_classes: Number of classes `T`.
        ignore_index: Ground-truth label to skip, or `None`.
        per_class: Also return the per-class IoU `(T,)` (`NaN` where the union is empty).

    Returns:
        The mIoU as a float64 scalar over classes present in prediction or ground truth (`NaN`
        when no pixel is counted), and optionally the per-class IoU.

    Examples:
        >>> p = torch.tensor([[[0, 0], [1, 1]]])
        >>> t = torch.tensor([[[0, 1], [1, 1]]])
        >>> round(float(mean_iou(p, t, num_classes=2)), 4)  # (1/2 + 2/3) / 2
        0.5833
        >>> float(mean_iou(torch.tensor([[[0, 0, 255, 255]]]), torch.tensor([[[0, 0, 1, 1]]]),
        ...                num_classes=2))  # class 1 is missed: IoUs 1 and 0
        0.5
    """
    intersect, union, _, _ = intersect_and_union(
        preds, targets, num_classes=num_classes, ignore_index=ignore_index
    )
    iou = _ratio(intersect, union)
    miou = _nanmean(iou)
    return (miou, iou) if per_class else miou


def semantic_metrics(
    preds: Tensor,
    targets: Tensor,
    *,
    num_classes: int,
    ignore_index: int | None = 255,
    class_names: str | Sequence[str] | None = None,
) -> SemanticScores:
    """mIoU, mAcc, aAcc and per-class IoU / accuracy of one batch; see `SemanticIoU.compute_all`.

    Args:
        preds: Predicted labels `(B, H, W)` or class scores `(B, T, H, W)`.
        targets: Ground-truth labels `(B, H, W)`.
        num_classes: Number of classes `T`.
        ignore_index: Ground-truth label to skip, or `None`.
        class_names: Names of the `T` classes, used as keys of the per-class dicts.

    Returns:
        The `SemanticScores` dict.

    Examples:
        >>> r = semantic_metrics(torch.tensor([[[0, 1, 1]]]), torch.tensor([[[0, 1, 0]]]),
        ...                      num_classes=2, class_names=["sky", "road"])
        >>> r["aAcc"], r["IoU"], r["Acc"]
        (0.6666666666666666, {'sky': 0.5, 'road': 0.5}, {'sky': 0.5, 'road': 1.0})
    """
    names = _names(class_names, num_classes)
    return _scores(*_counts(preds, targets, num_classes, ignore_index), names)


class SemanticIoU(nn.Module):
    """Streaming semantic metrics: accumulate counts with `update`, read them with `compute*`.

    Two buffers are kept (so `.to(device)` moves them and `state_dict` saves them): `confusion`
    `(T, T)` (rows ground truth, columns prediction) and `out_of_range` `(T,)`, the pixels of each
    ground-truth class predicted outside `[0, T)`. See the module docstring for the conventions
    (MMSegmentation's).

    Examples:
        >>> metric = SemanticIoU(num_classes=3, class_names=["a", "b", "c"])
        >>> metric.update(torch.tensor([[[0, 1, 2]]]), torch.tensor([[[0, 1, 1]]]))
        >>> metric.update(torch.tensor([[[2, 2, 2]]]), torch.tensor([[[2, 255, 2]]]))
        >>> round(float(metric.compute()), 4)  # IoUs 1, 1/2, 2/3
        0.7222
        >>> metric.compute_all()["Acc"]
        {'a': 1.0, 'b': 0.5, 'c': 1.0}
    """

    confusion: Tensor
    out_of_range: Tensor

    def __init__(
        self,
        *,
        num_classes: int,
        ignore_index: int | None = 255,
        class_names: str | Sequence[str] | None = None,
    ) -> None:
        """Create an empty metric.

        Args:
            num_classes: Number of classes `T`.
            ignore_index: Ground-truth label to skip, or `None`.
            class_names: Names of the `T` classes (keys of the per-class results; `"0"`, `"1"`,
                ... when not given).

        Raises:
            ValueError: If `num_classes < 1` or `class_names` does not hold `T` names.
        """
        super().__init__()
        check_positive(num_classes, name="num_classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = _names(class_names, num_classes)
        self.register_buffer("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long))
        self.register_buffer("out_of_range", torch.zeros(num_classes, dtype=torch.long))
        self._synced = False

    def reset(self) -> None:
        """Zero the accumulated counts."""
        self.confusion.zero_()
        self.out_of_range.zero_()
        self._synced = False

    @torch.no_grad()
    def _add(self, preds: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        check_not_synced(self._synced, "SemanticIoU", "update")
        conf, oor = _counts(preds, targets, self.num_classes, self.ignore_index)
        self.confusion += conf.to(self.confusion.device)
        self.out_of_range += oor.to(self.out_of_range.device)
        return conf, oor

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """Add one batch.

        Args:
            preds: Predicted labels `(B, H, W)` or class scores `(B, T, H, W)`.
            targets: Ground-truth labels `(B, H, W)`.
        """
        self._add(preds, targets)

    def sync(self) -> None:
        """Sum the counts of all ranks into every rank (`all_reduce`; a no-op alone).

        Collective: every rank calls it once, after its last `update`. Afterwards `update` and
        a second `sync` raise until `reset`.

        Raises:
            RuntimeError: If the metric was already synced.
        """
        check_not_synced(self._synced, "SemanticIoU", "sync")
        self.confusion.copy_(all_reduce_sum(self.confusion))
        self.out_of_range.copy_(all_reduce_sum(self.out_of_range))
        self._synced = True

    def compute(self) -> Tensor:
        """Mean IoU over classes seen so far (float64 scalar; `NaN` before any counted pixel)."""
        return _nanmean(self.per_class())

    def per_class(self) -> Tensor:
        """Per-class IoU `(T,)` (float64), `NaN` for classes in neither target nor prediction."""
        intersect, union, _, _ = _areas(self.confusion, self.out_of_range)
        return _ratio(intersect, union)

    def per_class_accuracy(self) -> Tensor:
        """Per-class accuracy `(T,)` (float64), `NaN` for classes absent from the ground truth."""
        intersect, _, _, label = _areas(self.confusion, self.out_of_range)
        return _ratio(intersect, label)

    def mean_accuracy(self) -> Tensor:
        """mAcc: mean per-class accuracy over classes present in the ground truth (float64)."""
        return _nanmean(self.per_class_accuracy())

    def pixel_accuracy(self) -> Tensor:
        """aAcc: fraction of counted pixels labelled correctly (float64; `NaN` when none seen)."""
        intersect, _, _, label = _areas(self.confusion, self.out_of_range)
        return _ratio(intersect.sum(), label.sum())

    def compute_all(self) -> SemanticScores:
        """`mIoU`, `mAcc`, `aAcc` and per-class `IoU` / `Acc` keyed by class name (floats)."""
        return _scores(self.confusion, self.out_of_range, self.class_names)

    def forward(self, preds: Tensor, targets: Tensor) -> Tensor:
        """Update with one batch and return that batch's own mIoU.

        Args:
            preds: Predicted labels `(B, H, W)` or class scores `(B, T, H, W)`.
            targets: Ground-truth labels `(B, H, W)`.

        Returns:
            The mIoU of this batch alone (float64 scalar).
        """
        conf, oor = self._add(preds, targets)
        intersect, union, _, _ = _areas(conf, oor)
        return _nanmean(_ratio(intersect, union))
