"""Shared helpers of the file readers: image and PNG decoding, errors, skips, packed records.

Every error names the file it is about. Records (one per sample) are kept as JSON bytes packed
into one numpy buffer, so a data set with many images holds a few large objects instead of
millions of small Python ones: DataLoader workers then share the parent's pages instead of
copying them as reference counts change (the copy-on-read growth detectron2 avoids the same
way), and pickling a reader for a worker is one buffer copy.
"""

# axis legend
# c - colour channels (3)
# h w - image pixels (`H`, `W`)

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

logger = logging.getLogger("samkit.data")

T = TypeVar("T")

PathLike = str | os.PathLike[str]


class PackedRecords:
    """An immutable list of JSON-serialisable records stored as one byte buffer."""

    def __init__(self, records: Iterable[Any]) -> None:
        """Pack `records` (each must survive `json.dumps` / `json.loads` unchanged)."""
        chunks = [json.dumps(r, separators=(",", ":")).encode() for r in records]
        self._ends = np.cumsum([len(c) for c in chunks], dtype=np.int64)
        self._buffer = np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return int(self._ends.shape[0])

    def __getitem__(self, index: int) -> Any:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return json.loads(self._buffer[start : int(self._ends[index])].tobytes())


def read_json(path: PathLike, what: str) -> Any:
    """Read a JSON file, turning every failure into an error that names the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {what} not found")
    try:
        with p.open("rb") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{p}: not a readable {what}: {type(err).__name__}: {err}") from err


def expect(cond: bool, path: PathLike, message: str) -> None:
    """Raise `ValueError("<path>: <message>")` unless `cond`."""
    if not cond:
        raise ValueError(f"{path}: {message}")


def _open(path: PathLike, what: str) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {what} not found")
    try:
        im = Image.open(p)
        im.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{p}: not a readable {what}: {type(err).__name__}: {err}") from err
    return im


def read_image(path: PathLike) -> Tensor:
    """Read an image file as `(3, H, W)` float32 RGB in `[0, 1]` (EXIF rotation applied)."""
    im = ImageOps.exif_transpose(_open(path, "image"))
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0)


def read_label_png(path: PathLike) -> np.ndarray:
    """Read a single-channel label PNG (mode L, P, I;16 or I) as an `(H, W)` int64 array."""
    im = _open(path, "label map")
    if im.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
        raise ValueError(
            f"{path}: expected a single-channel label PNG (mode L, P or 16-bit), got mode "
            f"{im.mode!r}; label maps store one class id per pixel, not colours"
        )
    return np.asarray(im).astype(np.int64)


def read_panoptic_png(path: PathLike) -> np.ndarray:
    """Read a COCO panoptic PNG as `(H, W)` int64 ids `R + 256 G + 256^2 B`."""
    im = _open(path, "panoptic PNG")
    if im.mode not in ("RGB", "RGBA"):
        raise ValueError(
            f"{path}: expected an RGB panoptic PNG (id = R + 256 G + 256^2 B), got mode {im.mode!r}"
        )
    rgb = np.asarray(im.convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def check_image_size(image: Tensor, shape: Sequence[int], image_path: PathLike, other: str) -> None:
    """Raise if the image's `(H, W)` differs from an annotation's `shape`, naming both."""
    got = (int(image.shape[-2]), int(image.shape[-1]))
    want = (int(shape[0]), int(shape[1]))
    if got != want:
        raise ValueError(
            f"{image_path}: image is {got[0]}x{got[1]} (HxW) but {other} is "
            f"{want[0]}x{want[1]}; the annotation does not belong to this image"
        )


def collect(
    items: Iterable[T], build: Callable[[T], Any], *, strict: bool, source: PathLike
) -> tuple[list[Any], list[str]]:
    """Build one record per item, raising or (not `strict`) collecting the failures.

    A `ValueError` / `FileNotFoundError` of `build` is raised when `strict`, else recorded as a
    skip message; skips are logged once, with their count.
    """
    records: list[Any] = []
    skipped: list[str] = []
    total = 0
    for item in items:
        total += 1
        try:
            records.append(build(item))
        except (ValueError, FileNotFoundError) as err:
            if strict:
                raise
            skipped.append(str(err))
    if skipped:
        logger.warning(
            "%s: skipped %d of %d samples with bad data (strict=False); first: %s",
            source,
            len(skipped),
            total,
            skipped[0],
        )
    return records, skipped


class Vocabulary:
    """The class vocabulary a reader exposes (contiguous order, things first).

    Attributes:
        class_names: Class names in contiguous order: things, then stuff.
        num_things: Number of thing classes (the first `num_things` names).
        category_ids: Contiguous index -> the data set's category id.
        category_to_index: The data set's category id -> contiguous index.
    """

    class_names: tuple[str, ...]
    num_things: int
    category_ids: tuple[int, ...]
    category_to_index: dict[int, int]

    def _set_vocabulary(
        self, things: Sequence[tuple[int, str]], stuff: Sequence[tuple[int, str]]
    ) -> None:
        ordered = sorted(things) + sorted(stuff)
        self.class_names = tuple(name for _, name in ordered)
        self.num_things = len(things)
        self.category_ids = tuple(cid for cid, _ in ordered)
        self.category_to_index = {cid: i for i, cid in enumerate(self.category_ids)}


def coco_categories(
    data: Any, path: PathLike, *, panoptic: bool
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Split a COCO `categories` list into sorted `(id, name)` things and stuff."""
    cats: Any = data.get("categories") if isinstance(data, dict) else None
    expect(isinstance(cats, list) and len(cats) > 0, path, "expected a non-empty 'categories' list")
    things: list[tuple[int, str]] = []
    stuff: list[tuple[int, str]] = []
    seen: set[int] = set()
    for c in cats:
        expect(
            isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str),
            path,
            f"expected categories with an int 'id' and a str 'name', got {c!r}",
        )
        expect(c["id"] not in seen, path, f"category id {c['id']} appears twice")
        seen.add(c["id"])
        is_thing = bool(c.get("isthing", 1)) if panoptic else True
        if panoptic:
            expect("isthing" in c, path, f"category {c['id']} ({c['name']}) has no 'isthing'")
        (things if is_thing else stuff).append((c["id"], c["name"]))
    return things, stuff


def coco_images(data: Any, path: PathLike) -> dict[int, dict[str, Any]]:
    """The `images` list of a COCO file, by id."""
    images: Any = data.get("images") if isinstance(data, dict) else None
    expect(isinstance(images, list), path, "expected an 'images' list")
    out: dict[int, dict[str, Any]] = {}
    for im in images:
        expect(
            isinstance(im, dict) and "id" in im and isinstance(im.get("file_name"), str),
            path,
            f"expected images with an 'id' and a 'file_name', got {im!r}",
        )
        out[im["id"]] = im
    return out


def pycocotools_mask() -> Any:
    """`pycocotools.mask` (a dependency of samkit), imported when first needed."""
    from pycocotools import mask as mask_utils

    return mask_utils


def check_index(index: int, n: int) -> int:
    """`index` made non-negative, or an IndexError."""
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for a dataset of {n} items")
    return index


def check_size(size: int | None) -> int | None:
    """The readers' `size` argument: None or a positive int."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size: expected None or a positive int, got {size!r}")
    return size
