"""COCO panoptic and COCO instances readers, as lazy torch datasets of `PanopticSample`s.

Layouts (the official ones; the folder names are free, they are arguments):

    coco/
      train2017/000000000009.jpg ...                 image_root
      annotations/panoptic_train2017.json            panoptic_json
      annotations/panoptic_train2017/000000000009.png   panoptic_root
      annotations/instances_train2017.json           instances_json

Class mapping: the contiguous index of a category is its position in `class_names`, which lists
the thing categories sorted by category id, then the stuff categories sorted by category id
(`category_ids[i]` is the data set's id of class `i`, `category_to_index` the inverse). So the
first `num_things` indices are things, as the samkit systems expect.

Both readers parse the JSON once at construction (checking that every listed file exists and
every category id is known) and decode images and masks only in `__getitem__`.
"""

# axis legend
# i - instances of one image, `I`
# s - panoptic segments of one image, `S`
# h w - image pixels (`H`, `W`)

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from samkit.data._files import (
    PackedRecords,
    PathLike,
    Vocabulary,
    check_image_size,
    check_index,
    check_size,
    coco_categories,
    coco_images,
    collect,
    expect,
    pycocotools_mask,
    read_image,
    read_json,
    read_panoptic_png,
)
from samkit.data._items import PanopticSample, Segment
from samkit.data.transforms import IGNORE_LABEL, resize_sample

__all__ = ["CocoInstances", "CocoPanoptic", "decode_coco_segmentation"]


def _file(root: Path, name: str, what: str, listed_in: PathLike) -> str:
    path = root / name
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: {what} not found (listed in {listed_in})")
    return str(path)


def _panoptic_sample(
    image: Tensor,
    panoptic: np.ndarray,
    entries: list[tuple[int, bool, bool]],
    *,
    image_id: int | str,
) -> PanopticSample:
    """Build a sample from a panoptic map holding ids `1..S` and one entry per id.

    `entries[k] = (class index, is_thing, iscrowd)` describes id `k + 1`; thing segments become
    the instances, in order.
    """
    pan = torch.from_numpy(panoptic)
    S = len(entries)
    segment_masks = pan[None] == torch.arange(1, S + 1)[:, None, None]
    classes = torch.tensor([c for c, _, _ in entries], dtype=torch.long)
    lut = torch.cat([torch.tensor([IGNORE_LABEL]), classes])
    semantic = lut[pan]
    areas = segment_masks.flatten(1).sum(1).tolist()
    thing_idx = [k for k, (_, thing, _) in enumerate(entries) if thing]
    instance_of = {k: i for i, k in enumerate(thing_idx)}
    segments = [
        Segment(
            id=k + 1,
            category_id=c,
            is_thing=thing,
            area=int(areas[k]),
            instance=instance_of.get(k, -1),
            iscrowd=crowd,
        )
        for k, (c, thing, crowd) in enumerate(entries)
    ]
    return PanopticSample(
        image=image,
        instance_masks=segment_masks[thing_idx],
        instance_classes=classes[thing_idx],
        semantic=semantic,
        panoptic=pan,
        segments=segments,
        segment_masks=segment_masks,
        segment_classes=classes,
        part_masks=None,
        part_parents=None,
        scene_seed=-1,
        instance_iscrowd=torch.tensor([entries[k][2] for k in thing_idx], dtype=torch.bool),
        image_id=image_id,
    )


