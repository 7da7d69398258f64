"""Data: readers of the standard formats, writers, data files, and synthetic scenes.

* Readers (lazy torch datasets of the sample dataclasses): `CocoPanoptic`, `CocoInstances`,
  `SemanticFolder`, `RefCoco`; `load_data_file` builds one from a YAML / JSON data file.
* Writers: `CocoPanopticWriter`, `CocoResultsWriter`, `write_semantic_png`, `write_mask_png`,
  and `export_synthetic`, which writes synthetic scenes in each standard format.
* Synthetic scenes and datasets for tests, examples and learning checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from samkit._lazy import attach

if TYPE_CHECKING:
    from samkit.data._items import Segment
    from samkit.data.augment import AUGMENT_PRESETS, AugmentSpec, BatchAugment
    from samkit.data.coco import CocoInstances, CocoPanoptic, decode_coco_segmentation
    from samkit.data.config import FORMATS, load_data_file
    from samkit.data.datasets import (
        SPLIT_OFFSETS,
        PanopticBatch,
        PanopticSample,
        ReferringBatch,
        ReferringSample,
        SemanticBatch,
        SemanticSample,
        SyntheticPanopticDataset,
        SyntheticReferringDataset,
        SyntheticSemanticDataset,
        collate_panoptic,
        collate_referring,
        collate_semantic,
    )
    from samkit.data.export import EXPORT_FORMATS, export_synthetic
    from samkit.data.refer import RefCoco, read_plain_pickle
    from samkit.data.semantic import SemanticFolder, read_class_names
    from samkit.data.synthetic import (
        CLASS_NAMES,
        COLOR_NAMES,
        COLORS,
        EXPRESSION_KINDS,
        NUM_CLASSES,
        NUM_THING_CLASSES,
        PLURALS,
        STUFF_CLASSES,
        STUFF_STYLES,
        TEXTURES,
        THING_CLASSES,
        VOCABULARY,
        Oversegmentation,
        ReferringExpression,
        Scene,
        StuffStyle,
        generate_scene,
        oversegment,
    )
    from samkit.data.transforms import resize_sample
    from samkit.data.writers import (
        CocoPanopticWriter,
        CocoResultsWriter,
        encode_rle,
        write_image,
        write_mask_png,
        write_panoptic_png,
        write_semantic_png,
    )

__all__ = [
    "AUGMENT_PRESETS",
    "AugmentSpec",
    "BatchAugment",
    "CLASS_NAMES",
    "COLORS",
    "COLOR_NAMES",
    "CocoInstances",
    "CocoPanoptic",
    "CocoPanopticWriter",
    "CocoResultsWriter",
    "EXPORT_FORMATS",
    "EXPRESSION_KINDS",
    "FORMATS",
    "NUM_CLASSES",
    "NUM_THING_CLASSES",
    "Oversegmentation",
    "PLURALS",
    "PanopticBatch",
    "PanopticSample",
    "RefCoco",
    "ReferringBatch",
    "ReferringExpression",
    "ReferringSample",
    "SPLIT_OFFSETS",
    "STUFF_CLASSES",
    "STUFF_STYLES",
    "Scene",
    "Segment",
    "SemanticBatch",
    "SemanticFolder",
    "SemanticSample",
    "StuffStyle",
    "SyntheticPanopticDataset",
    "SyntheticReferringDataset",
    "SyntheticSemanticDataset",
    "TEXTURES",
    "THING_CLASSES",
    "VOCABULARY",
    "collate_panoptic",
    "collate_referring",
    "collate_semantic",
    "decode_coco_segmentation",
    "encode_rle",
    "export_synthetic",
    "generate_scene",
    "load_data_file",
    "oversegment",
    "read_class_names",
    "read_plain_pickle",
    "resize_sample",
    "write_image",
    "write_mask_png",
    "write_panoptic_png",
    "write_semantic_png",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = attach(
        __name__,
        {
            "_items": [
                "Segment",
            ],
            "augment": [
                "AUGMENT_PRESETS",
                "AugmentSpec",
                "BatchAugment",
            ],
            "coco": [
                "CocoInstances",
                "CocoPanoptic",
                "decode_coco_segmentation",
            ],
            "config": [
                "FORMATS",
                "load_data_file",
            ],
            "datasets": [
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
            ],
            "export": [
                "EXPORT_FORMATS",
                "export_synthetic",
            ],
            "refer": [
                "RefCoco",
                "read_plain_pickle",
            ],
            "semantic": [
                "SemanticFolder",
                "read_class_names",
            ],
            "synthetic": [
                "CLASS_NAMES",
                "COLOR_NAMES",
                "COLORS",
                "EXPRESSION_KINDS",
                "NUM_CLASSES",
                "NUM_THING_CLASSES",
                "PLURALS",
                "STUFF_CLASSES",
                "STUFF_STYLES",
                "TEXTURES",
                "THING_CLASSES",
                "VOCABULARY",
                "Oversegmentation",
                "ReferringExpression",
                "Scene",
                "StuffStyle",
                "generate_scene",
                "oversegment",
            ],
            "transforms": [
                "resize_sample",
            ],
            "writers": [
                "CocoPanopticWriter",
                "CocoResultsWriter",
                "encode_rle",
                "write_image",
                "write_mask_png",
                "write_panoptic_png",
                "write_semantic_png",
            ],
        },
    )
