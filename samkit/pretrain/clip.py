"""Contrastive pretraining of a tiny open_clip CLIP on generated images and captions.

`ClipPretrainTask` trains both towers of a `ClipBackbone` on two kinds of pairs per step:

* **object crops and captions** (`samkit.data.scenes.generate_object_crop`): one thing
  (`"<colour> <shape>"`) or one stuff texture per canvas. Captions fill a random template
  (`TEMPLATES`) with the full name, or, for things, sometimes only the shape (`"a star"`) or only
  the colour (`"a red shape"`). The loss is CLIP's symmetric cross-entropy over the unique
  captions of the batch, with every caption that is true of an image counted as a positive
  (UniCL-style; plain CLIP would treat "a star" as a negative of a red star). Colour-shape
  combinations in `HELDOUT_COMBOS` are never drawn, so zero-shot accuracy on them measures
  compositional generalisation.
* **scenes and their semantic maps** (`samkit.data.synthetic.generate_scene`): the dense patch
  features (`ClipBackbone.encode_dense`, both the `"plain"` path and the `"value"` path that
  SAM-MI uses) are classified against the class names' text embeddings, with each patch's class
  fractions as soft targets. This dense alignment term is what makes the dense path of a model
  this small usable (large CLIPs get it from scale); it is weighted by `dense_weight`.

`measure_clip` reports zero-shot crop accuracy (seen and held-out combinations, stuff) and the
dense zero-shot mIoU against the majority-class baseline.
"""

# axis legend
# b - images (B), t - texts / classes (T), c - embedding channels (C)
# h w - patch grid; H W - pixels

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from samkit.backbones._clip_dense import DenseMode
from samkit.backbones.clip import ClipBackbone
from samkit.data.scenes import ObjectCrop, generate_object_crop
from samkit.data.synthetic import (
    CLASS_NAMES,
    COLOR_NAMES,
    NUM_CLASSES,
    STUFF_CLASSES,
    THING_CLASSES,
    generate_scene,
)
from samkit.metrics.mean import MeanMetric

__all__ = [
    "HELDOUT_COMBOS",
    "SEEN_COMBOS",
    "TEMPLATES",
    "ClipPairBatch",
    "ClipPairDataset",
    "ClipPretrainTask",
    "measure_clip",
]

HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("green", "circle"),
        ("blue", "triangle"),
        ("yellow", "square"),
        ("white", "circle"),
    }
)
"""Colour-shape combinations never shown in pretraining (zero-shot compositional test)."""

SEEN_COMBOS: frozenset[tuple[str, str]] = frozenset(
    (c, s) for c in COLOR_NAMES for s in THING_CLASSES if (c, s) not in HELDOUT_COMBOS
)
"""The colour-shape combinations pretraining draws."""

TEMPLATES: tuple[str, ...] = (
    "{}",
    "a {}",
    "a {}.",
    "the {}",
    "a photo of a {}.",
    "A photo of a {} in the scene",
    "a picture of a {}.",
    "an image of the {}.",
)
"""Caption templates (they include the ones samkit's systems use for class names)."""


@dataclass
class ClipPairBatch:
    """Crops with their attributes, and scenes with their semantic maps.

    Attributes:
        crops: `(B, 3, S, S)` in `[0, 1]`.
        colors: Colour index per crop (`COLOR_NAMES`), -1 for stuff.
        shapes: Class index per crop (`CLASS_NAMES`).
        scenes: `(B2, 3, H, W)` in `[0, 1]`.
        semantic: `(B2, H, W)` class indices (`CLASS_NAMES`).
    """

    crops: Tensor
    colors: Tensor
    shapes: Tensor
    scenes: Tensor
    semantic: Tensor


