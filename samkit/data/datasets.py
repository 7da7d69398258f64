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
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from samkit.data._items import (
    PanopticBatch,
    PanopticSample,
    ReferringBatch,
    ReferringSample,
    SemanticBatch,
    SemanticSample,
)
from samkit.data.synthetic import (
    CLASS_NAMES,
    NUM_THING_CLASSES,
    Scene,
    generate_scene,
    oversegment,
)

__all__ = [
    "PanopticBatch",
    "PanopticSample",
    "ReferringBatch",
    "ReferringSample",
    "SPLIT_OFFSETS",
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
_SPLIT_SPAN = 10_000_000


class _SceneDataset(Dataset):  # type: ignore[type-arg]
    """Common part: split/seed bookkeeping, a one-scene cache and the vocabulary.

    Like the file readers, every synthetic dataset exposes `class_names` (`CLASS_NAMES`,
    things first), `num_things`, `category_ids` and `category_to_index` (the identity).
    """

    class_names: tuple[str, ...] = CLASS_NAMES
    num_things: int = NUM_THING_CLASSES
    category_ids: tuple[int, ...] = tuple(range(len(CLASS_NAMES)))
    category_to_index: dict[int, int] = {i: i for i in range(len(CLASS_NAMES))}  # noqa: RUF012

    def __init__(
        self,
        *,
        num_scenes: int,
        split: str = "train",
        seed: int = 0,
        size: int | tuple[int, int] = 128,
        **scene_kwargs: Any,
    ) -> None:
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split: expected one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
        if not 0 <= num_scenes <= _SPLIT_SPAN:
            raise ValueError(f"num_scenes: expected in [0, {_SPLIT_SPAN}], got {num_scenes}")
        if seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed}")
        self.num_scenes = num_scenes
        self.split = split
        self.seed = seed
        self.size = size
        self.scene_kwargs = dict(scene_kwargs)
        self._cache: tuple[int, Scene] | None = None

    def scene_seed(self, scene_index: int) -> int:
        """Seed of scene `scene_index` of this split."""
        if not 0 <= scene_index < self.num_scenes:
            raise IndexError(f"scene index {scene_index} out of range [0, {self.num_scenes})")
        return self.seed + SPLIT_OFFSETS[self.split] + scene_index

    def scene(self, scene_index: int) -> Scene:
        """Generate (or fetch from the one-scene cache) scene `scene_index`."""
        if self._cache is not None and self._cache[0] == scene_index:
            return self._cache[1]
        scene = generate_scene(self.scene_seed(scene_index), size=self.size, **self.scene_kwargs)
        self._cache = (scene_index, scene)
        return scene

    def _index(self, index: int) -> int:
        n = len(self)  # type: ignore[arg-type]
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} items")
        return index


class SyntheticReferringDataset(_SceneDataset):
    """Referring segmentation: one item per (scene, expression).

    Item `i` is expression `i % expressions_per_scene` of scene `i // expressions_per_scene`;
    a fraction `no_target_fraction` of the expressions of every scene have no referent.

    Examples:
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
        if expressions_per_scene < 1:
            raise ValueError(f"expressions_per_scene: expected >= 1, got {expressions_per_scene}")
        super().__init__(
            num_scenes=num_scenes,
            split=split,
            seed=seed,
            size=size,
            num_expressions=expressions_per_scene,
            no_target_fraction=no_target_fraction,
            **scene_kwargs,
        )
        self.expressions_per_scene = expressions_per_scene

    def __len__(self) -> int:
        return self.num_scenes * self.expressions_per_scene

    def __getitem__(self, index: int) -> ReferringSample:
        scene_index, expr_index = divmod(self._index(index), self.expressions_per_scene)
        scene = self.scene(scene_index)
        expr = scene.expressions[expr_index]
        from torchvision.ops import masks_to_boxes  # lazy: torchvision.ops loads torch._dynamo

        box = (
            masks_to_boxes(expr.target_mask[None])[0]
            if expr.has_target
            else torch.zeros(4, dtype=torch.float32)
        )
        return ReferringSample(
            image=scene.image,
            text=expr.text,
            target_mask=expr.target_mask,
            has_target=expr.has_target,
            target_box=box,
            target_ids=list(expr.target_ids),
            kind=expr.kind,
            instance_masks=scene.instance_masks,
            instance_classes=scene.instance_classes,
            scene_seed=scene.seed,
            image_id=scene.seed,
        )


class SyntheticPanopticDataset(_SceneDataset):
    """Panoptic (and instance) segmentation: one item per scene.

    Examples:
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
        super().__init__(num_scenes=num_scenes, split=split, seed=seed, size=size, **scene_kwargs)
        self.parts = parts
        self.max_parts = max_parts

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> PanopticSample:
        scene = self.scene(self._index(index))
        segment_masks = scene.segment_masks
        part_masks = part_parents = None
        if self.parts:
            # a fixed, index-dependent split, different from the scene's own random stream
            parts = oversegment(segment_masks, scene.seed + 7919, max_parts=self.max_parts)
            part_masks, part_parents = parts.masks, parts.parents
        return PanopticSample(
            image=scene.image,
            instance_masks=scene.instance_masks,
            instance_classes=scene.instance_classes,
            semantic=scene.semantic,
            panoptic=scene.panoptic,
            segments=list(scene.segments),
            segment_masks=segment_masks,
            segment_classes=scene.segment_classes,
            part_masks=part_masks,
            part_parents=part_parents,
            scene_seed=scene.seed,
            image_id=scene.seed,
        )


