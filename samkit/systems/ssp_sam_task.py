"""The training-engine task of SSP-SAM: referring batches in, ReLA metrics out.

What the pre-engine `examples/train_ssp_sam.py` loop computed per batch, moved into the library:
targets in SAM's low-resolution padded frame and boxes on the CLIP canvas, `ReferringLoss`, the
prediction (mask at the original size and the model's no-target decision) and `ReferringMetrics`.

Real referring data sets hold several expressions per image (gRefCOCO: about 3 to 10), one sample
per expression. The frozen image encoders (SAM's, and CLIP's unless it trains) are the costly part
of a step, so each distinct image of a batch is encoded once and its embeddings are shared by its
expressions. Images are grouped by exact equality of their pixels, not by ids.
"""

# axis legend
# b - expressions of the batch (`B` in docstrings)
# u - distinct images of the batch, `U`
# h w - pixels

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from samkit.data.datasets import ReferringBatch, ReferringSample, collate_referring
from samkit.engine.task import Metric
from samkit.losses.referring import ReferringLoss
from samkit.metrics.referring import ReferringMetrics, to_sam_padded_frame
from samkit.modules.visual_adapter import canvas_boxes
from samkit.systems._tasks_common import model_device, sam_input_size, to_device
from samkit.systems.ssp_sam import SSPSAM
from samkit.types import ClipDenseOutput, ImageEmbedding, ReferringOutput, TextEmbedding

__all__ = ["ReferringPrediction", "SSPSAMTask", "distinct_images"]


@dataclass
class ReferringPrediction:
    """SSP-SAM's answer for one expression.

    Attributes:
        mask: `(H, W)` bool, the mask logits `> 0` at the image's size. It is the raw mask:
            when `has_target` is False the answer is "no target" whatever the mask holds (as
            ReLA scores it).
        has_target: The model's decision that the expression has a referent.
        score: SAM's predicted IoU of the mask.
    """

    mask: Tensor
    has_target: bool
    score: float


def distinct_images(images: Tensor) -> tuple[Tensor, Tensor]:
    """Group equal images of a batch: the first index of each distinct image and the inverse.

    Args:
        images: `(B, 3, H, W)` (any dtype); two images are the same when all pixels are equal.

    Returns:
        `first (U,)` long, the index of the first occurrence of each distinct image in batch
        order, and `inverse (B,)` long, the distinct image of every sample, so that
        `images[first][inverse]` equals `images`.

    Examples:
        >>> x = torch.rand(2, 3, 4, 4)
        >>> first, inverse = distinct_images(torch.stack([x[0], x[1], x[0]]))
        >>> first.tolist(), inverse.tolist()
        ([0, 1], [0, 1, 0])
    """
    flat = images.flatten(1)
    # a cheap fingerprint narrows the exact comparisons down to likely equal pairs
    keys = flat.double().sum(1).tolist() if flat.shape[1] else [0.0] * flat.shape[0]
    first: list[int] = []
    inverse: list[int] = []
    for i in range(flat.shape[0]):
        match = next(
            (
                u
                for u, j in enumerate(first)
                if keys[j] == keys[i] and torch.equal(flat[j], flat[i])
            ),
            None,
        )
        if match is None:
            match = len(first)
            first.append(i)
        inverse.append(match)
    device = images.device
    return (
        torch.tensor(first, dtype=torch.long, device=device),
        torch.tensor(inverse, dtype=torch.long, device=device),
    )