class ClipPairDataset(Dataset):  # type: ignore[type-arg]
    """Item `i`: an object crop from seed `offset + i`, and (every `scene_every` items) a scene.

    Args:
        length: Number of items.
        crop_size: Crop side.
        scene_size: Scene side.
        offset: Seed of item 0.
        heldout: Draw crops of the held-out combinations only (for evaluation).
        scene_every: One item in this many also carries a scene.
    """

    def __init__(
        self,
        *,
        length: int = 100_000,
        crop_size: int = 64,
        scene_size: int = 128,
        offset: int = 0,
        heldout: bool = False,
        scene_every: int = 8,
    ) -> None:
        if length < 1 or offset < 0 or scene_every < 1:
            raise ValueError(
                f"length and scene_every must be >= 1 and offset >= 0, got {length}, "
                f"{scene_every} and {offset}"
            )
        self.length = length
        self.crop_size = crop_size
        self.scene_size = scene_size
        self.offset = offset
        self.allowed = HELDOUT_COMBOS if heldout else SEEN_COMBOS
        self.scene_every = scene_every

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[ObjectCrop, tuple[Tensor, Tensor] | None]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        seed = self.offset + index
        crop = generate_object_crop(seed, size=self.crop_size, allowed=self.allowed)
        scene = None
        if index % self.scene_every == 0:
            s = generate_scene(seed, size=self.scene_size, num_expressions=0)
            scene = (s.image, s.semantic)
        return crop, scene


def _soft_patch_targets(semantic: Tensor, grid: tuple[int, int]) -> Tensor:
    """Class fractions of each patch: `(B, H, W)` labels -> `(B, T, h, w)`."""
    onehot = F.one_hot(semantic, NUM_CLASSES).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, grid)


