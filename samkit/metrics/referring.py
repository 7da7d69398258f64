"""Referring (RES) and generalised referring (GRES) segmentation metrics, streaming.

The definitions of gRefCOCO / ReLA (Liu et al., CVPR 2023; `gres_model/evaluation/
refer_evaluation.py`), one binary mask per expression. A sample is *targeted* when its ground truth
is non-empty and *no-target* otherwise. Each sample is predicted "has target" or "no target":
by the optional `has_target` argument (a model's no-target head, as ReLA's `nt_label`), else by
its mask (fewer than `empty_tolerance` positive pixels is "no target").

Per sample, intersection `I`, union `U` and IoU:

* no-target sample predicted "no target": IoU 1, `I = U = 0`;
* no-target sample predicted "has target": IoU 0, `I = 0`, `U` = predicted area (ReLA);
* targeted sample predicted "has target": the mask's `I`, `U` and `IoU = I / U`;
* targeted sample predicted "no target" by `has_target`: IoU 0, `I = 0`, `U = |pred | gt|`
  (ReLA zeroes the intersection and keeps the mask's union). When the decision comes from the
  mask, the mask's own `I / U` is kept: with the default `empty_tolerance=1` the mask is empty, so
  this is the same number; with `REFERENCE_EMPTY_TOLERANCE` it is the SSP-SAM reference's rule.

Metrics:

* `giou` (= RES mIoU, alias `miou`): mean per-sample IoU over all samples;
* `ciou` (= RES oIoU, alias `oiou`): cumulative `I` over cumulative `U`, all samples;
* `pr@t` for t in 0.5, 0.55, ..., 0.9: fraction of **targeted** samples with IoU >= t (ReLA);
* `n_acc` = TN / (TN + FP) over no-target samples, `t_acc` = TP / (TP + FN) over targeted
  samples, "positive" meaning "has target" (the definitions of the gRefCOCO paper; ReLA's code
  names the no-target class positive, so its TP is our TN);
* `count`, `count_target`, `count_no_target`: the sample counts.

A ratio whose denominator holds no sample (`n_acc` without no-target samples, `t_acc` and `pr@t`
without targeted samples, anything before `update`) is `NaN`; so is `ciou` when the cumulative
union is 0.

The SSP-SAM reference's own N-acc and T-acc (spec §8.13) are reported too, as `n_acc_ref` =
#(IoU == 1) / #(no-target) (any perfect sample counts in the numerator, a targeted one too) and
`t_acc_ref` = #(0 < IoU < 1) / #(targeted) (a perfect hit is not counted). Evaluation is at the
original resolution by default; `frame="sam_padded"` reproduces the reference, which compares masks
in SAM's padded square frame downsampled to 512.

Axis legend: `B` samples, `H W` pixels.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from samkit._checks import check_binary, check_positive, check_shape
from samkit.metrics._sync import all_reduce_sum, check_not_synced

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


def _binary(x: Tensor, threshold: float, *, name: str) -> Tensor:
    """Bool masks from bool / 0-1 integer masks, or from float logits thresholded at `threshold`."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point():
        return x > threshold
    return check_binary(x, name=name)


def to_sam_padded_frame(
    masks: Tensor,
    *,
    long_side: int = 1024,
    frame_size: int = 512,
    input_size: tuple[int, int] | None = None,
) -> Tensor:
    """Move masks from the original frame to SAM's padded square frame, downsampled.

    Resize (nearest) so the long side is `long_side`, pad bottom/right to a `long_side` square,
    then resize (nearest) to `frame_size`: the frame of the SSP-SAM reference evaluation.

    Args:
        masks: Binary masks `(B, H, W)` (bool or 0/1).
        long_side: SAM input size (1024 for the official SAM).
        frame_size: Output side (512 in the reference).
        input_size: `(h_in, w_in)` the image occupies inside the `long_side` square, for a
            backend whose input is not SAM's letterbox (SAM 2 squashes the image to the whole
            square: `(long_side, long_side)`); None: SAM's letterbox.

    Returns:
        Bool masks `(B, frame_size, frame_size)`.

    Examples:
        >>> to_sam_padded_frame(torch.ones(1, 4, 2, dtype=torch.bool), frame_size=8).sum().item()
        32
    """
    sizes = check_shape(masks, "B H W", name="masks")
    masks = check_binary(masks, name="masks")
    check_positive(long_side, name="long_side")
    check_positive(frame_size, name="frame_size")
    h, w = sizes["H"], sizes["W"]
    if input_size is None:
        scale = long_side / max(h, w)
        new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    else:
        new_h, new_w = input_size
        if not (0 < new_h <= long_side and 0 < new_w <= long_side):
            raise ValueError(
                f"input_size: expected (h_in, w_in) inside the {long_side} square, got "
                f"{tuple(input_size)}"
            )
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