class CocoPanoptic(Dataset, Vocabulary):  # type: ignore[type-arg]
    """COCO panoptic segmentation (`panoptic_*.json` + PNGs) as `PanopticSample`s.

    Each PNG stores segment ids as `R + 256 G + 256^2 B` (0 = void); each id is described by an
    entry of the image's `segments_info` (`id`, `category_id`, `iscrowd`), and `isthing` comes
    from the categories. A sample holds:

    * `panoptic`: ids renumbered `1..S` in `segments_info` order (0 = void), so that maps stay
      small integers; `segments[k]` describes id `k + 1`, `category_id` a contiguous index;
    * `semantic`: the contiguous class of every pixel, 255 on void;
    * `instance_masks`, `instance_classes`, `instance_iscrowd`: the thing segments, in order
      (crowd regions included, flagged; `PanopticQuality` and `MaskAP(gt_iscrowd=)` ignore them);
    * `image_id`: the COCO image id. `part_masks` is `None`.

    Examples:
        >>> ds = CocoPanoptic("coco/val2017", "coco/annotations/panoptic_val2017.json",
        ...                   "coco/annotations/panoptic_val2017", size=512)  # doctest: +SKIP
        >>> ds.class_names[: ds.num_things][:2], ds.category_ids[:2]  # doctest: +SKIP
        (('person', 'bicycle'), (1, 2))
    """

    def __init__(
        self,
        image_root: PathLike,
        panoptic_json: PathLike,
        panoptic_root: PathLike,
        *,
        size: int | None = None,
        strict: bool = True,
    ) -> None:
        """Parse the JSON and check the files (images and PNGs are decoded lazily).

        Args:
            image_root: Folder of the images (`images[*].file_name` is relative to it).
            panoptic_json: The panoptic JSON (`images`, `annotations`, `categories`).
            panoptic_root: Folder of the PNGs (`annotations[*].file_name` is relative to it).
            size: `None` keeps the native size; `S` resizes the longest side to `S` and pads
                to `S x S` (see `samkit.data.transforms`).
            strict: Raise on the first bad annotation (default). With False, annotations
                whose files are missing or whose segments are malformed are skipped, and the
                count is logged (messages in `self.skipped`). Problems only visible once the
                PNG is decoded (an id with no `segments_info` entry, a size mismatch) raise in
                `__getitem__` either way.

        Raises:
            FileNotFoundError: If the JSON, an image or a PNG is missing (strict).
            ValueError: If the JSON is malformed or names an unknown category (strict).
        """
        self.image_root = Path(image_root)
        self.panoptic_json = Path(panoptic_json)
        self.panoptic_root = Path(panoptic_root)
        self.size = check_size(size)
        self.strict = strict
        data = read_json(self.panoptic_json, "COCO panoptic JSON")
        things, stuff = coco_categories(data, self.panoptic_json, panoptic=True)
        self._set_vocabulary(things, stuff)
        self._is_thing = {cid: True for cid, _ in things} | {cid: False for cid, _ in stuff}
        images = coco_images(data, self.panoptic_json)
        anns = data.get("annotations")
        expect(isinstance(anns, list), self.panoptic_json, "expected an 'annotations' list")
        records, self.skipped = collect(
            anns, lambda a: self._record(a, images), strict=strict, source=self.panoptic_json
        )
        self._records = PackedRecords(records)

    def _record(self, ann: Any, images: dict[int, dict[str, Any]]) -> list[Any]:
        src = self.panoptic_json
        expect(
            isinstance(ann, dict)
            and "image_id" in ann
            and isinstance(ann.get("file_name"), str)
            and isinstance(ann.get("segments_info"), list),
            src,
            f"expected annotations with 'image_id', 'file_name' and 'segments_info', got "
            f"{str(ann)[:200]}",
        )
        image_id = ann["image_id"]
        expect(
            image_id in images, src, f"annotation of image_id {image_id!r} has no 'images' entry"
        )
        info = images[image_id]
        segs, seen = [], set()
        for seg in ann["segments_info"]:
            expect(
                isinstance(seg, dict) and isinstance(seg.get("id"), int) and "category_id" in seg,
                src,
                f"image {image_id}: expected segments with an int 'id' and a 'category_id', "
                f"got {seg!r}",
            )
            sid, cid = seg["id"], seg["category_id"]
            expect(0 < sid < 256**3, src, f"image {image_id}: segment id {sid} not in [1, 256^3)")
            expect(sid not in seen, src, f"image {image_id}: segment id {sid} appears twice")
            seen.add(sid)
            expect(
                cid in self.category_to_index,
                src,
                f"image {image_id}: segment {sid} has category_id {cid}, which is not in "
                f"'categories' (known ids: {sorted(self.category_to_index)[:20]}...)",
            )
            index = self.category_to_index[cid]
            segs.append([sid, index, self._is_thing[cid], bool(seg.get("iscrowd", 0))])
        image = _file(self.image_root, info["file_name"], "image", src)
        png = _file(self.panoptic_root, ann["file_name"], "panoptic PNG", src)
        hw = [info.get("height"), info.get("width")]
        return [image, png, image_id, hw, segs]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> PanopticSample:
        image_path, png, image_id, hw, segs = self._records[check_index(index, len(self))]
        image = read_image(image_path)
        if None not in hw:
            check_image_size(image, hw, image_path, f"its 'images' entry in {self.panoptic_json}")
        ids = read_panoptic_png(png)
        check_image_size(image, ids.shape, image_path, f"the panoptic PNG {png}")
        known = np.array(sorted(s[0] for s in segs), dtype=np.int64)
        present = np.unique(ids)
        unknown = present[(present != 0) & ~np.isin(present, known)]
        if unknown.size:
            v = int(unknown[0])
            raise ValueError(
                f"{png}: pixel id {v} (RGB {v % 256}, {v // 256 % 256}, {v // 65536}) has no "
                f"segments_info entry in {self.panoptic_json} (image {image_id}; "
                f"{unknown.size} unknown ids in all)"
            )
        # renumber: the k-th segments_info entry becomes id k + 1
        lut_keys = np.array([s[0] for s in segs], dtype=np.int64)
        order = np.argsort(lut_keys)
        pos = np.searchsorted(lut_keys[order], ids)
        pos = np.clip(pos, 0, max(len(segs) - 1, 0))
        renumbered = np.zeros_like(ids)
        if segs:
            hit = (ids != 0) & (lut_keys[order][pos] == ids)
            renumbered[hit] = order[pos[hit]] + 1
        entries = [(int(c), bool(t), bool(k)) for _, c, t, k in segs]
        sample = _panoptic_sample(image, renumbered, entries, image_id=image_id)
        return sample if self.size is None else resize_sample(sample, self.size)