class SSPSAMTask:
    """Train and evaluate `SSPSAM` with the engine (one stage).

    Trains the new heads, the prompt generator and SAM's mask decoder (`SSPSAM.param_groups`,
    learning rates from the model's config) and CLIP's image tower when `clip_trainable` says
    so. SAM's IoU head is left frozen: no loss reaches it (an optimizer would skip it anyway),
    and a parameter that gets no gradient would force DDP's `find_unused_parameters`.

    Examples:
        >>> from samkit.systems.ssp_sam import build_ssp_sam
        >>> task = SSPSAMTask(build_ssp_sam("tiny"))
        >>> task.stages, [g["name"] for g in task.configure_stage(0)]
        (('train',), ['rest', 'vl_transformer', 'mask_decoder'])
    """

    stages: tuple[str, ...] = ("train",)

    def __init__(
        self,
        model: SSPSAM,
        *,
        class_names: Sequence[str] | None = None,
        num_things: int = 0,
        train_decoder: bool = True,
        dice_weight: float = 4.0,
        focal_weight: float = 4.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        presence_weight: float = 1.0,
    ) -> None:
        """Wrap a built SSP-SAM.

        Args:
            model: The system.
            class_names: The data set's category names (kept for reference; referring
                segmentation does not classify).
            num_things: Ignored (the registry passes it to every task).
            train_decoder: Train SAM's mask decoder (the example's default; the reference
                freezes it for its first epochs).
            dice_weight: Weight of the mask dice loss.
            focal_weight: Weight of the mask focal loss.
            l1_weight: Weight of the box L1 loss.
            giou_weight: Weight of the box GIoU loss.
            presence_weight: Weight of the GRES presence BCE (`target_head` models only).

        Raises:
            TypeError: If `model` is not an `SSPSAM`.
        """
        if not isinstance(model, SSPSAM):
            raise TypeError(f"model: expected an SSPSAM, got {type(model).__name__}")
        self.model = model
        self.class_names = tuple(class_names or ())
        self.num_things = num_things
        self.train_decoder = train_decoder
        self.criterion = ReferringLoss(
            dice_weight=dice_weight,
            focal_weight=focal_weight,
            l1_weight=l1_weight,
            giou_weight=giou_weight,
            presence_weight=presence_weight,
            reduce_counts=True,  # under DDP, 2 x batch b takes the step of batch 2b
        )

    # ------------------------------------------------------------------ training
    def configure_stage(self, stage: int) -> list[dict[str, Any]]:
        """Set `requires_grad` and return `SSPSAM.param_groups` (trainable parameters only).

        Raises:
            ValueError: For a stage other than 0.
        """
        if stage != 0:
            raise ValueError(f"stage: SSP-SAM trains in one stage (0), got {stage}")
        model = self.model
        model.requires_grad_(False)
        model.clip.set_trainable(model.config.clip_trainable)
        for head in model.heads().values():
            head.requires_grad_(True)
        model.set_decoder_frozen(not self.train_decoder)
        model.sam.mask_decoder.iou_prediction_head.requires_grad_(False)
        groups = []
        for group in model.param_groups():
            params = [p for p in group["params"] if p.requires_grad]
            if params:
                groups.append({**group, "params": params})
        return groups

    def collate(self, samples: Sequence[ReferringSample]) -> ReferringBatch:
        """`collate_referring`."""
        return collate_referring(samples)

    def encode_images(self, images: Tensor) -> tuple[ClipDenseOutput, ImageEmbedding]:
        """CLIP-Surgery features and SAM embeddings, each distinct image encoded once.

        Args:
            images: `(B, 3, H, W)`, one per expression.

        Returns:
            The CLIP features and SAM embeddings of every row of `images`.
        """
        model = self.model
        first, inverse = distinct_images(images)
        unique = images[first]
        with torch.no_grad():
            emb = model.encode_sam(unique)  # under the model's precision
        clip_grad = torch.is_grad_enabled() and any(
            p.requires_grad for p in model.clip.parameters()
        )
        with torch.set_grad_enabled(clip_grad):
            clip = model.encode_clip(unique)
        clip = ClipDenseOutput(features=clip.features[inverse], cls=clip.cls[inverse])
        return clip, emb.select(inverse)

    def encode_text(self, texts: Sequence[str]) -> TextEmbedding:
        """CLIP text states of the expressions (with gradients only if CLIP's text tower trains)."""
        model = self.model
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in model.clip.parameters())
        with torch.set_grad_enabled(grad):
            return model.encode_text(list(texts))

    def forward(self, batch: ReferringBatch, *, upsample: bool) -> ReferringOutput:
        """Run SSP-SAM on a batch (images encoded once per distinct image)."""
        return self._run(batch.images, batch.texts, upsample=upsample)

    def _run(self, images: Tensor, texts: Sequence[str], *, upsample: bool) -> ReferringOutput:
        clip, emb = self.encode_images(images)
        return self.model(
            None,
            text=self.encode_text(texts),
            clip_features=clip,
            sam_embeddings=emb,
            upsample=upsample,
        )

    def targets(self, batch: ReferringBatch) -> tuple[Tensor, Tensor, Tensor]:
        """The example's targets: masks `(B, 1, 4h, 4w)`, canvas boxes `(B, 4)`, has-target `(B,)`.

        Masks move to SAM's low-resolution padded frame; `(x0, y0, x1, y1)` pixel boxes with
        inclusive extremes get `+1` on the far corner and become normalised `(cx, cy, w, h)` on
        CLIP's letterbox canvas (zeros stay zeros: no target); an expression has a target when
        its mask is not empty.
        """
        sam, cfg = self.model.sam, self.model.config
        masks = batch.target_masks
        frame = 4 * sam.embedding_size[0]
        size = (int(masks.shape[-2]), int(masks.shape[-1]))
        low = to_sam_padded_frame(
            masks,
            long_side=sam.img_size,
            frame_size=frame,
            input_size=sam_input_size(sam, size),  # the backend's frame (SAM 2 squashes)
        )
        xyxy = batch.target_boxes.float()
        corner = torch.tensor([0.0, 0.0, 1.0, 1.0], device=xyxy.device)
        xyxy = xyxy + corner * (xyxy.abs().sum(-1, keepdim=True) > 0)
        boxes = canvas_boxes(xyxy, size, size=cfg.clip_image_size)
        return low[:, None].float(), boxes, masks.flatten(1).any(1)

    def training_step(self, batch: ReferringBatch, stage: int) -> dict[str, Tensor]:
        """`ReferringLoss` of the batch: `loss` and its unweighted terms."""
        batch = to_device(batch, model_device(self.model))
        out = self.forward(batch, upsample=False)
        masks, boxes, has_target = self.targets(batch)
        terms = self.criterion(
            out.low_res_logits.float(),
            masks,
            out.boxes.float(),
            boxes,
            out.target_logits.float() if out.target_logits is not None else None,
            has_target,
        )
        losses = {
            "loss": terms.total,
            "dice": terms.dice,
            "focal": terms.focal,
            "l1": terms.l1,
            "giou": terms.giou,
        }
        if terms.presence is not None:
            losses["presence"] = terms.presence
        return losses

    # ------------------------------------------------------------------ evaluation
    def predict(self, batch: ReferringBatch) -> list[ReferringPrediction]:
        """The mask at the image's size and the no-target decision of every expression."""
        return self.infer(batch.images, batch.texts)

    def infer(
        self, images: Tensor, texts: Sequence[str] | None = None
    ) -> list[ReferringPrediction]:
        """Answers for images without annotations: expression `k` refers into `images[k]`.

        Args:
            images: `(B, 3, H, W)` RGB, float in `[0, 1]` or uint8, one per expression (repeat
                an image for several expressions; it is encoded once).
            texts: `B` expressions.

        Raises:
            ValueError: If `texts` is missing or does not hold one expression per image.
        """
        if texts is None or len(texts) != images.shape[0]:
            got = "none" if texts is None else len(texts)
            raise ValueError(
                f"texts: expected one expression per image ({images.shape[0]}), got {got}"
            )
        images = images.to(model_device(self.model))
        out = self._run(images, list(texts), upsample=True)
        assert out.logits is not None
        masks = out.logits[:, 0] > 0
        return [
            ReferringPrediction(mask=m, has_target=bool(h), score=float(s))
            for m, h, s in zip(masks, out.has_target, out.iou_scores.float(), strict=True)
        ]

    def metrics(self) -> dict[str, Metric]:
        """`{"referring": ReferringMetrics()}` (ReLA's rules, the model's no-target decision)."""
        return {"referring": ReferringMetrics()}  # type: ignore[dict-item]

    def update_metrics(
        self,
        metrics: Mapping[str, Metric],
        predictions: Sequence[ReferringPrediction],
        batch: ReferringBatch,
    ) -> None:
        """Score the predicted masks against the target masks."""
        if not predictions:
            return
        preds = torch.stack([p.mask.cpu() for p in predictions])
        has = torch.tensor([p.has_target for p in predictions], dtype=torch.bool)
        metrics["referring"].update(preds, batch.target_masks.cpu(), has_target=has)

    def summarize(self, metrics: Mapping[str, Metric]) -> dict[str, float]:
        """`ReferringMetrics.compute()`: `giou`, `ciou`, `pr@0.5`... `n_acc`, `t_acc`, counts."""
        return {k: float(v) for k, v in metrics["referring"].compute().items()}
