"""SAM-MI losses: CAT-Seg's per-class BCE, the TSPP loss, and the two-stage total.

* `cost_aggregation_loss`: logits upsampled to the label size, binary cross-entropy against the
  one-hot labels, mean over images, classes and pixels (CAT-Seg). The reference keeps ignored
  pixels with an all-zero target (`ignore_mode="zero"`); `"exclude"` drops them instead.
* `tspp_loss`: `L_tspp = L_ce^mask + lambda_mse * L_mse` (SAM-MI §3.2): cross-entropy of the text
  masks against the labels and mean-squared error of the sampling probabilities against the
  eq. 3-5 targets.
* `SAMMILoss`: stage 1 is `L_tspp` alone; stage 2 is `L_ce + lambda_tspp * L_tspp` (§3.5).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from samkit._checks import as_float, check_probabilities, check_shape
from samkit.losses._normalizer import normalizer
from samkit.losses.segmentation import _loss_dtype
from samkit.modules.tspp import masks_from_labels, tspp_targets
from samkit.types import SAMMIOutput, TSPPOutput

__all__ = ["SAMMILoss", "cost_aggregation_loss", "tspp_loss"]


def _upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _check_classes(num_classes: int, *, name: str) -> None:
    if num_classes < 1:
        raise ValueError(f"{name}: expected at least one class (T >= 1), got T = {num_classes}")


def cost_aggregation_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = 255,
    ignore_mode: Literal["zero", "exclude"] = "zero",
    reduce_counts: bool = False,
) -> Tensor:
    """CAT-Seg's segmentation loss: per-class binary cross-entropy with one-hot targets.

    Args:
        logits: Class logits `(B, T, h, w)`; upsampled bilinearly to the labels' size.
        labels: Class ids `(B, H, W)`; `ignore_index` marks void pixels.
        ignore_index: The void label.
        ignore_mode: `"zero"` (reference: void pixels count, with an all-zero target) or
            `"exclude"` (void pixels are left out of the mean).
        reduce_counts: Under DDP with `"exclude"`, count the valid pixels over all ranks (see
            `tspp_loss`).

    Returns:
        The scalar loss (0 for an empty batch).

    Raises:
        ValueError: On mismatched shapes, `T = 0` or an unknown `ignore_mode`.

    Examples:
        >>> logits = torch.full((1, 2, 2, 2), -20.0); logits[0, 0] = 20.0
        >>> round(cost_aggregation_loss(logits, torch.zeros(1, 4, 4).long()).item(), 6)
        0.0
    """
    s = check_shape(logits, "B T h w", name="logits")
    check_shape(labels, "B H W", name="labels", known={"B": s["B"]})
    _check_classes(s["T"], name="logits")
    logits = as_float(logits, name="logits", dtype=_loss_dtype(logits))
    up = _upsample(logits, tuple(labels.shape[-2:]))  # type: ignore[arg-type]
    target = masks_from_labels(labels, s["T"], ignore_index=ignore_index).to(up.dtype)
    loss = F.binary_cross_entropy_with_logits(up, target, reduction="none")
    if ignore_mode == "zero":
        return loss.sum() / max(loss.numel(), 1)
    if ignore_mode != "exclude":
        raise ValueError(f"ignore_mode must be 'zero' or 'exclude', got {ignore_mode!r}")
    valid = (labels != ignore_index)[:, None].to(loss.dtype)
    count = valid.sum() * s["T"]
    return (loss * valid).sum() / normalizer(count, like=loss, reduce_counts=reduce_counts)


def tspp_loss(
    output: TSPPOutput,
    prob_targets: Tensor,
    labels: Tensor,
    *,
    lambda_mse: float = 0.5,
    ignore_index: int = 255,
    reduce_counts: bool = False,
) -> Tensor:
    """`L_tspp = L_ce^mask + lambda_mse * L_mse` (SAM-MI §3.2).

    Args:
        output: The prompter's `TSPPOutput` (`mask_logits (B, T, h, w)`, `prob (B, g, g)`).
        prob_targets: Target probabilities `(B, g, g)` from `tspp_targets`.
        labels: Class ids `(B, H, W)`; the mask logits are upsampled to this size.
        lambda_mse: Weight of the probability MSE (paper: 0.5).
        ignore_index: Void label, left out of the cross-entropy.
        reduce_counts: Under DDP, count the non-void pixels (the cross-entropy's divisor) over
            all ranks, as DETR does with `num_boxes`, so that `W` processes with batch `b` each
            take the step of one process with batch `W * b` when the images hold different
            amounts of void. Every rank must then call the loss in step (as a training step
            does); without an initialised process group it changes nothing.

    Returns:
        The scalar loss (0 contribution from the cross-entropy when every pixel is void; 0 for
        an empty batch).

    Raises:
        ValueError: On mismatched shapes, `T = 0`, or probabilities / targets outside `[0, 1]`.

    Examples:
        >>> out = TSPPOutput(torch.full((1, 2, 2), 0.5), torch.zeros(1, 2, 2, 2),
        ...                  torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2, dtype=torch.bool))
        >>> labels = torch.zeros(1, 2, 2, dtype=torch.long)
        >>> round(tspp_loss(out, torch.zeros(1, 2, 2), labels).item(), 4)  # ln 2 + 0.5 * 0.25
        0.8181
    """
    s = check_shape(output.mask_logits, "B T h w", name="mask_logits")
    check_shape(prob_targets, "B g g", name="prob_targets", known={"B": s["B"]})
    check_shape(output.prob, "B g g", name="prob", known={"g": prob_targets.shape[-1]})
    check_shape(labels, "B H W", name="labels", known={"B": s["B"]})
    _check_classes(s["T"], name="mask_logits")
    dtype = _loss_dtype(output.mask_logits)
    prob = check_probabilities(as_float(output.prob, name="prob", dtype=dtype), name="prob")
    prob_targets = as_float(prob_targets, name="prob_targets", dtype=dtype)
    check_probabilities(prob_targets, name="prob_targets")
    mask_logits = as_float(output.mask_logits, name="mask_logits", dtype=dtype)
    up = _upsample(mask_logits, tuple(labels.shape[-2:]))  # type: ignore[arg-type]
    ce = F.cross_entropy(up, labels.long(), ignore_index=ignore_index, reduction="sum")
    ce = ce / normalizer((labels != ignore_index).sum(), like=ce, reduce_counts=reduce_counts)
    mse = F.mse_loss(prob, prob_targets, reduction="sum") / max(prob.numel(), 1)
    return ce + lambda_mse * mse


class SAMMILoss(nn.Module):
    """Two-stage SAM-MI objective computed from a `SAMMIOutput` and semantic labels.

    The TSPP targets are computed here from the labels (`tspp_targets` on the prompter's grid).
    After each call `last_terms` holds the float values of `ce`, `tspp` and `total`.

    Examples:
        >>> from samkit.types import SAMMIOutput
        >>> tspp = TSPPOutput(torch.rand(1, 4, 4), torch.randn(1, 2, 4, 4),
        ...                   torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2, 2, dtype=torch.bool))
        >>> out = SAMMIOutput(torch.randn(1, 2, 8, 8), torch.zeros(1, 0, 2),
        ...                   torch.zeros(1, 0, dtype=torch.bool),
        ...                   torch.zeros(1, 0, 8, 8, dtype=torch.bool),
        ...                   torch.zeros(1, 0, 8, 8, dtype=torch.bool),
        ...                   torch.zeros(1, 0, dtype=torch.bool), tspp)
        >>> loss = SAMMILoss(g_p=1.0)(out, torch.zeros(1, 16, 16, dtype=torch.long), stage=2)
        >>> loss.dim(), sorted(SAMMILoss.TERMS)
        (0, ['ce', 'total', 'tspp'])
    """

    TERMS = ("ce", "tspp", "total")

    def __init__(
        self,
        *,
        lambda_tspp: float = 0.1,
        lambda_mse: float = 0.5,
        g_p: float = 5.0,
        m_p: int = 10,
        ignore_index: int = 255,
        ignore_mode: Literal["zero", "exclude"] = "zero",
        reduce_counts: bool = False,
    ) -> None:
        """Create the objective (defaults: the paper's).

        Args:
            lambda_tspp: Weight of `L_tspp` in stage 2 (paper: 0.1).
            lambda_mse: Weight of the probability MSE inside `L_tspp` (paper: 0.5).
            g_p: Grid cells per expected point for the targets (paper: 5).
            m_p: Cap on expected points per mask (paper: 10).
            ignore_index: Void label.
            ignore_mode: Void handling of the BCE (see `cost_aggregation_loss`).
            reduce_counts: Reduce the pixel counts that normalise the losses over the DDP
                ranks (see `tspp_loss`).
        """
        super().__init__()
        self.lambda_tspp, self.lambda_mse = lambda_tspp, lambda_mse
        self.g_p, self.m_p = g_p, m_p
        self.ignore_index, self.ignore_mode = ignore_index, ignore_mode
        self.reduce_counts = reduce_counts
        self.last_terms: dict[str, float] = {}

    def targets(self, labels: Tensor, num_classes: int, grid: int) -> Tensor:
        """TSPP probability targets `(B, g, g)` from labels `(B, H, W)`."""
        masks = masks_from_labels(labels, num_classes, ignore_index=self.ignore_index)
        return tspp_targets(masks, grid=grid, g_p=self.g_p, m_p=self.m_p)

    def forward(
        self, output: SAMMIOutput | TSPPOutput, labels: Tensor, *, stage: int = 2
    ) -> Tensor:
        """Compute the stage's loss.

        Args:
            output: The system output (its `tspp` is needed unless TSPP is switched off), or
                just the prompter's `TSPPOutput` (`SAMMI.prompter`), which implies stage 1.
            labels: Class ids `(B, H, W)`.
            stage: 1 (`L_tspp` only) or 2 (`L_ce + lambda_tspp * L_tspp`).

        Returns:
            The scalar loss.

        Raises:
            ValueError: For an unknown stage, or stage 1 without TSPP outputs.
        """
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        tspp_out: TSPPOutput | None
        if isinstance(output, TSPPOutput):
            tspp_out, stage, ref = output, 1, output.prob
        else:
            tspp_out, ref = output.tspp, output.logits
        zero = ref.new_zeros(())
        l_tspp = zero
        if tspp_out is not None:
            grid = tspp_out.prob.shape[-1]
            num_classes = tspp_out.mask_logits.shape[1]
            targets = self.targets(labels, num_classes, grid)
            l_tspp = tspp_loss(
                tspp_out,
                targets,
                labels,
                lambda_mse=self.lambda_mse,
                ignore_index=self.ignore_index,
                reduce_counts=self.reduce_counts,
            )
        elif stage == 1:
            raise ValueError("stage 1 trains TSPP, but the output has no TSPP part")
        if stage == 1:
            total, l_ce = l_tspp, zero
        else:
            assert isinstance(output, SAMMIOutput)
            l_ce = cost_aggregation_loss(
                output.logits,
                labels,
                ignore_index=self.ignore_index,
                ignore_mode=self.ignore_mode,
                reduce_counts=self.reduce_counts,
            )
            total = l_ce + self.lambda_tspp * l_tspp
        self.last_terms = {
            "ce": float(l_ce.detach()),
            "tspp": float(l_tspp.detach()),
            "total": float(total.detach()),
        }
        return total
