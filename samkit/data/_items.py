"""Sample and batch dataclasses shared by every dataset (synthetic scenes and file readers).

This module is the bottom of `samkit.data`: it imports nothing else from the package, so the
scene generator (`synthetic.py`), the datasets (`datasets.py`) and the file readers can all
import it without a cycle. `Segment` lives here because it is part of a sample; it is
re-exported by `samkit.data.synthetic` and `samkit.data`.
"""

# axis legend
# b - batch (`B` in docstrings)
# i - instances of one scene, `I`
# s - panoptic segments of one scene, `S`
# p - oversegmented parts of one scene, `P`
# h w - image pixels (`H`, `W`)

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from samkit.types import _TensorFieldsMixin


@dataclass
class Segment:
    """One segment of a panoptic map (panopticapi's `segments_info` entry).

    Attributes:
        id: Segment id as stored in the panoptic map (`>= 1`; 0 is void).
        category_id: Contiguous class index (into `CLASS_NAMES` for synthetic scenes, into the
            reader's `class_names` for files).
        is_thing: True for an instance of a thing class, False for a stuff region.
        area: Number of pixels of the segment.
        instance: Index of the instance in the instance masks, or -1 for stuff.
        iscrowd: True for a crowd region (COCO `iscrowd`): never matched, never a false
            negative in `PanopticQuality`.
    """

    id: int
    category_id: int
    is_thing: bool
    area: int
    instance: int = -1
    iscrowd: bool = False


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
        scene_seed: Seed of the scene (-1 for samples read from files).
        image_id: Id of the image (the data set's image id; the scene seed for synthetic
            scenes, -1 when unknown). Expressions about the same image share it.
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
    image_id: int | str = -1


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
        image_ids: `B` image ids.
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
    image_ids: list[int | str] = field(default_factory=list)


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
        scene_seed: Seed of the scene (-1 for samples read from files).
        instance_iscrowd: `(I,)` bool crowd flags of the instances (COCO `iscrowd`), or
            `None` when the data set has no crowd annotations (synthetic scenes).
        image_id: Id of the image (the data set's image id; the scene seed for synthetic
            scenes, -1 when unknown).
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
    instance_iscrowd: Tensor | None = None
    image_id: int | str = -1


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
        instance_iscrowd: `B` tensors `(I_b,)` bool, or `None` unless every sample has them.
        image_ids: `B` image ids.
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
    instance_iscrowd: list[Tensor] | None = None
    image_ids: list[int | str] = field(default_factory=list)


@dataclass
class SemanticSample(_TensorFieldsMixin):
    """One scene with its semantic map.

    Attributes:
        image: `(3, H, W)` float RGB in `[0, 1]`.
        semantic: `(H, W)` long class ids (into `CLASS_NAMES` for synthetic scenes, into the
            reader's `class_names` for files); 255 marks unlabelled pixels.
        scene_seed: Seed of the scene (-1 for samples read from files).
        image_id: Id of the image (the file stem for folders, the scene seed for synthetic
            scenes, -1 when unknown).
    """

    image: Tensor
    semantic: Tensor
    scene_seed: int
    image_id: int | str = -1


@dataclass
class SemanticBatch(_TensorFieldsMixin):
    """A collated batch of `SemanticSample`s.

    Attributes:
        images: `(B, 3, H, W)` float.
        semantic: `(B, H, W)` long.
        class_names: The class names the ids index.
        scene_seeds: `B` scene seeds.
        image_ids: `B` image ids.
    """

    images: Tensor
    semantic: Tensor
    class_names: tuple[str, ...]
    scene_seeds: list[int]
    image_ids: list[int | str] = field(default_factory=list)
