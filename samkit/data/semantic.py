"""Semantic segmentation folders (the ADE20K / MMSegmentation layout) as `SemanticSample`s.

Layout (MMSegmentation's `ADE20KDataset`; folder names are arguments):

    ADEChallengeData2016/
      images/training/ADE_train_00000001.jpg ...         image_dir
      annotations/training/ADE_train_00000001.png ...    annotation_dir
      classes.txt                                         one class name per line (optional)

Every image `image_dir/<rel>/<stem><img_suffix>` (searched recursively, sorted) pairs with the
label map `annotation_dir/<rel>/<stem><seg_map_suffix>`: a single-channel PNG (8 or 16 bit)
holding one class id per pixel. Class `i` is `class_names[i]`; there are no things
(`num_things == 0`).

`reduce_zero_label=True` does what MMSegmentation does for ADE20K, whose label 0 means "other":
0 becomes 255 (ignored) and every other label is decreased by one. Pixels whose label (after
that) equals `ignore_index` come out as 255, samkit's ignore label; any other label outside
`[0, T)` is an error naming the file.
"""

# axis legend
# h w - image pixels (`H`, `W`)

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

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
    collect,
    read_image,
    read_label_png,
)
from samkit.data._items import SemanticSample
from samkit.data.transforms import IGNORE_LABEL, resize_sample

__all__ = ["SemanticFolder", "read_class_names"]


def read_class_names(classes: Sequence[str] | PathLike) -> tuple[str, ...]:
    """Class names from a list, or from a text file with one name per line.

    Blank lines and surrounding whitespace are dropped.

    Args:
        classes: The names, or the path of the text file.

    Returns:
        The names, in order.

    Raises:
        FileNotFoundError: If the text file does not exist.
        ValueError: If there are no names or a name repeats.
    """
    if isinstance(classes, str | os.PathLike):
        path = Path(classes)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: class names file not found")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a readable text file: {err}") from err
        names = tuple(line.strip() for line in lines if line.strip())
        where = str(path)
    else:
        names = tuple(classes)
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"classes: expected non-empty strings, got {list(names)[:10]}")
        where = "classes"
    if not names:
        raise ValueError(f"{where}: expected at least one class name, got none")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: class names must be unique, got {dup[:5]} more than once")
    return names


class SemanticFolder(Dataset, Vocabulary):  # type: ignore[type-arg]
    """Images and label PNGs in two parallel folders (ADE20K layout), as `SemanticSample`s.

    `semantic` holds class indices into `class_names` and 255 on ignored pixels; `image_id` is
    the image path relative to `image_dir`, without suffix.

    Examples:
        >>> ds = SemanticFolder("ADEChallengeData2016/images/validation",
        ...                     "ADEChallengeData2016/annotations/validation",
        ...                     "ade150.txt", reduce_zero_label=True)  # doctest: +SKIP
    """

    def __init__(
        self,
        image_dir: PathLike,
        annotation_dir: PathLike,
        classes: Sequence[str] | PathLike,
        *,
        ignore_index: int = IGNORE_LABEL,
        reduce_zero_label: bool = False,
        img_suffix: str = ".jpg",
        seg_map_suffix: str = ".png",
        size: int | None = None,
        strict: bool = True,
    ) -> None:
        """List the image / label pairs (files are decoded lazily).

        Args:
            image_dir: Folder of the images (searched recursively for `*<img_suffix>`).
            annotation_dir: Folder of the label PNGs, mirroring `image_dir`.
            classes: Class names, or a text file with one name per line; at most 255 (255 is
                the ignore label).
            ignore_index: Label (after `reduce_zero_label`) of unlabelled pixels; they come
                out as 255.
            reduce_zero_label: MMSegmentation's ADE20K rule: 0 -> 255, others minus one.
            img_suffix: Suffix of the images.
            seg_map_suffix: Suffix of the label maps.
            size: `None` keeps the native size; `S` resizes the longest side to `S` and pads
                to `S x S` (see `samkit.data.transforms`).
            strict: Raise when an image has no label map (default); with False such images
                are skipped and the count logged (messages in `self.skipped`). Bad label
                values and size mismatches raise in `__getitem__` either way.

        Raises:
            FileNotFoundError: If a folder, the class file or a label map (strict) is missing.
            ValueError: If there are no images or the classes are invalid.
        """
        self.image_dir = Path(image_dir)
        self.annotation_dir = Path(annotation_dir)
        names = read_class_names(classes)
        if len(names) > IGNORE_LABEL:
            raise ValueError(
                f"classes: at most {IGNORE_LABEL} classes are supported ({IGNORE_LABEL} is the "
                f"ignore label), got {len(names)}"
            )
        self._set_vocabulary([], list(enumerate(names)))
        self.ignore_index = int(ignore_index)
        self.reduce_zero_label = bool(reduce_zero_label)
        self.img_suffix = img_suffix
        self.seg_map_suffix = seg_map_suffix
        self.size = check_size(size)
        self.strict = strict
        for d, what in ((self.image_dir, "image_dir"), (self.annotation_dir, "annotation_dir")):
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: {what} is not a folder")
        images = sorted(
            p.relative_to(self.image_dir).as_posix()
            for p in self.image_dir.rglob(f"*{img_suffix}")
            if p.is_file()
        )
        if not images:
            raise ValueError(f"{self.image_dir}: no images ending in {img_suffix!r}")
        records, self.skipped = collect(images, self._record, strict=strict, source=self.image_dir)
        self._records = PackedRecords(records)

    def _record(self, rel: str) -> list[str]:
        stem = rel[: -len(self.img_suffix)]
        label = self.annotation_dir / f"{stem}{self.seg_map_suffix}"
        if not label.is_file():
            raise FileNotFoundError(
                f"{label}: label map not found (for the image {self.image_dir / rel})"
            )
        return [str(self.image_dir / rel), str(label), stem]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> SemanticSample:
        image_path, label_path, stem = self._records[check_index(index, len(self))]
        image = read_image(image_path)
        labels = read_label_png(label_path)
        check_image_size(image, labels.shape, image_path, f"the label map {label_path}")
        if self.reduce_zero_label:
            # MMSegmentation's LoadAnnotations: 0 -> 255, x -> x - 1, and 255 stays 255
            reduced = labels - 1
            reduced[(labels == 0) | (reduced == IGNORE_LABEL - 1)] = IGNORE_LABEL
            labels = reduced
        ignored = labels == self.ignore_index
        bad = (~ignored) & ((labels < 0) | (labels >= len(self.class_names)))
        if bad.any():
            values = sorted({int(v) for v in np.unique(labels[bad])})
            raise ValueError(
                f"{label_path}: labels {values[:10]} are neither class indices in "
                f"[0, {len(self.class_names)}) nor ignore_index={self.ignore_index}"
                + (" (after reduce_zero_label)" if self.reduce_zero_label else "")
            )
        labels[ignored] = IGNORE_LABEL
        sample = SemanticSample(
            image=image, semantic=torch.from_numpy(labels), scene_seed=-1, image_id=stem
        )
        return sample if self.size is None else resize_sample(sample, self.size)
