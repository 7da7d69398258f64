"""Referring (RES) and generalised referring (GRES) segmentation metrics, streaming.

Standard definitions (gRefCOCO / ReLA), one binary mask per expression:

* per-sample IoU; a no-target sample (empty ground truth) scores IoU 1 when the prediction is
  empty (it then adds nothing to `I` or `U`) and IoU 0 otherwise (its predicted area adds to `U`);
* `giou` (= RES mIoU, alias `miou`): mean of the per-sample IoUs;
* `ciou` (= RES oIoU, alias `oiou`): cumulative intersection over cumulative union;
* `pr@t` for t in 0.5, 0.55, ..., 0.9: fraction of samples with IoU >= t;
* `n_acc` = TN / (TN + FP) over no-target samples, `t_acc` = TP / (TP + FN) over target
  samples, where a prediction is "no target" when it is empty.

A prediction is *empty* when it has fewer than `empty_tolerance` positive pixels: 1 by default
(zero pixels), 50 in the SSP-SAM reference evaluation (spec §3). The reference's own N-acc and
T-acc (spec §8.13) are reported too, as `n_acc_ref` = #(IoU == 1) / #(no-target) (any perfect
sample counts in the numerator) and `t_acc_ref` = #(0 < IoU < 1) / #(target) (a perfect hit is
not counted). Evaluation is at the original resolution by default; `frame="sam_padded"`
reproduces the reference, which compares masks in SAM's padded square frame downsampled to 512.

Axis legend: `B` samples, `H W` pixels.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from samkit._checks import check_shape

__all__ = [
    "PR_THRESHOLDS",
    "REFERENCE_EMPTY_TOLERANCE",
    "ReferringMetrics",
    "has_target_from_mask",
    "referring_iou",
    "referring_metrics",
    "to_sam_padded_frame",
]

PR_THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
REFERENCE_EMPTY_TOLERANCE = 50  # SSP-SAM eval: fewer than 50 px on an empty GT counts as empty
Frame = Literal["original", "sam_padded"]


def _binary(x: Tensor, threshold: float) -> Tensor:
    return x if x.dtype == torch.bool else x > threshold


def to_sam_padded_frame(masks: Tensor, *, long_side: int = 1024, frame_size: int = 512) -> Tensor:
    """Move masks from the original frame to SAM's padded square frame, downsampled.

    Resize (nearest) so the long side is `long_side`, pad bottom/right to a `long_side` square,
    then resize (nearest) to `frame_size`: the frame of the SSP-SAM reference evaluation.

    Args:
        masks: Binary masks `(B, H, W)` (bool or 0/1).
        long_side: SAM input size (1024 for the official SAM).
        frame_size: Output side (512 in the reference).

    Returns:
        Bool masks `(B, frame_size, frame_size)`.

    Examples:
        >>> to_sam_padded_frame(torch.ones(1, 4, 2, dtype=torch.bool), frame_size=8).sum().item()
        32
    """
    sizes = check_shape(masks, "B H W", name="masks")
    h, w = sizes["H"], sizes["W"]
    scale = long_side / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    x = F.interpolate(masks[:, None].float(), size=(new_h, new_w), mode="nearest")
    x = F.pad(x, (0, long_side - new_w, 0, long_side - new_h))
    x = F.interpolate(x, size=(frame_size, frame_size), mode="nearest")
    return x[:, 0] > 0.5


def has_target_from_mask(
    logits: Tensor, *, threshold: float = 0.0, min_fraction: float = 0.0
) -> Tensor:
    """Decide whether each mask is non-empty (GRES "has target") from its positive area.

    Args:
        logits: Mask logits `(B, ..., H, W)` (any leading axes after `B`).
        threshold: Logit threshold of a positive pixel.
        min_fraction: Smallest positive area, as a fraction of the frame, that counts as a
            target; the reference's 50 px at 512x512 is `50 / 512**2`.

    Returns:
        `(B,)` bool.

    Examples:
        >>> has_target_from_mask(torch.tensor([[[-1.0, 2.0]], [[-1.0, -3.0]]]))
        tensor([ True, False])
    """
    pos = (logits > threshold).flatten(1)
    count = pos.sum(-1)
    return (count > 0) & (count >= min_fraction * pos.shape[-1])


def referring_iou(
    preds: Tensor, targets: Tensor, *, empty_tolerance: int = 1, threshold: float = 0.0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample intersection, union and IoU with the GRES rule for empty ground truth.

    Args:
        preds: Predicted masks `(B, H, W)`: bool, or logits thresholded at `threshold`.
        targets: Ground-truth masks `(B, H, W)` (bool or 0/1); all zero for no-target samples.
        empty_tolerance: Predictions with fewer positive pixels count as empty.
        threshold: Logit threshold for float `preds`.

    Returns:
        `(inter, union, iou, pred_empty)`, each `(B,)` (float64, float64, float64, bool).

    Raises:
        ValueError: If the shapes differ.

    Examples:
        >>> p = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]]).bool()
        >>> g = torch.tensor([[[0, 1, 1, 0]], [[0, 0, 0, 0]]]).bool()
        >>> referring_iou(p, g)[2]
        tensor([0.3333, 1.0000], dtype=torch.float64)
    """
    sizes = check_shape(targets, "B H W", name="targets")
    check_shape(preds, "B H W", name="preds", known=sizes)
    p = _binary(preds, threshold).flatten(1)
    g = targets.bool().flatten(1)
    area = p.sum(-1)
    pred_empty = area < empty_tolerance
    gt_empty = ~g.any(-1)
    inter = (p & g).sum(-1).double()
    union = (p | g).sum(-1).double()
    # Empty GT: an empty prediction is a perfect answer that adds nothing to I or U.
    union = torch.where(gt_empty & pred_empty, torch.zeros_like(union), union)
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return inter, union, iou, pred_empty


