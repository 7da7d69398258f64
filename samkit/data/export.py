"""Write synthetic scenes as a data set in a standard format, with a data file to load it.

`export_synthetic(out_dir, format)` writes the scenes of one synthetic split (the same scenes,
seed for seed, as the synthetic datasets with the same `num_scenes`, `split`, `seed` and `size`)
as real files, so that everything that reads real data (the readers, `load_data_file`, the
command line) can be tried and tested without downloading anything. Layouts under `out_dir`:

    coco_panoptic:    images/<split>/<seed>.png, annotations/panoptic_<split>.json,
                      annotations/panoptic_<split>/<seed>.png
    coco_instances:   images/<split>/<seed>.png, annotations/instances_<split>.json (RLE)
    semantic_folder:  images/<split>/<seed>.png, annotations/<split>/<seed>.png, classes.txt
                      (labels stored ADE-style: class + 1, 0 unused; `reduce_zero_label: true`)
    refcoco:          images/<split>/<seed>.png, annotations/instances_<split>.json,
                      annotations/grefs_<split>.json (gRefCOCO: list-valued ann_id, no_target)

plus the data file `<format>_<split>.yaml` (paths relative to `out_dir`). Category ids
interleave things and stuff (`CATEGORY_IDS`: circle 2, square 4, triangle 6, star 8; grass 1,
sky 3, water 5, sand 7, wall 9), so the readers' things-first mapping is exercised; it maps them
back to the synthetic `CLASS_NAMES` order. Images are PNG, so the pixels survive exactly (up to
the 8-bit quantisation of the float images).
"""

# axis legend
# i - instances of one scene, `I`
# h w - image pixels (`H`, `W`)

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from samkit._io import write_atomic
from samkit.data._files import PathLike
from samkit.data.datasets import (
    SyntheticPanopticDataset,
    SyntheticReferringDataset,
    SyntheticSemanticDataset,
)
from samkit.data.synthetic import CLASS_NAMES, NUM_THING_CLASSES, THING_CLASSES
from samkit.data.writers import (
    CocoPanopticWriter,
    _bbox,
    encode_rle,
    write_image,
    write_json,
    write_semantic_png,
)

__all__ = ["CATEGORY_IDS", "EXPORT_FORMATS", "export_synthetic"]

EXPORT_FORMATS: tuple[str, ...] = ("coco_panoptic", "coco_instances", "semantic_folder", "refcoco")
"""Formats `export_synthetic` writes."""

CATEGORY_IDS: tuple[int, ...] = (2, 4, 6, 8, 1, 3, 5, 7, 9)
"""Category id written for every class of `CLASS_NAMES` (things even, stuff odd)."""

_ID_STRIDE = 2654435761  # spreads segment ids over the three PNG channels


def _segment_png_id(k: int) -> int:
    """A COCO-style segment id for the k-th segment (distinct for k < 2^24 - 1, never 0)."""
    return (k * _ID_STRIDE) % (256**3 - 1) or 256**3 - 1


def _write_data_file(out: Path, fmt: str, split: str, spec: dict[str, Any]) -> Path:
    path = out / f"{fmt}_{split}.yaml"
    text = yaml.safe_dump({"format": fmt, **spec}, sort_keys=False)
    write_atomic(path, text.encode())
    return path


def _coco_things() -> list[dict[str, Any]]:
    return [
        {"id": CATEGORY_IDS[i], "name": name, "supercategory": "shape"}
        for i, name in enumerate(THING_CLASSES)
    ]


def _instance_annotations(
    masks: np.ndarray, classes: list[int], image_id: int, first_id: int
) -> list[dict[str, Any]]:
    out = []
    for k, (mask, cls) in enumerate(zip(masks, classes, strict=True)):
        out.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": CATEGORY_IDS[cls],
                "segmentation": encode_rle(mask),
                "area": int(mask.sum()),
                "bbox": _bbox(mask),
                "iscrowd": 0,
            }
        )
    return out


