"""Referring segmentation (RefCOCO family, gRefCOCO) as `ReferringSample`s, one per expression.

Layout (the REFER / gRefCOCO releases; file names are arguments):

    refer/data/
      images/train2014/COCO_train2014_000000000009.jpg ...   image_root
      refcoco/refs(unc).p         REFER refs (a Python pickle)   refs
      grefcoco/grefs(unc).json    gRefCOCO refs (JSON)            refs
      refcoco/instances.json      COCO instances of the images    instances_json

A ref is `{"ref_id", "image_id", "ann_id", "split", "sentences": [{"sent": ...}, ...]}`; gRefCOCO
refs have a list-valued `ann_id` (several targets, `[-1]` for none) and `no_target`. Every
sentence of every ref whose `split` matches becomes one sample: its target mask is the union of
the referenced annotations' masks (decoded from the instances JSON with pycocotools), and
`has_target` is False for no-target refs. `instance_masks` holds every annotation of the image
(in file order) and `target_ids` indexes it; `kind` is `"single-target"`, `"multi-target"` or
`"no-target"`; `image_id` is the COCO image id, shared by all expressions of an image.

The REFER `.p` files are pickles. They are read with a restricted unpickler that builds plain
containers and scalars only (dict, list, tuple, str, bytes, int, float, bool, None) and refuses
every class or function reference, so a crafted file raises an error and runs nothing.
"""

# axis legend
# i - instances (annotations) of one image, `I`
# h w - image pixels (`H`, `W`)

from __future__ import annotations

import pickle
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
    read_image,
    read_json,
)
from samkit.data._items import ReferringSample
from samkit.data.coco import decode_coco_segmentation
from samkit.data.transforms import resize_sample

__all__ = ["RefCoco", "read_plain_pickle"]


class _Refused(pickle.UnpicklingError):
    """A pickle asked for something beyond plain data."""


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that never imports anything: only plain containers and scalars load."""

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(
            f"it references {module}.{name}; only plain containers and scalars are allowed"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it uses persistent ids; only plain data is allowed")


def read_plain_pickle(path: PathLike) -> Any:
    """Read a pickle that holds only plain data (dicts, lists, tuples, strings, numbers).

    Any reference to a class or function (which is how a pickle runs code) is refused before
    anything is called. Python 2 byte strings are decoded as Latin-1.

    Args:
        path: The pickle file.

    Returns:
        The unpickled object.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a pickle or holds anything but plain data; the message
            names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: pickle not found")
    try:
        with p.open("rb") as f:
            return _PlainUnpickler(f, encoding="latin1").load()
    except _Refused as err:
        raise ValueError(
            f"{p}: refused to unpickle: {err}. samkit reads pickles of plain data only, because "
            "unpickling anything else can run arbitrary code"
        ) from err
    except Exception as err:  # truncated or not a pickle: EOFError, ValueError, ...
        raise ValueError(f"{p}: not a readable pickle: {type(err).__name__}: {err}") from err


def _read_refs(path: Path) -> list[Any]:
    if path.suffix.lower() == ".json":
        refs = read_json(path, "gRefCOCO refs JSON")
    else:
        refs = read_plain_pickle(path)
    expect(isinstance(refs, list), path, f"expected a list of refs, got {type(refs).__name__}")
    return refs


def _target_ann_ids(ref: dict[str, Any], path: Path) -> list[int]:
    """The referenced annotation ids of a ref; [] for a no-target ref."""
    raw: Any = ref.get("ann_id")
    ids: list[Any] = raw if isinstance(raw, list) else [raw]
    expect(
        all(isinstance(i, int) and not isinstance(i, bool) for i in ids),
        path,
        f"ref {ref.get('ref_id')}: expected an int or a list of ints as ann_id, got {raw!r}",
    )
    targets: list[int] = [i for i in ids if i != -1]
    if ref.get("no_target", False):
        expect(
            not targets,
            path,
            f"ref {ref.get('ref_id')} has no_target set but names annotations {targets}",
        )
    return targets