class ReferringMetrics:
    """Streaming RES/GRES metrics: call `update` per batch, `compute` at the end.

    Only counters are kept, so arbitrarily large splits can be evaluated.

    Examples:
        >>> m = ReferringMetrics()
        >>> m.update(torch.ones(2, 4, 4, dtype=torch.bool), torch.ones(2, 4, 4, dtype=torch.bool))
        >>> m.update(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 4, dtype=torch.bool))
        >>> r = m.compute()
        >>> r["giou"], r["ciou"], r["n_acc"], r["t_acc"]
        (1.0, 1.0, 1.0, 1.0)
    """

    def __init__(
        self,
        *,
        empty_tolerance: int = 1,
        frame: Frame = "original",
        long_side: int = 1024,
        frame_size: int = 512,
        threshold: float = 0.0,
        pr_thresholds: tuple[float, ...] = PR_THRESHOLDS,
    ) -> None:
        """Create the accumulator.

        Args:
            empty_tolerance: Predictions with fewer positive pixels count as empty (1 = only a
                truly empty mask; the SSP-SAM reference uses `REFERENCE_EMPTY_TOLERANCE` = 50,
                measured in its 512 frame).
            frame: `"original"` (default) or `"sam_padded"` (reference: both masks moved by
                `to_sam_padded_frame` before comparing).
            long_side: SAM input size for `frame="sam_padded"`.
            frame_size: Output side for `frame="sam_padded"`.
            threshold: Logit threshold for float predictions.
            pr_thresholds: IoU thresholds of the `pr@t` precisions.
        """
        if frame not in ("original", "sam_padded"):
            raise ValueError(f"frame must be 'original' or 'sam_padded', got {frame!r}")
        self.empty_tolerance = empty_tolerance
        self.frame: Frame = frame
        self.long_side = long_side
        self.frame_size = frame_size
        self.threshold = threshold
        self.pr_thresholds = pr_thresholds
        self.reset()

    def reset(self) -> None:
        """Clear all counters."""
        self._count = 0
        self._sum_iou = 0.0
        self._inter = 0.0
        self._union = 0.0
        self._pr = torch.zeros(len(self.pr_thresholds), dtype=torch.float64)
        self._nt = {"tp": 0, "fn": 0, "tn": 0, "fp": 0, "iou1": 0, "partial": 0}

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """Add a batch.

        Args:
            preds: Predicted masks `(B, H, W)`: bool, or logits (thresholded at `threshold`).
            targets: Ground-truth masks `(B, H, W)`; all zero for no-target expressions.

        Raises:
            ValueError: If the shapes differ.
        """
        preds = _binary(preds, self.threshold)
        if self.frame == "sam_padded":
            kw = {"long_side": self.long_side, "frame_size": self.frame_size}
            preds, targets = to_sam_padded_frame(preds, **kw), to_sam_padded_frame(targets, **kw)
        inter, union, iou, pred_empty = referring_iou(
            preds, targets, empty_tolerance=self.empty_tolerance
        )
        inter, union, iou, pred_empty = inter.cpu(), union.cpu(), iou.cpu(), pred_empty.cpu()
        gt_empty = ~targets.bool().flatten(1).any(-1).cpu()
        self._count += int(iou.numel())
        self._sum_iou += float(iou.sum())
        self._inter += float(inter.sum())
        self._union += float(union.sum())
        self._pr += (iou[:, None] >= torch.tensor(self.pr_thresholds, dtype=iou.dtype)).sum(0)
        nt = self._nt
        nt["tn"] += int((gt_empty & pred_empty).sum())
        nt["fp"] += int((gt_empty & ~pred_empty).sum())
        nt["tp"] += int((~gt_empty & ~pred_empty).sum())
        nt["fn"] += int((~gt_empty & pred_empty).sum())
        nt["iou1"] += int((iou == 1).sum())
        nt["partial"] += int(((iou > 0) & (iou < 1)).sum())

    def compute(self) -> dict[str, float]:
        """Return the metrics (NaN where a denominator is zero).

        Returns:
            A dict with `giou`, `miou` (same value), `ciou`, `oiou` (same), `pr@0.5` ... `pr@0.9`,
            `n_acc`, `t_acc`, `n_acc_ref`, `t_acc_ref` and `count`.
        """
        nan = float("nan")
        nt = self._nt
        n_empty, n_target = nt["tn"] + nt["fp"], nt["tp"] + nt["fn"]
        giou = self._sum_iou / self._count if self._count else nan
        ciou = self._inter / self._union if self._union > 0 else nan
        out = {"giou": giou, "miou": giou, "ciou": ciou, "oiou": ciou}
        for t, c in zip(self.pr_thresholds, self._pr.tolist(), strict=True):
            out[f"pr@{t:g}"] = c / self._count if self._count else nan
        out["n_acc"] = nt["tn"] / n_empty if n_empty else nan
        out["t_acc"] = nt["tp"] / n_target if n_target else nan
        out["n_acc_ref"] = nt["iou1"] / n_empty if n_empty else nan
        out["t_acc_ref"] = nt["partial"] / n_target if n_target else nan
        out["count"] = float(self._count)
        return out


def referring_metrics(preds: Tensor, targets: Tensor, **kwargs: object) -> dict[str, float]:
    """One-shot form of `ReferringMetrics` (same keyword arguments).

    Args:
        preds: Predicted masks `(B, H, W)` (bool or logits).
        targets: Ground-truth masks `(B, H, W)`.
        **kwargs: Arguments of `ReferringMetrics`.

    Returns:
        The dict of `ReferringMetrics.compute`.

    Examples:
        >>> r = referring_metrics(torch.zeros(1, 2, 2), torch.ones(1, 2, 2))
        >>> r["giou"], r["t_acc"]
        (0.0, 0.0)
    """
    m = ReferringMetrics(**kwargs)  # type: ignore[arg-type]
    m.update(preds, targets)
    return m.compute()