def export_synthetic(
    out_dir: PathLike,
    format: str,  # noqa: A002 - the data-file key
    *,
    num_scenes: int = 8,
    size: int = 64,
    seed: int = 0,
    split: str = "train",
) -> Path:
    """Write synthetic scenes in a standard format plus a data file; return the data file.

    Args:
        out_dir: Output folder (created; existing files of the same names are replaced).
        format: One of `EXPORT_FORMATS`.
        num_scenes: Number of scenes.
        size: Image side in pixels (square images).
        seed: Base seed, as for the synthetic datasets.
        split: Synthetic split (`"train"`, `"val"` or `"test"`); also the name used in the
            file names and, for `refcoco`, the refs' `split`.

    Returns:
        Path of the data file, ready for `load_data_file`.

    Raises:
        ValueError: If `format` is unknown or an argument is out of range.

    Examples:
        >>> path = export_synthetic("/tmp/shapes", "coco_panoptic", num_scenes=2)  # doctest: +SKIP
        >>> load_data_file(path).class_names[:4]  # doctest: +SKIP
        ('circle', 'square', 'triangle', 'star')
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format: expected one of {list(EXPORT_FORMATS)}, got {format!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"num_scenes": num_scenes, "split": split, "seed": seed, "size": size}
    writers = {
        "semantic_folder": _export_semantic_folder,
        "coco_panoptic": _export_coco_panoptic,
        "coco_instances": _export_coco_instances,
        "refcoco": _export_refcoco,
    }
    spec = writers[format](out, split, kwargs)
    return _write_data_file(out, format, split, spec)


def _export_semantic_folder(out: Path, split: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    ds = SyntheticSemanticDataset(**kwargs)
    for i in range(len(ds)):
        s = ds[i]
        write_image(out / "images" / split / f"{s.scene_seed}.png", s.image)
        write_semantic_png(out / "annotations" / split / f"{s.scene_seed}.png", s.semantic + 1)
    write_atomic(out / "classes.txt", ("\n".join(CLASS_NAMES) + "\n").encode())
    return {
        "image_dir": f"images/{split}",
        "annotation_dir": f"annotations/{split}",
        "classes": "classes.txt",
        "reduce_zero_label": True,
        "img_suffix": ".png",
    }


def _export_coco_panoptic(out: Path, split: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    ds = SyntheticPanopticDataset(**kwargs)
    writer = CocoPanopticWriter(
        out / "annotations",
        class_names=CLASS_NAMES,
        num_things=NUM_THING_CLASSES,
        category_ids=CATEGORY_IDS,
        json_name=f"panoptic_{split}.json",
        png_dir=f"panoptic_{split}",
    )
    for i in range(len(ds)):
        s = ds[i]
        name = f"{s.scene_seed}.png"
        write_image(out / "images" / split / name, s.image)
        new_id = {seg.id: _segment_png_id(seg.id) for seg in s.segments}
        ids = s.panoptic.numpy()
        remapped = np.zeros_like(ids)
        for old, new in new_id.items():
            remapped[ids == old] = new
        segs = [{"id": new_id[seg.id], "category_id": seg.category_id} for seg in s.segments]
        writer.add(s.scene_seed, remapped, segs, file_name=name, image_file_name=name)
    writer.write()
    return {
        "image_root": f"images/{split}",
        "panoptic_json": f"annotations/panoptic_{split}.json",
        "panoptic_root": f"annotations/panoptic_{split}",
    }


def _export_coco_instances(out: Path, split: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    ds = SyntheticPanopticDataset(**kwargs)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i in range(len(ds)):
        s = ds[i]
        name = f"{s.scene_seed}.png"
        write_image(out / "images" / split / name, s.image)
        H, W = s.semantic.shape
        images.append({"id": s.scene_seed, "file_name": name, "height": H, "width": W})
        classes = [int(c) for c in s.instance_classes]
        masks = s.instance_masks.numpy()
        anns += _instance_annotations(masks, classes, s.scene_seed, len(anns) + 1)
    write_json(
        out / "annotations" / f"instances_{split}.json",
        {"images": images, "annotations": anns, "categories": _coco_things()},
    )
    return {
        "image_root": f"images/{split}",
        "instances_json": f"annotations/instances_{split}.json",
    }


def _export_refcoco(out: Path, split: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    ds = SyntheticReferringDataset(**kwargs)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    for i in range(ds.num_scenes):
        scene = ds.scene(i)
        name = f"{scene.seed}.png"
        write_image(out / "images" / split / name, scene.image)
        H, W = scene.size
        images.append({"id": scene.seed, "file_name": name, "height": H, "width": W})
        classes = [int(c) for c in scene.instance_classes]
        first = len(anns) + 1
        anns += _instance_annotations(scene.instance_masks.numpy(), classes, scene.seed, first)
        for expr in scene.expressions:
            refs.append(
                {
                    "ref_id": len(refs),
                    "image_id": scene.seed,
                    "ann_id": [first + t for t in expr.target_ids] or [-1],
                    "category_id": [CATEGORY_IDS[classes[t]] for t in expr.target_ids],
                    "no_target": not expr.has_target,
                    "split": split,
                    "file_name": name,
                    "sentences": [
                        {
                            "sent": expr.text,
                            "raw": expr.text,
                            "tokens": expr.text.split(),
                            "sent_id": len(refs),
                        }
                    ],
                }
            )
    write_json(
        out / "annotations" / f"instances_{split}.json",
        {"images": images, "annotations": anns, "categories": _coco_things()},
    )
    write_json(out / "annotations" / f"grefs_{split}.json", refs)
    return {
        "image_root": f"images/{split}",
        "refs": f"annotations/grefs_{split}.json",
        "instances_json": f"annotations/instances_{split}.json",
        "split": split,
    }