class _InstancesIndex:
    """The instances JSON, indexed for building records (used during construction only)."""

    def __init__(
        self, data: Any, path: Path, image_root: Path, category_to_index: dict[int, int]
    ) -> None:
        self.path = path
        self.image_root = image_root
        self.category_to_index = category_to_index
        self.images = coco_images(data, path)
        anns = data.get("annotations")
        expect(isinstance(anns, list), path, "expected an 'annotations' list")
        self.anns: dict[int, dict[str, Any]] = {}
        self.image_anns: dict[Any, list[int]] = defaultdict(list)
        for ann in anns:
            expect(
                isinstance(ann, dict) and "id" in ann and "image_id" in ann,
                path,
                f"expected annotations with 'id' and 'image_id', got {str(ann)[:200]}",
            )
            self.anns[ann["id"]] = ann
            self.image_anns[ann["image_id"]].append(ann["id"])
        self.positions: dict[Any, int] = {}  # image id -> position in image_records()

    def ref_samples(self, ref: dict[str, Any], refs_path: Path) -> list[list[Any]]:
        """One record `[image position, target ann ids, sentence, ref id]` per sentence."""
        ref_id = ref.get("ref_id")
        image_id: Any = ref.get("image_id")
        expect(
            image_id in self.images,
            refs_path,
            f"ref {ref_id}: image_id {image_id!r} is not in {self.path}",
        )
        targets = _target_ann_ids(ref, refs_path)
        for a in targets:
            expect(a in self.anns, refs_path, f"ref {ref_id}: ann_id {a} is not in {self.path}")
            owner = self.anns[a]["image_id"]
            expect(
                owner == image_id,
                refs_path,
                f"ref {ref_id}: ann_id {a} belongs to image {owner}, not {image_id}",
            )
        sentences: Any = ref.get("sentences")
        expect(
            isinstance(sentences, list)
            and all(isinstance(s, dict) and isinstance(s.get("sent"), str) for s in sentences),
            refs_path,
            f"ref {ref_id}: expected 'sentences' as a list of {{'sent': str}}",
        )
        image = self.image_root / self.images[image_id]["file_name"]
        if not image.is_file():
            raise FileNotFoundError(f"{image}: image not found (image {image_id} of {refs_path})")
        for a in self.image_anns.get(image_id, []):
            cid = self.anns[a].get("category_id")
            expect(
                cid in self.category_to_index,
                self.path,
                f"annotation {a} has category_id {cid!r}, which is not in 'categories'",
            )
            expect(
                "segmentation" in self.anns[a], self.path, f"annotation {a} has no 'segmentation'"
            )
        pos = self.positions.setdefault(image_id, len(self.positions))
        return [[pos, targets, s["sent"], ref_id] for s in sentences]

    def image_records(self) -> list[list[Any]]:
        """`[image id, image path, [height, width], [[ann id, class, segmentation], ...]]`."""
        out = []
        for image_id in self.positions:  # insertion order = position order
            info = self.images[image_id]
            anns = [
                [
                    a,
                    self.category_to_index[self.anns[a]["category_id"]],
                    self.anns[a]["segmentation"],
                ]
                for a in self.image_anns.get(image_id, [])
            ]
            path = str(self.image_root / info["file_name"])
            out.append([image_id, path, [info.get("height"), info.get("width")], anns])
        return out


