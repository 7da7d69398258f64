"""Promptable-segmentation pretraining of a SAM backbone, with SAM's own recipe.

`SamPretrainTask` trains every part of a `SamBackbone` (image encoder, prompt encoder, mask
decoder) on scenes with annotated segments (`samkit.data.scenes`), following the SAM paper's
training recipe (Kirillov et al., 2023, §3 and appendix A):

* prompts are drawn from ground truth: half the prompts of a batch are one foreground point
  drawn uniformly inside a segment, half are the segment's box with noise (standard deviation a
  tenth of the box side, at most 20 px at SAM's 1024 px, scaled to the model's input size);
* an ambiguous first prompt (one point) decodes three masks and only the one with the lowest
  loss is trained; box prompts and correction rounds decode SAM's single-mask output;
* `correction_rounds` iterative correction clicks follow: a point is drawn uniformly in the
  error region of the previous prediction (foreground where it missed the segment, background
  where it spilled over), added to the prompt, and the previous mask logits are fed back as the
  mask prompt;
* the loss is `20 * focal + dice` on the mask (computed at the decoder's resolution against the
  area-downsampled ground truth) plus the mean squared error of the IoU prediction against the
  IoU of the predicted mask.

The task is a `samkit.engine.Task`, so the engine (`Trainer`) runs it with its schedules,
checkpoints and exact resume; `samkit pretrain sam` is the command line.
"""

# axis legend
# b - images (B), k - prompts per image (K), n - points per prompt (N)
# m - masks per prompt (M), h w - low-res mask grid (4h x 4w of the embedding grid)

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import masks_to_boxes, sigmoid_focal_loss

from samkit.backbones.sam import SamBackbone
from samkit.data.scenes import PRETRAIN_FAMILIES, SCENE_FAMILIES, FamilyScene, generate_family_scene
from samkit.metrics.mean import MeanMetric
from samkit.pretrain.quality import mask_iou, prompt_quality
from samkit.types import Prompts

__all__ = ["FamilySceneDataset", "SamPretrainBatch", "SamPretrainTask"]


class FamilySceneDataset(Dataset):  # type: ignore[type-arg]
    """Scenes of several families, made on access: item `i` is family `i % F`, seed `offset + i`.

    Args:
        families: Family names (`samkit.data.scenes.SCENE_FAMILIES`).
        length: Number of scenes.
        size: Image side.
        offset: Seed of item 0 (keep training and evaluation offsets apart).

    Examples:
        >>> data = FamilySceneDataset(("polygons",), length=3, size=64)
        >>> len(data), data[1].image.shape
        (3, torch.Size([3, 64, 64]))
    """

    def __init__(
        self,
        families: Sequence[str] = PRETRAIN_FAMILIES,
        *,
        length: int = 100_000,
        size: int = 128,
        offset: int = 0,
    ) -> None:
        bad = [f for f in families if f not in SCENE_FAMILIES]
        if not families or bad:
            raise ValueError(
                f"families: expected names from {SCENE_FAMILIES}, got {list(families)}"
            )
        if length < 1 or offset < 0:
            raise ValueError(f"length must be >= 1 and offset >= 0, got {length} and {offset}")
        self.families = tuple(families)
        self.length = length
        self.size = size
        self.offset = offset

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> FamilyScene:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        family = self.families[index % len(self.families)]
        return generate_family_scene(family, self.offset + index, size=self.size)


@dataclass
class SamPretrainBatch:
    """Images and their segment masks.

    Attributes:
        images: `(B, 3, H, W)` in `[0, 1]`.
        masks: `B` tensors `(S_b, H, W)` bool, every segment of each image.
        is_thing: `B` tensors `(S_b,)` bool.
    """

    images: Tensor
    masks: list[Tensor]
    is_thing: list[Tensor]


def _focal_dice(logits: Tensor, target: Tensor) -> Tensor:
    """`20 * focal + dice` per mask: logits and soft targets `(..., h, w)` -> `(...)`."""
    focal = sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="none")
    prob = logits.sigmoid().flatten(-2)
    t = target.flatten(-2)
    dice = 1.0 - (2.0 * (prob * t).sum(-1) + 1.0) / (prob.sum(-1) + t.sum(-1) + 1.0)
    return 20.0 * focal.flatten(-2).mean(-1) + dice