def decode_coco_segmentation(
    segmentation: Any, height: int, width: int, *, source: str
) -> np.ndarray:
    """Decode a COCO `segmentation` (polygons, uncompressed or compressed RLE) to an `(H, W)` mask.

    Args:
        segmentation: A list of polygons `[[x0, y0, x1, y1, ...], ...]`, an uncompressed RLE
            `{"size": [H, W], "counts": [int, ...]}` or a compressed RLE
            `{"size": [H, W], "counts": str}`.
        height: Image height `H`.
        width: Image width `W`.
        source: What to name in errors (file and annotation).

    Returns:
        `(H, W)` bool mask. Polygons with fewer than 3 points enclose no pixels and add none.

    Raises:
        ValueError: If the segmentation is malformed or its RLE size is not `(H, W)`.
    """
    mask_utils = pycocotools_mask()
    try:
        if isinstance(segmentation, list):
            for p in segmentation:
                if not isinstance(p, list) or len(p) % 2:
                    raise ValueError("a polygon must be a list of x, y pairs")
            # polygons of fewer than 3 points enclose no area (COCO has a few); they are
            # dropped here, also because pycocotools reads a 4-number first polygon as a box
            polys = [p for p in segmentation if len(p) >= 6]
            if not polys:
                return np.zeros((height, width), dtype=bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            rle_size = [int(v) for v in segmentation["size"]]
            if rle_size != [height, width]:
                raise ValueError(
                    f"RLE size {rle_size} differs from the image's [height, width] "
                    f"[{height}, {width}]"
                )
            counts = segmentation["counts"]
            if isinstance(counts, list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            elif isinstance(counts, str | bytes):
                rle = {
                    "size": rle_size,
                    "counts": counts.encode() if isinstance(counts, str) else counts,
                }
            else:
                raise ValueError(
                    f"RLE counts must be a list or a string, got {type(counts).__name__}"
                )
        else:
            raise ValueError(
                "expected polygons (a list) or an RLE (a dict with 'size' and 'counts'), got "
                f"{type(segmentation).__name__}"
            )
        mask = mask_utils.decode(rle)
    except ValueError as err:
        raise ValueError(f"{source}: bad segmentation: {err}") from err
    except Exception as err:  # pycocotools raises TypeError / its own errors on garbage
        raise ValueError(f"{source}: bad segmentation: {type(err).__name__}: {err}") from err
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return mask.astype(bool)


class CocoInstances(Dataset, Vocabulary):  # type: ignore[type-arg]
    """COCO instance segmentation (`instances_*.json`) as `PanopticSample`s.

    Segmentations may be polygons, uncompressed RLE or compressed RLE (decoded by
    pycocotools). Every category is a thing (`num_things == len(class_names)`). A sample holds:

    * `instance_masks` `(I, H, W)`, `instance_classes` (contiguous), `instance_iscrowd`: one
      per annotation of the image, in file order, crowd annotations included and flagged (pass
      `gt_iscrowd=` to `MaskAP`); masks may overlap;
    * `panoptic` / `segments`: the instances painted into one map (crowd first, then the others
      in file order, later ones on top), id `k + 1` for instance `k`, 0 where no instance is;
    * `semantic`: the class of the panoptic segment of every pixel, 255 where no instance is.

    Images without annotations are kept (their samples have `I = 0`).
    """

    def __init__(
        self,
        image_root: PathLike,
        instances_json: PathLike,
        *,
        size: int | None = None,
        strict: bool = True,
    ) -> None:
        """Parse the JSON and check the files (images and masks are decoded lazily).

        Args:
            image_root: Folder of the images (`images[*].file_name` is relative to it).
            instances_json: The instances JSON (`images`, `annotations`, `categories`).
            size: `None` keeps the native size; `S` resizes the longest side to `S` and pads
                to `S x S` (see `samkit.data.transforms`).
            strict: Raise on the first bad image or annotation (default). With False, images
                whose file is missing or that have a malformed annotation (unknown category,
                no segmentation) are skipped and the count is logged (messages in
                `self.skipped`); masks that fail to decode raise in `__getitem__` either way.

        Raises:
            FileNotFoundError: If the JSON or an image is missing (strict).
            ValueError: If the JSON is malformed or names an unknown category (strict).
        """
        self.image_root = Path(image_root)
        self.instances_json = Path(instances_json)
        self.size = check_size(size)
        self.strict = strict
        data = read_json(self.instances_json, "COCO instances JSON")
        things, _ = coco_categories(data, self.instances_json, panoptic=False)
        self._set_vocabulary(things, [])
        images = coco_images(data, self.instances_json)
        anns = data.get("annotations")
        expect(isinstance(anns, list), self.instances_json, "expected an 'annotations' list")
        by_image: dict[Any, list[Any]] = defaultdict(list)
        orphans = []
        for ann in anns:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            if image_id in images:
                by_image[image_id].append(ann)
            else:
                orphans.append(ann)
        if orphans and strict:
            raise ValueError(
                f"{self.instances_json}: {len(orphans)} annotations name an image_id with no "
                f"'images' entry (first: {str(orphans[0])[:200]})"
            )
        records, self.skipped = collect(
            list(images.values()),
            lambda im: self._record(im, by_image.get(im["id"], [])),
            strict=strict,
            source=self.instances_json,
        )
        if orphans:
            self.skipped.append(f"{len(orphans)} annotations of unknown images")
        self._records = PackedRecords(records)

    def _record(self, info: dict[str, Any], anns: list[Any]) -> list[Any]:
        src = self.instances_json
        image_id = info["id"]
        out = []
        for ann in anns:
            cid = ann.get("category_id")
            expect(
                cid in self.category_to_index,
                src,
                f"annotation {ann.get('id')} (image {image_id}) has category_id {cid!r}, which "
                f"is not in 'categories'",
            )
            expect(
                "segmentation" in ann,
                src,
                f"annotation {ann.get('id')} (image {image_id}) has no 'segmentation'",
            )
            crowd = bool(ann.get("iscrowd", 0))
            out.append([ann.get("id"), self.category_to_index[cid], crowd, ann["segmentation"]])
        image = _file(self.image_root, info["file_name"], "image", src)
        return [image, image_id, [info.get("height"), info.get("width")], out]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> PanopticSample:
        image_path, image_id, hw, anns = self._records[check_index(index, len(self))]
        image = read_image(image_path)
        if None not in hw:
            check_image_size(image, hw, image_path, f"its 'images' entry in {self.instances_json}")
        H, W = int(image.shape[-2]), int(image.shape[-1])
        masks = np.zeros((len(anns), H, W), dtype=bool)
        for i, (ann_id, _, _, seg) in enumerate(anns):
            where = f"{self.instances_json} (annotation {ann_id}, image {image_id})"
            masks[i] = decode_coco_segmentation(seg, H, W, source=where)
        panoptic = np.zeros((H, W), dtype=np.int64)
        order = [i for i, a in enumerate(anns) if a[2]] + [
            i for i, a in enumerate(anns) if not a[2]
        ]
        for i in order:
            panoptic[masks[i]] = i + 1
        entries = [(int(c), True, bool(k)) for _, c, k, _ in anns]
        sample = _panoptic_sample(image, panoptic, entries, image_id=image_id)
        sample.instance_masks = torch.from_numpy(masks)  # full masks, overlaps kept
        return sample if self.size is None else resize_sample(sample, self.size)