class RefCoco(Dataset, Vocabulary):  # type: ignore[type-arg]
    """RefCOCO / RefCOCO+ / RefCOCOg (REFER `refs(*).p`) and gRefCOCO (`grefs(*).json`).

    Examples:
        >>> ds = RefCoco("refer/data/images/train2014", "refer/data/refcoco/refs(unc).p",
        ...              "refer/data/refcoco/instances.json", "val")  # doctest: +SKIP
        >>> ds[0].text  # doctest: +SKIP
        'guy in red'
    """

    def __init__(
        self,
        image_root: PathLike,
        refs: PathLike,
        instances_json: PathLike,
        split: str,
        *,
        size: int | None = None,
        strict: bool = True,
    ) -> None:
        """Read the refs and the instances JSON (images and masks are decoded lazily).

        Args:
            image_root: Folder of the images (`images[*].file_name` of the instances JSON is
                relative to it).
            refs: `refs(*).p` (REFER pickle) or `grefs(*).json` (gRefCOCO); chosen by suffix,
                `.json` meaning JSON.
            instances_json: The COCO instances JSON holding the referenced annotations.
            split: The refs' `split` to read (e.g. `"train"`, `"val"`, `"testA"`).
            size: `None` keeps the native size; `S` resizes the longest side to `S` and pads
                to `S x S` (see `samkit.data.transforms`).
            strict: Raise on the first bad ref (default). With False, refs naming unknown
                annotations or images, or whose image file is missing, are skipped and the
                count logged (messages in `self.skipped`); masks that fail to decode raise in
                `__getitem__` either way.

        Raises:
            FileNotFoundError: If a file is missing (strict).
            ValueError: If a file is malformed, the pickle holds more than plain data, or no
                ref has this `split`.
        """
        self.image_root = Path(image_root)
        self.refs = Path(refs)
        self.instances_json = Path(instances_json)
        self.split = split
        self.size = check_size(size)
        self.strict = strict
        data = read_json(self.instances_json, "COCO instances JSON")
        things, _ = coco_categories(data, self.instances_json, panoptic=False)
        self._set_vocabulary(things, [])
        index = _InstancesIndex(data, self.instances_json, self.image_root, self.category_to_index)
        all_refs = _read_refs(self.refs)
        chosen = [r for r in all_refs if isinstance(r, dict) and r.get("split") == split]
        if not chosen:
            splits = sorted({str(r.get("split")) for r in all_refs if isinstance(r, dict)})
            raise ValueError(f"{self.refs}: no ref has split {split!r} (splits: {splits})")
        records, self.skipped = collect(
            chosen, lambda r: index.ref_samples(r, self.refs), strict=strict, source=self.refs
        )
        self._records = PackedRecords(s for rec in records for s in rec)
        self._images = PackedRecords(index.image_records())

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> ReferringSample:
        image_pos, targets, text, _ = self._records[check_index(index, len(self))]
        image_id, image_path, hw, anns = self._images[image_pos]
        image = read_image(image_path)
        if None not in hw:
            check_image_size(image, hw, image_path, f"its 'images' entry in {self.instances_json}")
        H, W = int(image.shape[-2]), int(image.shape[-1])
        masks = np.zeros((len(anns), H, W), dtype=bool)
        for i, (ann_id, _, seg) in enumerate(anns):
            where = f"{self.instances_json} (annotation {ann_id}, image {image_id})"
            masks[i] = decode_coco_segmentation(seg, H, W, source=where)
        position = {a[0]: i for i, a in enumerate(anns)}
        target_ids = sorted(position[a] for a in targets)
        instance_masks = torch.from_numpy(masks)
        target = (
            instance_masks[target_ids].any(0) if target_ids else torch.zeros(H, W, dtype=torch.bool)
        )
        box = torch.zeros(4, dtype=torch.float32)
        if target.any():
            ys, xs = torch.nonzero(target, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
        kind = (
            "no-target" if not targets else "single-target" if len(targets) == 1 else "multi-target"
        )
        sample = ReferringSample(
            image=image,
            text=text,
            target_mask=target,
            has_target=bool(targets),
            target_box=box,
            target_ids=target_ids,
            kind=kind,
            instance_masks=instance_masks,
            instance_classes=torch.tensor([c for _, c, _ in anns], dtype=torch.long),
            scene_seed=-1,
            image_id=image_id,
        )
        return sample if self.size is None else resize_sample(sample, self.size)