def _sample_points(weights: Tensor) -> Tensor:
    """One pixel per row of `weights (R, H, W)` (uniform over the non-zero ones): `(R, 2)` x, y.

    Rows without a non-zero pixel get the image centre.
    """
    r, h, w = weights.shape
    flat = weights.reshape(r, h * w).float()
    empty = flat.sum(-1) == 0
    flat = torch.where(empty[:, None], torch.ones_like(flat), flat)
    idx = torch.multinomial(flat, 1)[:, 0]
    xy = torch.stack([idx % w, idx // w], dim=-1).float() + 0.5
    return xy


class SamPretrainTask:
    """Train a `SamBackbone` for promptable segmentation (see the module docstring).

    Args:
        model: The SAM backbone to train (all of it).
        prompts_per_image: `K` segments prompted per image and step (half points, half boxes).
        correction_rounds: Iterative correction clicks after the first prompt.
        things_only_eval: Evaluate on things only (objects), as the documented figures.
    """

    stages: tuple[str, ...] = ("sam",)

    def __init__(
        self,
        model: SamBackbone,
        *,
        prompts_per_image: int = 8,
        correction_rounds: int = 2,
        things_only_eval: bool = True,
    ) -> None:
        if prompts_per_image < 2 or prompts_per_image % 2:
            raise ValueError(
                f"prompts_per_image: expected an even int >= 2, got {prompts_per_image}"
            )
        if correction_rounds < 0:
            raise ValueError(f"correction_rounds: expected >= 0, got {correction_rounds}")
        self.model = model
        self.prompts_per_image = prompts_per_image
        self.correction_rounds = correction_rounds
        self.things_only_eval = things_only_eval

    # ------------------------------------------------------------------ engine protocol
    def configure_stage(self, stage: int) -> list[dict[str, Any]]:
        """Train every parameter of the backbone."""
        self.model.requires_grad_(True)
        return [{"params": [p for p in self.model.parameters()], "name": "sam"}]

    def collate(self, samples: Sequence[FamilyScene]) -> SamPretrainBatch:
        """Stack the images; keep each scene's masks."""
        if not samples:
            raise ValueError("collate: expected at least one scene, got none")
        return SamPretrainBatch(
            images=torch.stack([s.image for s in samples]),
            masks=[s.masks for s in samples],
            is_thing=[s.is_thing for s in samples],
        )

    def _lowres_target(self, masks: Tensor, low: tuple[int, int]) -> Tensor:
        """Ground-truth masks `(..., H, W)` in the SAM input frame at the decoder's resolution."""
        h, w = masks.shape[-2:]
        s = self.model.img_size
        nh, nw = self.model._resized_size((h, w))
        flat = masks.reshape(-1, 1, h, w).float()
        flat = F.interpolate(flat, size=(nh, nw), mode="bilinear", align_corners=False)
        flat = F.pad(flat, (0, s - nw, 0, s - nh))
        flat = F.adaptive_avg_pool2d(flat, low)
        return flat.reshape(*masks.shape[:-2], *low)

    def _choose(self, batch: SamPretrainBatch) -> Tensor:
        """`K` segments per image (without replacement while there are enough): `(B, K, H, W)`."""
        k = self.prompts_per_image
        chosen = []
        for masks in batch.masks:
            order = torch.randperm(masks.shape[0], device=masks.device)
            idx = order[torch.arange(k, device=masks.device) % masks.shape[0]]
            chosen.append(masks[idx])
        return torch.stack(chosen)

    def _boxes(self, gt: Tensor) -> Tensor:
        """Noisy boxes `(B, K, 4)` of masks `(B, K, H, W)`, in the SAM input frame."""
        b, k, h, w = gt.shape
        boxes = masks_to_boxes(gt.reshape(b * k, h, w)).reshape(b, k, 4)
        boxes[..., 2:] += 1.0
        side = (boxes[..., 2:] - boxes[..., :2]).repeat(1, 1, 2)
        cap = max(20.0 * self.model.img_size / 1024.0, 2.0)
        noise = (torch.randn_like(boxes) * 0.1 * side).clamp(-cap, cap)
        boxes = boxes + noise
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
        return self.model.transform_boxes(boxes, (h, w))

    def training_step(self, batch: SamPretrainBatch, stage: int) -> Mapping[str, Tensor]:
        """One step: point and box prompts, correction clicks, `20 focal + dice + IoU MSE`."""
        model = self.model
        images = batch.images
        b, _, h, w = images.shape
        emb = model.encode(images)
        gt = self._choose(batch)  # (B, K, H, W)
        half = self.prompts_per_image // 2
        low = (4 * model.embedding_size[0], 4 * model.embedding_size[1])
        target = self._lowres_target(gt, low)  # (B, K, h4, w4)

        pts = _sample_points(gt[:, :half].reshape(b * half, h, w)).reshape(b, half, 1, 2)
        point_prompts = Prompts(
            points=model.transform_coords(pts, (h, w)),
            labels=torch.ones(b, half, 1, device=images.device),
        )
        box_prompts = Prompts(boxes=self._boxes(gt[:, half:]))
        losses: dict[str, list[Tensor]] = {"mask": [], "iou": []}
        rounds = []
        for group, prompts, multimask in (
            (slice(0, half), point_prompts, True),
            (slice(half, None), box_prompts, False),
        ):
            pred = model.predict(emb, prompts, multimask=multimask, upsample=False)
            tgt = target[:, group, None]  # (B, K/2, 1, h4, w4)
            mask_loss = _focal_dice(pred.low_res_logits, tgt.expand_as(pred.low_res_logits))
            best = mask_loss.argmin(dim=-1, keepdim=True)  # (B, K/2, 1)
            losses["mask"].append(mask_loss.gather(-1, best))
            with torch.no_grad():
                iou = mask_iou(pred.low_res_logits > 0, tgt > 0.5).to(pred.iou_scores.dtype)
            losses["iou"].append(F.mse_loss(pred.iou_scores, iou, reduction="none"))
            logits = pred.low_res_logits.gather(2, best[..., None, None].expand(-1, -1, 1, *low))
            rounds.append((prompts, logits, group))
        for _ in range(self.correction_rounds):
            next_rounds = []
            for prompts, logits, group in rounds:
                prompts = self._correct(prompts, logits.detach(), gt[:, group], (h, w))
                pred = model.predict(emb, prompts, multimask=False, upsample=False)
                tgt = target[:, group, None]
                losses["mask"].append(_focal_dice(pred.low_res_logits, tgt))
                with torch.no_grad():
                    iou = mask_iou(pred.low_res_logits > 0, tgt > 0.5).to(pred.iou_scores.dtype)
                losses["iou"].append(F.mse_loss(pred.iou_scores, iou, reduction="none"))
                next_rounds.append((prompts, pred.low_res_logits, group))
            rounds = next_rounds
        mask = torch.cat([x.flatten() for x in losses["mask"]]).mean()
        iou_loss = torch.cat([x.flatten() for x in losses["iou"]]).mean()
        return {"loss": mask + iou_loss, "mask": mask.detach(), "iou": iou_loss.detach()}

    def _correct(
        self, prompts: Prompts, logits: Tensor, gt: Tensor, size: tuple[int, int]
    ) -> Prompts:
        """Add one correction click per prompt and feed `logits (B, K, 1, h4, w4)` back."""
        b, k, h, w = gt.shape
        model = self.model
        pred = model.postprocess_masks(logits[:, :, 0], self.model._resized_size(size), size) > 0
        missed, spilled = gt & ~pred, pred & ~gt
        error = missed | spilled
        xy = _sample_points(error.reshape(b * k, h, w))
        ix = xy[:, 0].long().clamp(0, w - 1)
        iy = xy[:, 1].long().clamp(0, h - 1)
        label = missed.reshape(b * k, h, w)[torch.arange(b * k, device=gt.device), iy, ix].float()
        # A prompt with nothing left to fix gets a click inside its segment.
        label = torch.where(error.reshape(b * k, -1).any(-1), label, torch.ones_like(label))
        click = model.transform_coords(xy.reshape(b, k, 1, 2), size)
        label = label.reshape(b, k, 1)
        if prompts.points is None or prompts.labels is None:
            points, labels = click, label
        else:
            points = torch.cat([prompts.points, click], dim=2)
            labels = torch.cat([prompts.labels, label], dim=2)
        return Prompts(points=points, labels=labels, boxes=prompts.boxes, masks=logits)

    # ------------------------------------------------------------------ evaluation
    def predict(self, batch: SamPretrainBatch) -> list[dict[str, Tensor]]:
        """Per image: IoUs of one-point (best and predicted-IoU choice) and box prompts."""
        out = []
        for i in range(batch.images.shape[0]):
            masks = batch.masks[i]
            if self.things_only_eval:
                masks = masks[batch.is_thing[i]]
            out.append(prompt_quality(self.model, batch.images[i], masks))
        return out

    def metrics(self) -> dict[str, MeanMetric]:
        """Mean IoUs over every evaluated segment."""
        return {name: MeanMetric() for name in ("point_best", "point_choice", "box")}

    def update_metrics(
        self, metrics: Mapping[str, Any], predictions: Sequence[Any], batch: Any
    ) -> None:
        """Add every segment's IoUs."""
        for pred in predictions:
            for name, metric in metrics.items():
                metric.update(pred[name])

    def summarize(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """`point_miou_best`, `point_miou_choice`, `box_miou`."""
        return {
            "point_miou_best": metrics["point_best"].compute()["mean"],
            "point_miou_choice": metrics["point_choice"].compute()["mean"],
            "box_miou": metrics["box"].compute()["mean"],
        }