class SyntheticSemanticDataset(_SceneDataset):
    """Semantic segmentation over `CLASS_NAMES`: one item per scene.

    Examples:
        >>> ds = SyntheticSemanticDataset(num_scenes=3, size=32)
        >>> batch = collate_semantic([ds[0], ds[2]])
        >>> batch.semantic.shape, len(batch.class_names)
        (torch.Size([2, 32, 32]), 9)
    """

    def __init__(
        self,
        *,
        num_scenes: int = 1000,
        split: str = "train",
        seed: int = 0,
        size: int | tuple[int, int] = 128,
        **scene_kwargs: Any,
    ) -> None:
        """Build the dataset (scenes are generated lazily; no expressions are drawn).

        Args:
            num_scenes: Number of scenes in the split.
            split: `"train"`, `"val"` or `"test"` (disjoint seed ranges).
            seed: Base seed added to the split offset.
            size: Image size, `S` or `(H, W)`.
            **scene_kwargs: Further keyword arguments of `generate_scene`.
        """
        scene_kwargs.setdefault("num_expressions", 0)
        super().__init__(num_scenes=num_scenes, split=split, seed=seed, size=size, **scene_kwargs)

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> SemanticSample:
        scene = self.scene(self._index(index))
        return SemanticSample(
            image=scene.image, semantic=scene.semantic, scene_seed=scene.seed, image_id=scene.seed
        )


def _nonempty(samples: Sequence[object], name: str) -> None:
    if len(samples) == 0:
        raise ValueError(f"{name}: expected at least one sample, got an empty batch")


def _stack_images(images: Sequence[Tensor], name: str) -> Tensor:
    """Stack `(3, H, W)` images, with a useful error when their sizes differ."""
    sizes = sorted({tuple(int(v) for v in im.shape[-2:]) for im in images})
    if len(sizes) > 1:
        raise ValueError(
            f"{name}: cannot batch images of different sizes {sizes[:4]}; set `size` in the "
            "data file (or the reader's size=S, which resizes and pads every image to S x S) "
            "or use batch size 1"
        )
    return torch.stack(list(images))


def collate_referring(samples: Sequence[ReferringSample]) -> ReferringBatch:
    """Stack images, target masks and boxes; keep instance masks and ids as lists.

    Args:
        samples: `B` samples of equally sized images.

    Returns:
        The `ReferringBatch`.

    Raises:
        ValueError: If `samples` is empty or the images differ in size.
    """
    _nonempty(samples, "collate_referring")
    return ReferringBatch(
        images=_stack_images([s.image for s in samples], "collate_referring"),
        texts=[s.text for s in samples],
        target_masks=torch.stack([s.target_mask for s in samples]),
        has_target=torch.tensor([s.has_target for s in samples], dtype=torch.bool),
        target_boxes=torch.stack([s.target_box for s in samples]),
        target_ids=[list(s.target_ids) for s in samples],
        kinds=[s.kind for s in samples],
        instance_masks=[s.instance_masks for s in samples],
        instance_classes=[s.instance_classes for s in samples],
        scene_seeds=[s.scene_seed for s in samples],
        image_ids=[s.image_id for s in samples],
    )


def collate_panoptic(samples: Sequence[PanopticSample]) -> PanopticBatch:
    """Stack images, semantic and panoptic maps; keep per-scene instances/segments as lists.

    Args:
        samples: `B` samples of equally sized images.

    Returns:
        The `PanopticBatch` (`part_masks`/`part_parents` are `None` unless every sample has
        parts, `instance_iscrowd` is `None` unless every sample has crowd flags).

    Raises:
        ValueError: If `samples` is empty or the images differ in size.
    """
    _nonempty(samples, "collate_panoptic")
    with_parts = all(s.part_masks is not None for s in samples)
    crowd = [s.instance_iscrowd for s in samples]
    return PanopticBatch(
        images=_stack_images([s.image for s in samples], "collate_panoptic"),
        semantic=torch.stack([s.semantic for s in samples]),
        panoptic=torch.stack([s.panoptic for s in samples]),
        instance_masks=[s.instance_masks for s in samples],
        instance_classes=[s.instance_classes for s in samples],
        segments=[list(s.segments) for s in samples],
        segment_masks=[s.segment_masks for s in samples],
        segment_classes=[s.segment_classes for s in samples],
        part_masks=[s.part_masks for s in samples] if with_parts else None,  # type: ignore[misc]
        part_parents=[s.part_parents for s in samples] if with_parts else None,  # type: ignore[misc]
        scene_seeds=[s.scene_seed for s in samples],
        instance_iscrowd=None if any(c is None for c in crowd) else crowd,  # type: ignore[arg-type]
        image_ids=[s.image_id for s in samples],
    )


def collate_semantic(
    samples: Sequence[SemanticSample], class_names: Sequence[str] = CLASS_NAMES
) -> SemanticBatch:
    """Stack images and semantic maps.

    With a reader, pass its vocabulary, e.g.
    `DataLoader(ds, collate_fn=functools.partial(collate_semantic, class_names=ds.class_names))`.

    Args:
        samples: `B` samples of equally sized images.
        class_names: The class names the semantic ids index (default: the synthetic
            `CLASS_NAMES`).

    Returns:
        The `SemanticBatch`.

    Raises:
        ValueError: If `samples` is empty or the images differ in size.
    """
    _nonempty(samples, "collate_semantic")
    return SemanticBatch(
        images=_stack_images([s.image for s in samples], "collate_semantic"),
        semantic=torch.stack([s.semantic for s in samples]),
        class_names=tuple(class_names),
        scene_seeds=[s.scene_seed for s in samples],
        image_ids=[s.image_id for s in samples],
    )
