"""The training-engine task of SAM-CP: panoptic batches in, PQ / mIoU / mask AP out.

What the pre-engine `examples/train_sam_cp.py` loop computed per batch, moved into the library: the
patches (the batch's oracle parts, or the system's own SAM proposer for real data, which has no part
masks), the patch targets of `build_patch_targets`, `SAMCPLoss`, `SAMCP.predict` and the three
metrics. The class vocabulary is the data set's (things first); SAM-CP classifies against CLIP text
embeddings of those names, so any vocabulary works with any trained model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from samkit.data.datasets import PanopticBatch, PanopticSample, collate_panoptic
from samkit.engine.task import Metric
from samkit.losses.sam_cp import SAMCPLoss
from samkit.matching import build_patch_targets
from samkit.metrics.panoptic import PanopticQuality
from samkit.metrics.semantic import SemanticIoU
from samkit.proposals import patches_from_masks
from samkit.systems._tasks_common import check_vocabulary, model_device, to_device
from samkit.systems.sam_cp import SAMCP
from samkit.types import PanopticResult, Patches

__all__ = ["PatchSource", "SAMCPTask"]

PatchSource = Literal["auto", "oracle", "sam"]
"""Where a batch's patches come from: `"oracle"` the batch's `part_masks` (synthetic data),
`"sam"` the system's SAM proposer, `"auto"` the parts when the batch has them, else SAM."""


