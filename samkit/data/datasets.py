"""Torch datasets over synthetic scenes for the referring, panoptic and semantic tasks.

Every dataset is deterministic by index: item `i` comes from the scene generated with seed
`seed + SPLIT_OFFSETS[split] + scene_index`, and the splits use disjoint seed ranges. Items are
small dataclasses (`ReferringSample`, `PanopticSample`, `SemanticSample`); the matching collate
functions stack the fixed-size tensors and keep ragged ones (per-image instance masks, segment
lists) as lists. Batches have `to(device)` like the other samkit dataclasses.

Use them with a `DataLoader`:

    loader = DataLoader(SyntheticReferringDataset(num_scenes=100), batch_size=8,
                        collate_fn=collate_referring)
"""

# axis legend
# b - batch (`B` in docstrings)
# i - instances of one scene, `I`
# s - panoptic segments of one scene, `S`
# p - oversegmented parts of one scene, `P`
# h w - image pixels (`H`, `W`)

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from samkit.data.synthetic import CLASS_NAMES, Scene, Segment
from samkit.types import _TensorFieldsMixin

__all__ = [
    "SPLIT_OFFSETS",
    "PanopticBatch",
    "PanopticSample",
    "ReferringBatch",
    "ReferringSample",
    "SemanticBatch",
    "SemanticSample",
    "SyntheticPanopticDataset",
    "SyntheticReferringDataset",
    "SyntheticSemanticDataset",
    "collate_panoptic",
    "collate_referring",
    "collate_semantic",
]

SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 10_000_000, "test": 20_000_000}
"""Seed offset of every split; a split holds at most 10 million scenes."""


@dataclass
class ReferringSample(_TensorFieldsMixin):
    """One (scene, expression) pair.

    Attributes:
        image: `(3, H, W)` float RGB in `[0, 1]`.
        text: The expression, e.g. "the red circle".
        target_mask: `(H, W)` bool, union of the referenced instances (empty if none).
        has_target: False for expressions with no referent.
        target_box: `(4,)` float `(x0, y0, x1, y1)` box of `target_mask` (inclusive pixel
            extremes), zeros when there is no target.
        target_ids: Indices of the referenced instances in `instance_masks`.
        kind: The expression kind (see `EXPRESSION_KINDS`).
        instance_masks: `(I, H, W)` bool, all instance masks of the scene (for baselines).
        instance_classes: `(I,)` long class ids of the instances.
        scene_seed: Seed of the scene.
    """

    image: Tensor
    text: str
    target_mask: Tensor
    has_target: bool
    target_box: Tensor
    target_ids: list[int]
    kind: str
    instance_masks: Tensor
    instance_classes: Tensor
    scene_seed: int


@dataclass
class ReferringBatch(_TensorFieldsMixin):
    """A collated batch of `ReferringSample`s.

    Attributes:
        images: `(B, 3, H, W)` float.
        texts: `B` expressions.
        target_masks: `(B, H, W)` bool.
        has_target: `(B,)` bool.
        target_boxes: `(B, 4)` float.
        target_ids: `B` lists of instance indices.
        kinds: `B` expression kinds.
        instance_masks: `B` tensors `(I_b, H, W)` bool.
        instance_classes: `B` tensors `(I_b,)` long.
        scene_seeds: `B` scene seeds.
    """

    images: Tensor
    texts: list[str]
    target_masks: Tensor
    has_target: Tensor
    target_boxes: Tensor
    target_ids: list[list[int]]
    kinds: list[str]
    instance_masks: list[Tensor]
    instance_classes: list[Tensor]
    scene_seeds: list[int]


@dataclass
class PanopticSample(_TensorFieldsMixin):
    """One scene with its instance, semantic and panoptic annotations.

    Attributes:
        image: `(3, H, W)` float RGB in `[0, 1]`.
        instance_masks: `(I, H, W)` bool.
        instance_classes: `(I,)` long.
        semantic: `(H, W)` long class ids.
        panoptic: `(H, W)` long segment ids.
        segments: One `Segment` per segment id.
        segment_masks: `(S, H, W)` bool, one mask per entry of `segments`.
        segment_classes: `(S,)` long category ids of `segments`.
        part_masks: `(P, H, W)` bool oversegmented parts of `segment_masks` when the dataset
            was built with `parts=True`, else `None`.
        part_parents: `(P,)` long index into `segments` of each part, or `None`.
        scene_seed: Seed of the scene.
    """

    image: Tensor
    instance_masks: Tensor
    instance_classes: Tensor
    semantic: Tensor
    panoptic: Tensor
    segments: list[Segment]
    segment_masks: Tensor
    segment_classes: Tensor
    part_masks: Tensor | None
    part_parents: Tensor | None
    scene_seed: int


@dataclass
class PanopticBatch(_TensorFieldsMixin):
    """A collated batch of `PanopticSample`s.

    Attributes:
        images: `(B, 3, H, W)` float.
        semantic: `(B, H, W)` long.
        panoptic: `(B, H, W)` long.
        instance_masks: `B` tensors `(I_b, H, W)` bool.
        instance_classes: `B` tensors `(I_b,)` long.
        segments: `B` lists of `Segment`.
        segment_masks: `B` tensors `(S_b, H, W)` bool.
        segment_classes: `B` tensors `(S_b,)` long.
        part_masks: `B` tensors `(P_b, H, W)` bool, or `None` without parts.
        part_parents: `B` tensors `(P_b,)` long, or `None` without parts.
        scene_seeds: `B` scene seeds.
    """

    images: Tensor
    semantic: Tensor
    panoptic: Tensor
    instance_masks: list[Tensor]
    instance_classes: list[Tensor]
    segments: list[list[Segment]]
    segment_masks: list[Tensor]
    segment_classes: list[Tensor]
    part_masks: list[Tensor] | None
    part_parents: list[Tensor] | None
    scene_seeds: list[int]


