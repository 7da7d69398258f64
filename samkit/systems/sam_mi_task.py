"""The training-engine task of SAM-MI: semantic batches in, mIoU and TSPP diagnostics out.

What the pre-engine `examples/train_sam_mi.py` loop computed, moved into the library: two stages
(`"tspp"` trains the prompter alone with `L_tspp`; `"full"` trains everything but SAM with `L_ce +
lambda_tspp L_tspp`), the prediction (class logits resized to the image, argmax) and the metrics:
`SemanticIoU` over the data set's class names and the prompter's diagnostics (points per image, the
largest fraction of the grid sampled, and the fraction of ground-truth segments larger than `g_p`
grid cells that receive at least one point).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from scipy.ndimage import label as connected_components
from torch import Tensor

from samkit.data.datasets import SemanticBatch, SemanticSample, collate_semantic
from samkit.engine.task import Metric
from samkit.losses.sam_mi import SAMMILoss
from samkit.metrics.semantic import SemanticIoU
from samkit.modules.tspp import masks_from_labels
from samkit.systems._tasks_common import (
    MeanMetric,
    check_vocabulary,
    model_device,
    sam_input_size,
    to_device,
)
from samkit.systems.sam_mi import SAMMI

__all__ = ["SAMMIPrediction", "SAMMITask", "sampled_cells", "segment_hits"]


@dataclass
class SAMMIPrediction:
    """SAM-MI's answer for one image.

    Attributes:
        semantic: `(H, W)` long class indices into the task's class names, at the image's size.
        points: `(N, 2)` the `(x, y)` point prompts sampled for the image, in SAM's input frame.
    """

    semantic: Tensor
    points: Tensor


def sampled_cells(
    points: Tensor,
    image_size: tuple[int, int],
    *,
    grid: int,
    sam_size: int | None = None,
    input_size: tuple[int, int] | None = None,
) -> Tensor:
    """The `(g, g)` grid cells that hold a point (points are cell centres in SAM's frame).

    Args:
        points: `(N, 2)` `(x, y)` points in SAM's input frame.
        image_size: `(H, W)` of the image.
        grid: The prompter's grid side `g`.
        sam_size: SAM's input side, for SAM's letterbox (the image's long side resized to it).
        input_size: `(h_in, w_in)` the image occupies in the backend's input (its
            `ImageEmbedding.input_size`; SAM 2: the whole square); takes precedence over
            `sam_size`.

    Returns:
        `(g, g)` bool.

    Raises:
        ValueError: If neither `sam_size` nor `input_size` is given.
    """
    if input_size is not None:
        h_in, w_in = input_size
    elif sam_size is not None:
        scale = sam_size / max(image_size)
        h_in, w_in = round(image_size[0] * scale), round(image_size[1] * scale)
    else:
        raise ValueError("sampled_cells: expected sam_size or input_size, got neither")
    j = (points[:, 0] / w_in * grid).floor().long().clamp(0, grid - 1)
    i = (points[:, 1] / h_in * grid).floor().long().clamp(0, grid - 1)
    cells = torch.zeros(grid * grid, dtype=torch.bool, device=points.device)
    cells[i * grid + j] = True
    return cells.reshape(grid, grid)


def segment_hits(cells: Tensor, labels: Tensor, num_classes: int, g_p: float) -> Tensor:
    """For each segment larger than `g_p` grid cells, whether a sampled cell falls in it.

    Segments are the connected components of each class's mask on the grid (the mask resized as
    the TSPP targets are: a cell belongs to it when at least half of its pixels do).

    Args:
        cells: `(g, g)` bool sampled cells.
        labels: `(H, W)` class indices (`255` or any index outside `[0, T)`: no class).
        num_classes: `T`.
        g_p: Grid cells per expected point.

    Returns:
        `(S,)` float, 1 for a segment that got a point, 0 otherwise.
    """
    grid = cells.shape[-1]
    masks = masks_from_labels(labels[None], num_classes)[0]
    on_grid = (F.adaptive_avg_pool2d(masks.float(), grid) >= 0.5).cpu().numpy()
    hit_cells = cells.cpu()
    hits: list[float] = []
    for k in range(num_classes):
        comp, n = connected_components(on_grid[k])
        for c in range(1, n + 1):
            seg = torch.from_numpy(comp == c)
            if seg.sum() > g_p:
                hits.append(float((hit_cells & seg).any()))
    return torch.tensor(hits, dtype=torch.float64)


class SAMMITask:
    """Train and evaluate `SAMMI` with the engine: stages `("tspp", "full")`.

    A model without a prompter (`prompting="grid"` and no SMAgg) has the one stage `("full",)`.
    Every group carries the config's learning rate and weight decay (as `configure_stage` and
    the example's AdamW give them).

    Examples:
        >>> from samkit.data.synthetic import CLASS_NAMES
        >>> from samkit.systems.sam_mi import build_sam_mi
        >>> task = SAMMITask(build_sam_mi("tiny"), class_names=CLASS_NAMES)
        >>> task.stages, [g["name"] for g in task.configure_stage(0)]
        (('tspp', 'full'), ['tspp'])
    """

    def __init__(
        self,
        model: SAMMI,
        *,
        class_names: Sequence[str] | None = None,
        num_things: int = 0,
        lambda_tspp: float | None = None,
        lambda_mse: float | None = None,
    ) -> None:
        """Wrap a built SAM-MI.

        Args:
            model: The system.
            class_names: The data set's class names (label `k` is `class_names[k]`); SAM-MI
                segments into their CLIP text embeddings. `None`: the vocabulary the model
                was trained on (`model.class_names`). A model without one records these
                (so `save_pretrained` keeps the vocabulary of its training data).
            num_things: How many of them are things (SAM-MI does not distinguish; checked only).
            lambda_tspp: Weight of `L_tspp` in the full stage (default: the config's).
            lambda_mse: Weight of `L_mse` inside `L_tspp` (default: the config's).

        Raises:
            TypeError: If `model` is not a `SAMMI`.
            ValueError: On a bad vocabulary (empty, repeated names, `num_things` out of range),
                or no `class_names` for a model without a vocabulary.
        """
        if not isinstance(model, SAMMI):
            raise TypeError(f"model: expected a SAMMI, got {type(model).__name__}")
        if class_names is None:
            if model.class_names is None:
                raise ValueError(
                    "class_names: SAM-MI is open-vocabulary; give the class names (the model "
                    "records none)"
                )
            class_names = model.class_names
        elif model.class_names is None:
            model.class_names = tuple(class_names)
        self.class_names, self.num_things = check_vocabulary(
            class_names, num_things, system="SAM-MI"
        )
        cfg = model.config
        self.model = model
        self.stages: tuple[str, ...] = ("tspp", "full") if model.tspp is not None else ("full",)
        self.criterion = SAMMILoss(
            lambda_tspp=cfg.lambda_tspp if lambda_tspp is None else lambda_tspp,
            lambda_mse=cfg.lambda_mse if lambda_mse is None else lambda_mse,
            g_p=cfg.g_p,
            m_p=cfg.m_p,
            reduce_counts=True,  # under DDP, 2 x batch b takes the step of batch 2b
        )

    def _model_stage(self, stage: int) -> int:
        if not 0 <= stage < len(self.stages):
            raise ValueError(
                f"stage: expected 0..{len(self.stages) - 1} {self.stages}, got {stage}"
            )
        return 1 if self.stages[stage] == "tspp" else 2

    # ------------------------------------------------------------------ training
    def configure_stage(self, stage: int) -> list[dict[str, Any]]:
        """`SAMMI.configure_stage` of the stage, with the config's weight decay on every group.

        Raises:
            ValueError: For an unknown stage.
        """
        groups = self.model.configure_stage(self._model_stage(stage))
        decay = self.model.config.weight_decay
        return [{**g, "weight_decay": g.get("weight_decay", decay)} for g in groups]

    def collate(self, samples: Sequence[SemanticSample]) -> SemanticBatch:
        """`collate_semantic`, the batch carrying the task's class names."""
        return dataclasses.replace(collate_semantic(samples), class_names=self.class_names)

    def _check_batch(self, batch: SemanticBatch) -> Tensor:
        if tuple(batch.class_names) != self.class_names:
            raise ValueError(
                f"batch.class_names: expected the task's {len(self.class_names)} classes "
                f"{list(self.class_names)[:5]}..., got {list(batch.class_names)[:5]}... "
                "(collate with the task's collate)"
            )
        labels = batch.semantic.long()
        num = len(self.class_names)
        bad = (labels >= num) & (labels != self.criterion.ignore_index) | (labels < 0)
        if bool(bad.any()):
            raise ValueError(
                f"batch.semantic: expected labels in [0, {num}) (the task's {num} class names) "
                f"or {self.criterion.ignore_index}, got {labels[bad].unique().tolist()[:10]}"
            )
        return labels

    def training_step(self, batch: SemanticBatch, stage: int) -> dict[str, Tensor]:
        """Stage `"tspp"`: `L_tspp` of the prompter alone; stage `"full"`: the full loss."""
        model_stage = self._model_stage(stage)
        batch = to_device(batch, model_device(self.model))
        labels = self._check_batch(batch)
        names = list(self.class_names)
        if model_stage == 1:
            output: Any = self.model.prompter(batch.images, names)
        else:
            output = self.model(batch.images, names)
        return {"loss": self.criterion(output, labels, stage=model_stage)}

    # ------------------------------------------------------------------ evaluation
    def predict(self, batch: SemanticBatch) -> list[SAMMIPrediction]:
        """Class logits resized (bilinear) to the images, argmax; and the sampled points."""
        return self.infer(batch.images)

    def infer(self, images: Tensor, texts: Sequence[str] | None = None) -> list[SAMMIPrediction]:
        """Predictions for images without annotations (see `predict`).

        Args:
            images: `(B, 3, H, W)` RGB, float in `[0, 1]` or uint8.
            texts: Not used by SAM-MI (must be `None`).

        Raises:
            ValueError: If `texts` is given.
        """
        if texts is not None:
            raise ValueError("texts: SAM-MI takes no expressions; its vocabulary is class_names")
        images = images.to(model_device(self.model))
        out = self.model(images, list(self.class_names))
        logits = F.interpolate(out.logits, size=images.shape[-2:], mode="bilinear")
        labels = logits.argmax(1)
        return [
            SAMMIPrediction(semantic=labels[i], points=out.points[i][out.point_valid[i]])
            for i in range(labels.shape[0])
        ]

    def metrics(self) -> dict[str, Metric]:
        """`semantic` (SemanticIoU), `points` (points per image), `segments` (segment recall)."""
        names = self.class_names
        out: dict[str, Any] = {
            "semantic": SemanticIoU(
                num_classes=len(names), class_names=names, ignore_index=self.criterion.ignore_index
            ),
            "points": MeanMetric(),
            "segments": MeanMetric(),
        }
        return out

    def update_metrics(
        self,
        metrics: Mapping[str, Metric],
        predictions: Sequence[SAMMIPrediction],
        batch: SemanticBatch,
    ) -> None:
        """Add the batch's labels, point counts and (with TSPP prompting) segment hits."""
        if not predictions:
            return
        labels = batch.semantic.long()
        preds = torch.stack([p.semantic.to(labels.device) for p in predictions])
        metrics["semantic"].update(preds, labels)
        counts = torch.tensor([float(p.points.shape[0]) for p in predictions])
        metrics["points"].update(counts)
        cfg = self.model.config
        if cfg.prompting == "tspp":
            size = (int(labels.shape[-2]), int(labels.shape[-1]))
            input_size = sam_input_size(self.model.sam, size)  # the backend's frame
            for p, lab in zip(predictions, labels, strict=True):
                cells = sampled_cells(p.points, size, input_size=input_size, grid=cfg.grid)
                hits = segment_hits(cells, lab, len(self.class_names), cfg.g_p)
                metrics["segments"].update(hits)

    def summarize(self, metrics: Mapping[str, Metric]) -> dict[str, float]:
        """mIoU, mAcc, aAcc and the prompter's diagnostics (as the example reports them).

        Keys: `mIoU`, `mAcc`, `aAcc`, `points_per_image`, `max_grid_fraction`,
        `segment_recall` (0 without segments) and `segments`.
        """
        semantic = metrics["semantic"].compute_all()  # type: ignore[attr-defined]
        points = metrics["points"].compute()
        segments = metrics["segments"].compute()
        out = {k: float(semantic[k]) for k in ("mIoU", "mAcc", "aAcc")}
        out["points_per_image"] = float(points["mean"])
        out["max_grid_fraction"] = float(points["max"]) / self.model.config.grid**2
        out["segment_recall"] = float(segments["mean"]) if segments["count"] else 0.0
        out["segments"] = float(segments["count"])
        return out
