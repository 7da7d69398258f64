"""Sample and batch dataclasses of the synthetic datasets (re-exported by `datasets.py`)."""

# axis legend
# b - batch (`B` in docstrings)
# i - instances of one scene, `I`
# s - panoptic segments of one scene, `S`
# p - oversegmented parts of one scene, `P`
# h w - image pixels (`H`, `W`)

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from samkit.data.synthetic import Segment
from samkit.types import _TensorFieldsMixin


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