@dataclass
class SemanticSample(_TensorFieldsMixin):
    """One scene with its semantic map.

    Attributes:
        image: `(3, H, W)` float RGB in `[0, 1]`.
        semantic: `(H, W)` long ids into `CLASS_NAMES`.
        scene_seed: Seed of the scene.
    """

    image: Tensor
    semantic: Tensor
    scene_seed: int


@dataclass
class SemanticBatch(_TensorFieldsMixin):
    """A collated batch of `SemanticSample`s.

    Attributes:
        images: `(B, 3, H, W)` float.
        semantic: `(B, H, W)` long.
        class_names: The class names the ids index (`CLASS_NAMES`).
        scene_seeds: `B` scene seeds.
    """

    images: Tensor
    semantic: Tensor
    class_names: tuple[str, ...]
    scene_seeds: list[int]


class _SceneDataset(Dataset):  # type: ignore[type-arg]
    """Common part: split/seed bookkeeping and a one-scene cache."""

    def __init__(
        self,
        *,
        num_scenes: int,
        split: str = "train",
        seed: int = 0,
        size: int | tuple[int, int] = 128,
        **scene_kwargs: Any,
    ) -> None:
        raise NotImplementedError

    def scene_seed(self, scene_index: int) -> int:
        """Seed of scene `scene_index` of this split."""
        raise NotImplementedError

    def scene(self, scene_index: int) -> Scene:
        """Generate (or fetch from the one-scene cache) scene `scene_index`."""
        raise NotImplementedError


class SyntheticReferringDataset(_SceneDataset):
    """Referring segmentation: one item per (scene, expression).

    Item `i` is expression `i % expressions_per_scene` of scene `i // expressions_per_scene`;
    a fraction `no_target_fraction` of the expressions of every scene have no referent.

    Example:
        >>> ds = SyntheticReferringDataset(num_scenes=2, size=64, expressions_per_scene=4)
        >>> len(ds)
        8
        >>> batch = collate_referring([ds[0], ds[1]])
        >>> batch.images.shape, batch.target_masks.shape
        (torch.Size([2, 3, 64, 64]), torch.Size([2, 64, 64]))
    """

    def __init__(
        self,
        *,
        num_scenes: int = 1000,
        split: str = "train",
        seed: int = 0,
        size: int | tuple[int, int] = 128,
        expressions_per_scene: int = 4,
        no_target_fraction: float = 0.25,
        **scene_kwargs: Any,
    ) -> None:
        """Build the dataset (scenes are generated lazily).

        Args:
            num_scenes: Number of scenes in the split.
            split: `"train"`, `"val"` or `"test"` (disjoint seed ranges).
            seed: Base seed added to the split offset.
            size: Image size, `S` or `(H, W)`.
            expressions_per_scene: Expressions drawn per scene.
            no_target_fraction: Fraction of expressions with no referent.
            **scene_kwargs: Further keyword arguments of `generate_scene`.
        """
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> ReferringSample:
        raise NotImplementedError


class SyntheticPanopticDataset(_SceneDataset):
    """Panoptic (and instance) segmentation: one item per scene.

    Example:
        >>> ds = SyntheticPanopticDataset(num_scenes=2, size=64, parts=True)
        >>> sample = ds[0]
        >>> sample.segment_masks.shape[1:], sample.part_masks.shape[1:]
        (torch.Size([64, 64]), torch.Size([64, 64]))
    """

    def __init__(
        self,
        *,
        num_scenes: int = 1000,
        split: str = "train",
        seed: int = 0,
        size: int | tuple[int, int] = 128,
        parts: bool = False,
        max_parts: int = 4,
        **scene_kwargs: Any,
    ) -> None:
        """Build the dataset (scenes are generated lazily).

        Args:
            num_scenes: Number of scenes in the split.
            split: `"train"`, `"val"` or `"test"` (disjoint seed ranges).
            seed: Base seed added to the split offset.
            size: Image size, `S` or `(H, W)`.
            parts: Also return `oversegment` parts of the segments (SAM-CP's oracle patches).
            max_parts: Maximum parts per connected segment when `parts` is set.
            **scene_kwargs: Further keyword arguments of `generate_scene`.
        """
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> PanopticSample:
        raise NotImplementedError


class SyntheticSemanticDataset(_SceneDataset):
    """Semantic segmentation over `CLASS_NAMES`: one item per scene.

    Example:
        >>> ds = SyntheticSemanticDataset(num_scenes=3, size=32)
        >>> batch = collate_semantic([ds[0], ds[2]])
        >>> batch.semantic.shape, len(batch.class_names)
        (torch.Size([2, 32, 32]), 9)
    """

    class_names: tuple[str, ...] = CLASS_NAMES

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> SemanticSample:
        raise NotImplementedError


def collate_referring(samples: Sequence[ReferringSample]) -> ReferringBatch:
    """Stack images, target masks and boxes; keep instance masks and ids as lists."""
    raise NotImplementedError


def collate_panoptic(samples: Sequence[PanopticSample]) -> PanopticBatch:
    """Stack images, semantic and panoptic maps; keep per-scene instances/segments as lists."""
    raise NotImplementedError


def collate_semantic(samples: Sequence[SemanticSample]) -> SemanticBatch:
    """Stack images and semantic maps."""
    raise NotImplementedError