def _decide(
    p: Tensor, has_target: Tensor | None, empty_tolerance: int, batch: int
) -> tuple[Tensor, bool]:
    """Per-sample "predicted no target" `(B,)` and whether it came from `has_target`."""
    if has_target is None:
        return p.sum(-1) < empty_tolerance, False
    if not isinstance(has_target, Tensor):
        raise TypeError(f"has_target: expected a torch.Tensor, got {type(has_target).__name__}")
    check_shape(has_target, "B", name="has_target", known={"B": batch})
    return ~check_binary(has_target, name="has_target").to(p.device), True


def referring_iou(
    preds: Tensor,
    targets: Tensor,
    *,
    has_target: Tensor | None = None,
    empty_tolerance: int = 1,
    threshold: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample intersection, union and IoU with the gRefCOCO / ReLA rules (module docstring).

    Args:
        preds: Predicted masks `(B, H, W)`: bool or 0/1 integers, or float logits thresholded at
            `threshold`.
        targets: Ground-truth masks `(B, H, W)`, binary (bool or 0/1); all zero for no-target
            samples.
        has_target: Optional `(B,)` bool decision of a no-target head; when given, a sample is
            "predicted no target" by it rather than by its mask.
        empty_tolerance: Without `has_target`, a mask with fewer positive pixels is "no target".
        threshold: Logit threshold for float `preds`.

    Returns:
        `(inter, union, iou, pred_no_target)`, each `(B,)` (float64, float64, float64, bool).

    Raises:
        ValueError: If the shapes differ, or `targets` / `has_target` are not binary.

    Examples:
        >>> p = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]]).bool()
        >>> g = torch.tensor([[[0, 1, 1, 0]], [[0, 0, 0, 0]]]).bool()
        >>> referring_iou(p, g)[2]
        tensor([0.3333, 1.0000], dtype=torch.float64)
        >>> referring_iou(p, g, has_target=torch.tensor([False, True]))[2]  # a no-target head
        tensor([0., 0.], dtype=torch.float64)
    """
    sizes = check_shape(targets, "B H W", name="targets")
    check_shape(preds, "B H W", name="preds", known=sizes)
    p = _binary(preds, threshold, name="preds").flatten(1)
    g = check_binary(targets, name="targets").flatten(1).to(p.device)
    pred_nt, from_head = _decide(p, has_target, empty_tolerance, sizes["B"])
    gt_empty = ~g.any(-1)
    inter = (p & g).sum(-1).double()
    union = (p | g).sum(-1).double()
    zero = torch.zeros_like(union)
    # No-target sample predicted "no target": a perfect answer that adds nothing to I or U.
    union = torch.where(gt_empty & pred_nt, zero, union)
    if from_head:
        # ReLA: a targeted sample predicted "no target" has no intersection (U is kept).
        inter = torch.where(pred_nt, zero, inter)
    iou = torch.where(union > 0, inter / union.clamp_min(1), zero)
    iou = torch.where(gt_empty & pred_nt, torch.ones_like(iou), iou)
    return inter, union, iou, pred_nt


class ReferringMetrics:
    """Streaming RES/GRES metrics: call `update` per batch, `compute` at the end.

    Only counters are kept, so arbitrarily large splits can be evaluated. Definitions and NaN
    conventions: see the module docstring.

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
            empty_tolerance: Without `has_target`, a predicted mask with fewer positive pixels is
                "no target" (1 = only a truly empty mask; the SSP-SAM reference uses
                `REFERENCE_EMPTY_TOLERANCE` = 50, measured in its 512 frame).
            frame: `"original"` (default) or `"sam_padded"` (reference: both masks moved by
                `to_sam_padded_frame` before comparing).
            long_side: SAM input size for `frame="sam_padded"`.
            frame_size: Output side for `frame="sam_padded"`.
            threshold: Logit threshold for float predictions.
            pr_thresholds: IoU thresholds of the `pr@t` precisions.

        Raises:
            ValueError: On an unknown `frame` or `empty_tolerance < 1`.
        """
        if frame not in ("original", "sam_padded"):
            raise ValueError(f"frame must be 'original' or 'sam_padded', got {frame!r}")
        check_positive(empty_tolerance, name="empty_tolerance")
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
        self._synced = False

    def update(self, preds: Tensor, targets: Tensor, *, has_target: Tensor | None = None) -> None:
        """Add a batch.

        Args:
            preds: Predicted masks `(B, H, W)`: bool / 0-1, or logits (thresholded at
                `threshold`).
            targets: Ground-truth masks `(B, H, W)`, binary; all zero for no-target expressions.
            has_target: Optional `(B,)` bool decision of a no-target head (ReLA's `nt_label`):
                when given, it decides "no target", not the mask's emptiness.

        Raises:
            ValueError: If the shapes differ, or `targets` / `has_target` are not binary.
        """
        check_not_synced(self._synced, "ReferringMetrics", "update")
        sizes = check_shape(targets, "B H W", name="targets")
        check_shape(preds, "B H W", name="preds", known=sizes)
        preds = _binary(preds, self.threshold, name="preds")
        targets = check_binary(targets, name="targets")
        if self.frame == "sam_padded":
            side, frame = self.long_side, self.frame_size
            preds = to_sam_padded_frame(preds, long_side=side, frame_size=frame)
            targets = to_sam_padded_frame(targets, long_side=side, frame_size=frame)
        inter, union, iou, pred_nt = referring_iou(
            preds, targets, has_target=has_target, empty_tolerance=self.empty_tolerance
        )
        inter, union, iou, pred_nt = inter.cpu(), union.cpu(), iou.cpu(), pred_nt.cpu()
        gt_empty = ~targets.flatten(1).any(-1).cpu()
        self._count += int(iou.numel())
        self._sum_iou += float(iou.sum())
        self._inter += float(inter.sum())
        self._union += float(union.sum())
        hit = iou[:, None] >= torch.tensor(self.pr_thresholds, dtype=iou.dtype)
        self._pr += (hit & ~gt_empty[:, None]).sum(0)
        nt = self._nt
        nt["tn"] += int((gt_empty & pred_nt).sum())
        nt["fp"] += int((gt_empty & ~pred_nt).sum())
        nt["tp"] += int((~gt_empty & ~pred_nt).sum())
        nt["fn"] += int((~gt_empty & pred_nt).sum())
        nt["iou1"] += int((iou == 1).sum())
        nt["partial"] += int(((iou > 0) & (iou < 1)).sum())

    def sync(self) -> None:
        """Sum the counters of all ranks into every rank (one `all_reduce`; a no-op alone).

        Collective: every rank calls it once, after its last `update`. Afterwards `update` and
        a second `sync` raise until `reset`. Counts are exact; `giou`'s sum of IoUs is summed
        in another order than on one process (float64, differences ~1e-16 relative).

        Raises:
            RuntimeError: If the metric was already synced.
        """
        check_not_synced(self._synced, "ReferringMetrics", "sync")
        keys = sorted(self._nt)
        head = [float(self._count), self._sum_iou, self._inter, self._union]
        state = torch.tensor(head + [float(self._nt[k]) for k in keys], dtype=torch.float64)
        state = all_reduce_sum(torch.cat([state, self._pr.to(torch.float64)]))
        self._count = int(state[0])
        self._sum_iou, self._inter, self._union = (float(v) for v in state[1:4])
        self._nt = {k: int(v) for k, v in zip(keys, state[4 : 4 + len(keys)].tolist(), strict=True)}
        self._pr = state[4 + len(keys) :].clone()
        self._synced = True

    def compute(self) -> dict[str, float]:
        """Return the metrics (`NaN` where a denominator holds no sample).

        Returns:
            A dict with `giou`, `miou` (same value), `ciou`, `oiou` (same), `pr@0.5` ... `pr@0.9`
            (over targeted samples), `n_acc`, `t_acc`, `n_acc_ref`, `t_acc_ref`, `count`,
            `count_target` and `count_no_target`.
        """
        nan = float("nan")
        nt = self._nt
        n_empty, n_target = nt["tn"] + nt["fp"], nt["tp"] + nt["fn"]
        giou = self._sum_iou / self._count if self._count else nan
        ciou = self._inter / self._union if self._union > 0 else nan
        out = {"giou": giou, "miou": giou, "ciou": ciou, "oiou": ciou}
        for t, c in zip(self.pr_thresholds, self._pr.tolist(), strict=True):
            out[f"pr@{t:g}"] = c / n_target if n_target else nan
        out["n_acc"] = nt["tn"] / n_empty if n_empty else nan
        out["t_acc"] = nt["tp"] / n_target if n_target else nan
        out["n_acc_ref"] = nt["iou1"] / n_empty if n_empty else nan
        out["t_acc_ref"] = nt["partial"] / n_target if n_target else nan
        out["count"] = float(self._count)
        out["count_target"] = float(n_target)
        out["count_no_target"] = float(n_empty)
        return out


def referring_metrics(
    preds: Tensor, targets: Tensor, *, has_target: Tensor | None = None, **kwargs: object
) -> dict[str, float]:
    """One-shot form of `ReferringMetrics` (same keyword arguments).

    Args:
        preds: Predicted masks `(B, H, W)` (bool / 0-1, or logits).
        targets: Ground-truth masks `(B, H, W)`, binary.
        has_target: Optional `(B,)` bool no-target-head decision; see `ReferringMetrics.update`.
        **kwargs: Arguments of `ReferringMetrics`.

    Returns:
        The dict of `ReferringMetrics.compute`.

    Examples:
        >>> r = referring_metrics(torch.zeros(1, 2, 2), torch.ones(1, 2, 2))
        >>> r["giou"], r["t_acc"]
        (0.0, 0.0)
    """
    m = ReferringMetrics(**kwargs)  # type: ignore[arg-type]
    m.update(preds, targets, has_target=has_target)
    return m.compute()