class SAMCPTask:
    """Train and evaluate `SAMCP` with the engine (one stage, every trainable parameter).

    Examples:
        >>> from samkit.data.synthetic import CLASS_NAMES, NUM_THING_CLASSES
        >>> from samkit.systems.sam_cp import build_sam_cp
        >>> model = build_sam_cp("tiny", build_proposer=False)
        >>> task = SAMCPTask(model, class_names=CLASS_NAMES, num_things=NUM_THING_CLASSES)
        >>> task.stages, sorted(task.metrics())
        (('train',), ['mask_ap', 'pq', 'semantic'])
    """

    stages: tuple[str, ...] = ("train",)

    def __init__(
        self,
        model: SAMCP,
        *,
        class_names: Sequence[str] | None = None,
        num_things: int | None = None,
        patches: PatchSource = "auto",
        class_weight: float = 2.0,
        affinity_weight: float = 1.0,
        dice_weight: float = 1.0,
        mask_ap: bool = True,
    ) -> None:
        """Wrap a built SAM-CP.

        Args:
            model: The system.
            class_names: The data set's class names, things first (default: the config's).
            num_things: How many of them are things (required with `class_names` unless they
                are the config's own).
            patches: The patch source (see `PatchSource`).
            class_weight: Weight of the classification losses.
            affinity_weight: Weight of the affinity (focal) losses.
            dice_weight: Weight of the dice losses.
            mask_ap: Also report COCO mask AP (needs pycocotools; skipped without it).

        Raises:
            TypeError: If `model` is not a `SAMCP`.
            ValueError: On a bad vocabulary (empty, repeated names, `num_things` out of range or
                contradicting the config for the config's own names), an unknown `patches`, or
                `patches="sam"` for a model built without a proposer.
        """
        if not isinstance(model, SAMCP):
            raise TypeError(f"model: expected a SAMCP, got {type(model).__name__}")
        cfg = model.config
        config_things = len(cfg.thing_classes)
        if class_names is None:
            class_names = model.class_names
            num_things = config_things if num_things is None else num_things
        if tuple(class_names) == model.class_names:
            if num_things is not None and num_things != config_things:
                raise ValueError(
                    f"num_things: class_names are the SAM-CP config's, which has {config_things} "
                    f"thing classes, got num_things={num_things}"
                )
            num_things = config_things
        if num_things is None:
            raise ValueError("num_things: give num_things together with custom class_names")
        self.class_names, self.num_things = check_vocabulary(
            class_names, num_things, system="SAM-CP"
        )
        if patches not in ("auto", "oracle", "sam"):
            raise ValueError(f"patches: expected 'auto', 'oracle' or 'sam', got {patches!r}")
        if patches == "sam" and model.proposer is None:
            raise ValueError(
                "patches='sam' needs the SAM proposer: build SAM-CP with build_proposer=True"
            )
        self.model = model
        self.patch_source: PatchSource = patches
        self.with_mask_ap = mask_ap
        self.criterion = SAMCPLoss(
            class_weight=class_weight,
            affinity_weight=affinity_weight,
            dice_weight=dice_weight,
            reduce_counts=True,  # under DDP, 2 x batch b takes the step of batch 2b
        )

    # ------------------------------------------------------------------ training
    def configure_stage(self, stage: int) -> list[dict[str, Any]]:
        """One group of every parameter that requires grad (the frozen CLIP and SAM excluded).

        The group has no `lr` or `weight_decay`: the run's configuration gives them.

        Raises:
            ValueError: For a stage other than 0.
        """
        if stage != 0:
            raise ValueError(f"stage: SAM-CP trains in one stage (0), got {stage}")
        params = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": params, "name": "sam_cp"}]

    def collate(self, samples: Sequence[PanopticSample]) -> PanopticBatch:
        """`collate_panoptic`."""
        return collate_panoptic(samples)

    def patches(self, batch: PanopticBatch) -> list[Patches]:
        """The batch's patches: its oracle parts or the SAM proposer's (see `PatchSource`).

        Raises:
            ValueError: If oracle parts are asked for and the batch has none, or SAM patches and
                the model has no proposer.
        """
        source = self.patch_source
        if source == "auto":
            source = "oracle" if batch.part_masks is not None else "sam"
        if source == "oracle":
            if batch.part_masks is None:
                raise ValueError(
                    "patches='oracle' needs part masks in the batch (synthetic data with "
                    "parts=True); use patches='sam' for real data"
                )
            return [patches_from_masks(m) for m in batch.part_masks]
        if self.model.proposer is None:
            raise ValueError(
                "this batch has no part masks and the model no SAM proposer: build SAM-CP with "
                "build_proposer=True"
            )
        return self.model.proposer(batch.images)

    def _check_labels(self, batch: PanopticBatch) -> None:
        num_classes = len(self.class_names)
        for b, classes in enumerate(batch.segment_classes):
            if classes.numel() and not 0 <= int(classes.min()) <= int(classes.max()) < num_classes:
                raise ValueError(
                    f"batch.segment_classes[{b}]: expected class indices in [0, {num_classes}) "
                    f"(the task's {num_classes} class names), got {classes.tolist()}"
                )

    def training_step(self, batch: PanopticBatch, stage: int) -> dict[str, Tensor]:
        """`SAMCPLoss` of the batch (`loss` and its terms); crowd segments are not targets."""
        batch = to_device(batch, model_device(self.model))
        self._check_labels(batch)
        patches = self.patches(batch)
        num_stuff = len(self.class_names) - self.num_things
        targets = []
        for b, p in enumerate(patches):
            masks, classes = batch.segment_masks[b], batch.segment_classes[b]
            crowd = [bool(getattr(s, "iscrowd", False)) for s in batch.segments[b]]
            if any(crowd) and len(crowd) == len(classes):
                keep = ~torch.tensor(crowd, device=classes.device)
                masks, classes = masks[keep], classes[keep]
            targets.append(
                build_patch_targets(
                    p, masks, classes, num_things=self.num_things, num_stuff=num_stuff
                )
            )
        out = self.model(batch.images, patches, list(self.class_names), num_things=self.num_things)
        return dict(self.criterion(out, targets))

    # ------------------------------------------------------------------ evaluation
    def predict(self, batch: PanopticBatch) -> list[PanopticResult]:
        """`SAMCP.predict` on the batch's patches: panoptic, semantic and instance results."""
        batch = to_device(batch, model_device(self.model))
        return self.model.predict(
            batch.images,
            self.patches(batch),
            list(self.class_names),
            num_things=self.num_things,
        )

    def infer(self, images: Tensor, texts: Sequence[str] | None = None) -> list[PanopticResult]:
        """Results for images without annotations (patches from the system's SAM proposer).

        Args:
            images: `(B, 3, H, W)` RGB, float in `[0, 1]` or uint8.
            texts: Not used by SAM-CP (must be `None`).

        Raises:
            ValueError: If `texts` is given or the model has no SAM proposer.
        """
        if texts is not None:
            raise ValueError("texts: SAM-CP takes no expressions; its vocabulary is class_names")
        if self.model.proposer is None:
            raise ValueError(
                "SAM-CP needs its SAM proposer to run on images without patches: build it with "
                "build_proposer=True"
            )
        images = images.to(model_device(self.model))
        return self.model.predict(images, None, list(self.class_names), num_things=self.num_things)

    def metrics(self) -> dict[str, Metric]:
        """`pq` (PanopticQuality), `semantic` (SemanticIoU) and `mask_ap` (MaskAP)."""
        names, things = self.class_names, self.num_things
        out: dict[str, Any] = {
            "pq": PanopticQuality(things=range(things), stuff=range(things, len(names))),
            "semantic": SemanticIoU(num_classes=len(names), class_names=names),
        }
        if self.with_mask_ap:
            try:
                from samkit.metrics.instance import MaskAP

                out["mask_ap"] = MaskAP()
            except ImportError:
                pass
        return out

    def update_metrics(
        self,
        metrics: Mapping[str, Metric],
        predictions: Sequence[PanopticResult],
        batch: PanopticBatch,
    ) -> None:
        """Score every image as the example's `evaluate` does (with the batch's crowd flags)."""
        iscrowd = getattr(batch, "instance_iscrowd", None)
        for b, res in enumerate(predictions):
            metrics["pq"].update(res.panoptic, res.segments, batch.panoptic[b], batch.segments[b])
            metrics["semantic"].update(res.semantic[None], batch.semantic[b][None])
            if "mask_ap" in metrics:
                metrics["mask_ap"].update(
                    res.instance_masks,
                    res.instance_scores,
                    res.instance_labels,
                    batch.instance_masks[b],
                    batch.instance_classes[b],
                    gt_iscrowd=None if iscrowd is None else iscrowd[b],
                )

    def summarize(self, metrics: Mapping[str, Metric]) -> dict[str, float]:
        """`pq`, `sq`, `rq` (all, `_things`, `_stuff`), `mIoU`, `mAcc`, `aAcc`, `mask_ap*`."""
        out: dict[str, float] = {}
        pq = metrics["pq"].compute()
        for group, suffix in (("all", ""), ("things", "_things"), ("stuff", "_stuff")):
            for key in ("pq", "sq", "rq"):
                out[f"{key}{suffix}"] = float(pq[group][key])
        semantic = metrics["semantic"].compute_all()  # type: ignore[attr-defined]
        for key in ("mIoU", "mAcc", "aAcc"):
            out[key] = float(semantic[key])
        if "mask_ap" in metrics:
            for key, value in metrics["mask_ap"].compute().items():
                out[f"mask_{key}"] = float(value)
        return out