class ClipPretrainTask:
    """Train both towers of a `ClipBackbone` (see the module docstring).

    Args:
        model: The CLIP backbone (all of it is trained).
        dense_weight: Weight of the dense alignment term.
        partial_caption: Probability that a thing's caption names only its shape or colour.
    """

    stages: tuple[str, ...] = ("clip",)

    def __init__(
        self, model: ClipBackbone, *, dense_weight: float = 1.0, partial_caption: float = 0.3
    ) -> None:
        self.model = model
        self.dense_weight = dense_weight
        self.partial_caption = partial_caption
        self.logit_scale = 1.0

    def configure_stage(self, stage: int) -> list[dict[str, Any]]:
        """Train every parameter (open_clip's learnable temperature included)."""
        self.model.set_trainable("all")
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "name": "clip"}]

    def collate(
        self, samples: Sequence[tuple[ObjectCrop, tuple[Tensor, Tensor] | None]]
    ) -> ClipPairBatch:
        """Stack crops (with colour / class indices) and the scenes that came with them."""
        if not samples:
            raise ValueError("collate: expected at least one item, got none")
        crops = [c for c, _ in samples]
        scenes = [s for _, s in samples if s is not None]
        size = samples[0][0].image.shape[-1]
        return ClipPairBatch(
            crops=torch.stack([c.image for c in crops]),
            colors=torch.tensor([COLOR_NAMES.index(c.color) if c.color else -1 for c in crops]),
            shapes=torch.tensor([CLASS_NAMES.index(c.shape) for c in crops]),
            scenes=torch.stack([s[0] for s in scenes]) if scenes else torch.zeros(0, 3, size, size),
            semantic=torch.stack([s[1] for s in scenes])
            if scenes
            else torch.zeros(0, size, size, dtype=torch.long),
        )

    def _captions(self, batch: ClipPairBatch) -> tuple[list[str], Tensor]:
        """Unique captions of the batch and the `(B, T)` matrix of which are true of which crop."""
        keys = []
        for color, shape in zip(batch.colors.tolist(), batch.shapes.tolist(), strict=True):
            draw = float(torch.rand(()))
            if color < 0:
                keys.append((-1, shape))
            elif draw < self.partial_caption / 2:
                keys.append((-1, shape))  # shape only
            elif draw < self.partial_caption:
                keys.append((color, -1))  # colour only
            else:
                keys.append((color, shape))
        unique = sorted(set(keys))
        template = TEMPLATES[int(torch.randint(len(TEMPLATES), ()))]
        texts = []
        for color, shape in unique:
            if shape < 0:
                texts.append(template.format(f"{COLOR_NAMES[color]} shape"))
            elif color < 0:
                texts.append(template.format(CLASS_NAMES[shape]))
            else:
                texts.append(template.format(f"{COLOR_NAMES[color]} {CLASS_NAMES[shape]}"))
        col = torch.tensor([k[0] for k in unique])
        shp = torch.tensor([k[1] for k in unique])
        colors, shapes = batch.colors.cpu(), batch.shapes.cpu()
        ok_color = (col[None] < 0) | (col[None] == colors[:, None])
        ok_shape = (shp[None] < 0) | (shp[None] == shapes[:, None])
        is_stuff = colors[:, None] < 0
        # A stuff crop matches only its own stuff caption; "red shape" never matches stuff.
        positive = torch.where(
            is_stuff, (shp[None] == shapes[:, None]) & (col[None] < 0), ok_color & ok_shape
        )
        return texts, positive.to(batch.crops.device)

    def training_step(self, batch: ClipPairBatch, stage: int) -> Mapping[str, Tensor]:
        """Multi-positive contrastive loss on crops plus the dense alignment term on scenes."""
        clip = self.model
        scale = clip.model.logit_scale.exp().clamp(max=100.0)
        texts, positive = self._captions(batch)
        text = F.normalize(clip.encode_tokens(clip.tokenize(texts)).embeddings, dim=-1)
        image = clip.encode_image(batch.crops)
        logits = scale * image @ text.T  # (B, T)
        target = positive.float() / positive.float().sum(-1, keepdim=True)
        i2t = -(target * logits.log_softmax(-1)).sum(-1).mean()
        col_target = positive.float().T / positive.float().T.sum(-1, keepdim=True)
        t2i = -(col_target * logits.T.log_softmax(-1)).sum(-1).mean()
        contrastive = 0.5 * (i2t + t2i)
        out = {"contrastive": contrastive.detach()}
        loss = contrastive
        if batch.scenes.shape[0] > 0 and self.dense_weight > 0:
            template = TEMPLATES[int(torch.randint(len(TEMPLATES), ()))]
            names = F.normalize(
                clip.encode_tokens(
                    clip.tokenize([template.format(n) for n in CLASS_NAMES])
                ).embeddings,
                dim=-1,
            )
            dense = torch.zeros((), device=batch.crops.device)
            modes: tuple[DenseMode, ...] = ("plain", "value")
            for mode in modes:
                feats = F.normalize(clip.dense_features(batch.scenes, mode=mode), dim=1)
                target_px = _soft_patch_targets(batch.semantic, (feats.shape[-2], feats.shape[-1]))
                scores = scale * torch.einsum("bchw,tc->bthw", feats, names)
                dense = dense + -(target_px * scores.log_softmax(1)).sum(1).mean()
            out["dense"] = dense.detach() / 2
            loss = loss + self.dense_weight * dense / 2
        out["loss"] = loss
        return out

    # ------------------------------------------------------------------ evaluation
    def predict(self, batch: ClipPairBatch) -> list[Tensor]:
        """Zero-shot class of every crop among the colour-shape names and stuff classes."""
        names, _ = _vocabulary()
        text = self.model.encode_text(names, templates=list(TEMPLATES)).embeddings
        pred = (self.model.encode_image(batch.crops) @ text.T).argmax(-1)
        return list(pred)

    def metrics(self) -> dict[str, MeanMetric]:
        """Zero-shot accuracy of the crops."""
        return {"accuracy": MeanMetric()}

    def update_metrics(
        self, metrics: Mapping[str, Any], predictions: Sequence[Any], batch: Any
    ) -> None:
        """Compare each prediction with the crop's name."""
        _, index = _vocabulary()
        truth = [
            index[(c, s)] for c, s in zip(batch.colors.tolist(), batch.shapes.tolist(), strict=True)
        ]
        hits = torch.tensor([int(p) == t for p, t in zip(predictions, truth, strict=True)])
        metrics["accuracy"].update(hits.float())

    def summarize(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """`zero_shot_accuracy` (held-out combinations in the validation set)."""
        return {"zero_shot_accuracy": metrics["accuracy"].compute()["mean"]}


def _vocabulary() -> tuple[list[str], dict[tuple[int, int], int]]:
    """Every colour-shape name, then every stuff class; and `(colour, class) -> index`."""
    names: list[str] = []
    index: dict[tuple[int, int], int] = {}
    for ci, c in enumerate(COLOR_NAMES):
        for s in THING_CLASSES:
            index[(ci, CLASS_NAMES.index(s))] = len(names)
            names.append(f"{c} {s}")
    for s in STUFF_CLASSES:
        index[(-1, CLASS_NAMES.index(s))] = len(names)
        names.append(s)
    return names, index


@torch.no_grad()
def measure_clip(clip: nn.Module, *, num: int = 200) -> dict[str, Any]:
    """Zero-shot figures of a CLIP backbone on generated data never used in training.

    * `seen_accuracy` / `heldout_accuracy` / `stuff_accuracy`: zero-shot classification of
      `num` crops each (seen combinations, held-out combinations, stuff canvases) among all 24
      colour-shape names and the 5 stuff classes, with `TEMPLATES` ensembled.
    * `seen_color_accuracy` / `seen_shape_accuracy` and the `heldout_` pair: the same thing
      crops classified by one attribute alone, among the colour-only captions (`"red shape"`)
      or the shape-only ones (`"star"`). They say which half of a held-out name is missed.
    * `dense_miou` (`"value"` path, SAM-MI's) and `dense_miou_plain`: per-patch zero-shot
      classes among `CLASS_NAMES` on `num` scenes at 128 px, upsampled bilinearly, scored with
      `samkit.metrics.semantic_metrics` (mIoU over classes present); `majority_miou` is the
      same metric for predicting the most frequent class of the data everywhere.

    Args:
        clip: A `ClipBackbone` (eval mode).
        num: Crops per group and scenes.

    Returns:
        The figures, rounded to 4 digits.
    """
    from samkit.metrics.semantic import semantic_metrics

    assert isinstance(clip, ClipBackbone)
    names, index = _vocabulary()
    text = clip.encode_text(names, templates=list(TEMPLATES)).embeddings
    attributes = {  # attribute -> (its values, the text embeddings of their captions)
        "color": (
            COLOR_NAMES,
            clip.encode_text(
                [f"{c} shape" for c in COLOR_NAMES], templates=list(TEMPLATES)
            ).embeddings,
        ),
        "shape": (
            THING_CLASSES,
            clip.encode_text(list(THING_CLASSES), templates=list(TEMPLATES)).embeddings,
        ),
    }
    out: dict[str, Any] = {}
    seed0 = 10**9
    for group, allowed, stuff in (
        ("seen_accuracy", SEEN_COMBOS, 0.0),
        ("heldout_accuracy", HELDOUT_COMBOS, 0.0),
        ("stuff_accuracy", SEEN_COMBOS, 1.0),
    ):
        crops = [
            generate_object_crop(seed0 + i, allowed=allowed, stuff_fraction=stuff)
            for i in range(num)
        ]
        truth = torch.tensor(
            [
                index[(COLOR_NAMES.index(c.color) if c.color else -1, CLASS_NAMES.index(c.shape))]
                for c in crops
            ]
        )
        image = clip.encode_image(torch.stack([c.image for c in crops]))
        pred = (image @ text.T).argmax(-1)
        out[group] = round(float((pred == truth).float().mean()), 4)
        if stuff == 0.0:  # which attribute fails: the colour alone, the shape alone
            for attr, (vocab, emb) in attributes.items():
                got = (image @ emb.T).argmax(-1)
                want = torch.tensor([vocab.index(getattr(c, attr)) for c in crops])
                name = group.replace("_accuracy", f"_{attr}_accuracy")
                out[name] = round(float((got == want).float().mean()), 4)
    class_text = clip.encode_text(list(CLASS_NAMES), templates=list(TEMPLATES)).embeddings
    scenes = [generate_scene(seed0 + i, num_expressions=0) for i in range(num)]
    images = torch.stack([s.image for s in scenes])
    truth = torch.stack([s.semantic for s in scenes])
    paths: tuple[tuple[str, DenseMode], ...] = (
        ("dense_miou", "value"),
        ("dense_miou_plain", "plain"),
    )
    for key, mode in paths:
        feats = F.normalize(clip.dense_features(images, mode=mode), dim=1)
        scores = torch.einsum("bchw,tc->bthw", feats, class_text)
        scores = F.interpolate(scores, size=truth.shape[-2:], mode="bilinear", align_corners=False)
        out[key] = round(semantic_metrics(scores, truth, num_classes=NUM_CLASSES)["mIoU"], 4)
    majority = int(torch.bincount(truth.flatten(), minlength=NUM_CLASSES).argmax())
    out["majority_miou"] = round(
        semantic_metrics(torch.full_like(truth, majority), truth, num_classes=NUM_CLASSES)["mIoU"],
        4,
    )
    out["crops_per_group"] = num
    return out
