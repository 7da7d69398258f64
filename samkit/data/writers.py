"""Writers for the standard formats: predictions (and ground truth) that other tools can read.

* COCO panoptic: `CocoPanopticWriter` writes one RGB PNG per image (id = R + 256 G + 256^2 B)
  and, on `write()`, one JSON with `images`, `annotations` (`segments_info`) and `categories`:
  the format of panopticapi's `pq_compute` (both ground truth and predictions).
* COCO results: `CocoResultsWriter` writes the JSON list that `COCO.loadRes` reads, one entry
  per mask with an RLE `segmentation` (pycocotools' `mask.encode`) and a `score`.
* Semantic label PNG (`write_semantic_png`, one class id per pixel, 8 or 16 bit) and binary
  mask PNG (`write_mask_png`, 0 / 255) for referring masks.

Class indices given to the writers are contiguous (the readers' `class_names` order); the COCO
writers turn them into the data set's category ids through `category_ids`. Every file is
written atomically (`samkit._io.write_atomic`): a reader sees the old file or the whole new one.
"""

# axis legend
# m - predicted masks of one image, `M`
# h w - image pixels (`H`, `W`)

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from samkit._io import write_atomic, write_pil_image
from samkit.data._files import PathLike, pycocotools_mask

__all__ = [
    "CocoPanopticWriter",
    "CocoResultsWriter",
    "encode_panoptic_ids",
    "encode_rle",
    "write_image",
    "write_json",
    "write_mask_png",
    "write_panoptic_png",
    "write_semantic_png",
]


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _write_pil(path: PathLike, im: Image.Image, **options: Any) -> Path:
    p = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(p.suffix.lower())
    if fmt is None:
        raise ValueError(f"{p}: expected a .png, .jpg or .jpeg file name")
    return write_pil_image(p, im, fmt, **options)


def write_json(path: PathLike, obj: Any, *, indent: int | None = None) -> Path:
    """Write `obj` as JSON, atomically (parent folders are created).

    Args:
        path: The destination file.
        obj: Anything `json.dumps` accepts.
        indent: Indent nested levels by this many spaces (one line per entry, for files
            people read, such as metrics); `None` writes the compact form.

    Returns:
        The path written.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = (
        json.dumps(obj, separators=(",", ":"))
        if indent is None
        else json.dumps(obj, indent=indent) + "\n"
    )
    write_atomic(p, text.encode())
    return p


def write_image(path: PathLike, image: Tensor | np.ndarray) -> Path:
    """Write a `(3, H, W)` float image in `[0, 1]` as PNG (lossless) or JPEG (quality 95).

    Args:
        path: Destination (`.png`, `.jpg` or `.jpeg`).
        image: `(3, H, W)` float in `[0, 1]`, or `(H, W, 3)` uint8.

    Returns:
        The path written.
    """
    arr = _numpy(image)
    if arr.dtype != np.uint8:
        if arr.ndim != 3 or arr.shape[0] != 3:
            raise ValueError(f"image: expected (3, H, W) float, got shape {arr.shape}")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    return _write_pil(path, Image.fromarray(np.ascontiguousarray(arr), "RGB"), quality=95)


def write_semantic_png(path: PathLike, labels: Tensor | np.ndarray) -> Path:
    """Write `(H, W)` class ids as a label PNG: 8-bit if every id is `<= 255`, else 16-bit.

    Args:
        path: Destination `.png`.
        labels: `(H, W)` integer class ids in `[0, 65535]` (255 is the usual ignore label).

    Returns:
        The path written.
    """
    arr = _numpy(labels)
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise ValueError(f"labels: expected (H, W) integers, got {arr.dtype} {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError(f"labels: expected ids in [0, 65535], got [{arr.min()}, {arr.max()}]")
    if arr.size == 0 or arr.max() <= 255:
        im = Image.fromarray(arr.astype(np.uint8), "L")
    else:
        im = Image.fromarray(arr.astype(np.uint16))
    return _write_pil(path, im)


def write_mask_png(path: PathLike, mask: Tensor | np.ndarray) -> Path:
    """Write an `(H, W)` binary mask as an 8-bit PNG with 0 (background) and 255 (mask)."""
    arr = _numpy(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask: expected (H, W), got shape {arr.shape}")
    return _write_pil(path, Image.fromarray((arr > 0).astype(np.uint8) * 255, "L"))


def encode_panoptic_ids(panoptic: Tensor | np.ndarray) -> np.ndarray:
    """`(H, W)` segment ids -> `(H, W, 3)` uint8 RGB with id = R + 256 G + 256^2 B."""
    ids = _numpy(panoptic).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError(f"panoptic: expected ids in [0, 256^3), got [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def write_panoptic_png(path: PathLike, panoptic: Tensor | np.ndarray) -> Path:
    """Write `(H, W)` segment ids as a COCO panoptic RGB PNG (0 = void)."""
    return _write_pil(path, Image.fromarray(encode_panoptic_ids(panoptic), "RGB"))


def encode_rle(mask: Tensor | np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of an `(H, W)` mask: `{"size": [H, W], "counts": str}` (JSON-ready)."""
    mask_utils = pycocotools_mask()
    arr = np.asfortranarray(_numpy(mask).astype(np.uint8))
    rle = mask_utils.encode(arr)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _bbox(mask: np.ndarray) -> list[float]:
    """COCO `[x, y, width, height]` of a mask (zeros when empty)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


def _get(seg: Any, key: str, default: Any = None) -> Any:
    return seg.get(key, default) if isinstance(seg, Mapping) else getattr(seg, key, default)


def _check_category_ids(category_ids: Sequence[int]) -> tuple[int, ...]:
    ids = tuple(int(c) for c in category_ids)
    if len(set(ids)) != len(ids) or not ids:
        raise ValueError(f"category_ids: expected distinct ids, got {list(ids)[:20]}")
    return ids


class CocoPanopticWriter:
    """Write panoptic maps as COCO panoptic PNGs plus one JSON (panopticapi's format).

    Examples:
        >>> w = CocoPanopticWriter("out", class_names=ds.class_names, num_things=ds.num_things,
        ...                        category_ids=ds.category_ids)  # doctest: +SKIP
        >>> w.add(image_id, panoptic, segments)  # doctest: +SKIP
        >>> w.write()  # doctest: +SKIP
        PosixPath('out/panoptic_pred.json')
    """

    def __init__(
        self,
        out_dir: PathLike,
        *,
        class_names: Sequence[str],
        num_things: int,
        category_ids: Sequence[int] | None = None,
        json_name: str = "panoptic_pred.json",
        png_dir: str = "panoptic_pred",
    ) -> None:
        """Set up the writer (nothing is written until `add`).

        Args:
            out_dir: Folder of the JSON; the PNGs go to `out_dir/png_dir`.
            class_names: The contiguous vocabulary (things first).
            num_things: Number of thing classes.
            category_ids: Data set category id of every contiguous class (default: the index).
            json_name: File name of the JSON.
            png_dir: Folder (inside `out_dir`) of the PNGs.
        """
        self.out_dir = Path(out_dir)
        self.json_path = self.out_dir / json_name
        self.png_dir = self.out_dir / png_dir
        names = tuple(class_names)
        if not 0 <= num_things <= len(names):
            raise ValueError(f"num_things: expected in [0, {len(names)}], got {num_things}")
        ids = _check_category_ids(range(len(names)) if category_ids is None else category_ids)
        if len(ids) != len(names):
            raise ValueError(
                f"category_ids: expected one id per class ({len(names)}), got {len(ids)}"
            )
        self.category_ids = ids
        self.categories = [
            {"id": cid, "name": name, "isthing": int(i < num_things)}
            for i, (cid, name) in enumerate(zip(ids, names, strict=True))
        ]
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(
        self,
        image_id: int | str,
        panoptic: Tensor | np.ndarray,
        segments: Sequence[Any],
        *,
        file_name: str | None = None,
        image_file_name: str | None = None,
    ) -> Path:
        """Write one image's PNG and remember its `segments_info`.

        Args:
            image_id: The image id (as in the ground truth).
            panoptic: `(H, W)` segment ids, 0 = void.
            segments: One entry per id: `Segment`s or dicts with `id`, `category_id`
                (contiguous index) and optionally `iscrowd` and `score`. Ids present in
                `panoptic` but not in `segments` are written as void.
            file_name: PNG file name (default `<image_id>.png`).
            image_file_name: The image's file name for the `images` entry (default: the PNG
                name with a `.jpg` suffix).

        Returns:
            The PNG path.
        """
        ids = _numpy(panoptic).astype(np.int64)
        if ids.ndim != 2:
            raise ValueError(f"panoptic: expected (H, W), got shape {ids.shape}")
        listed = {int(_get(s, "id")) for s in segments}
        if len(listed) != len(segments) or 0 in listed:
            raise ValueError("segments: expected distinct ids >= 1")
        ids = np.where(np.isin(ids, list(listed)), ids, 0)
        name = file_name or f"{image_id}.png"
        png = write_panoptic_png(self.png_dir / name, ids)
        info = []
        for s in segments:
            sid, cls = int(_get(s, "id")), int(_get(s, "category_id"))
            if not 0 <= cls < len(self.category_ids):
                raise ValueError(
                    f"segments: category_id {cls} is not a class index in "
                    f"[0, {len(self.category_ids)})"
                )
            mask = ids == sid
            entry = {
                "id": sid,
                "category_id": self.category_ids[cls],
                "iscrowd": int(bool(_get(s, "iscrowd", False))),
                "area": int(mask.sum()),
                "bbox": _bbox(mask),
            }
            score = _get(s, "score")
            if score is not None:
                entry["score"] = float(score)
            info.append(entry)
        H, W = ids.shape
        image_name = image_file_name or f"{Path(name).stem}.jpg"
        self.images.append({"id": image_id, "file_name": image_name, "height": H, "width": W})
        self.annotations.append({"image_id": image_id, "file_name": name, "segments_info": info})
        return png

    def write(self) -> Path:
        """Write the JSON (`images`, `annotations`, `categories`) and return its path."""
        return write_json(
            self.json_path,
            {"images": self.images, "annotations": self.annotations, "categories": self.categories},
        )


class CocoResultsWriter:
    """Collect instance predictions and write the COCO results JSON (`COCO.loadRes` format)."""

    def __init__(self, path: PathLike, *, category_ids: Sequence[int]) -> None:
        """Set up the writer.

        Args:
            path: The JSON file to write.
            category_ids: Data set category id of every contiguous class.
        """
        self.path = Path(path)
        self.category_ids = _check_category_ids(category_ids)
        self.results: list[dict[str, Any]] = []

    def add(
        self,
        image_id: int | str,
        masks: Tensor | np.ndarray,
        labels: Tensor | Sequence[int],
        scores: Tensor | Sequence[float],
    ) -> None:
        """Add one image's predictions.

        Args:
            image_id: The image id (as in the ground truth).
            masks: `(M, H, W)` binary masks.
            labels: `(M,)` contiguous class indices.
            scores: `(M,)` confidences.
        """
        m = _numpy(masks)
        lab = [int(v) for v in (labels.tolist() if isinstance(labels, Tensor) else labels)]
        sc = [float(v) for v in (scores.tolist() if isinstance(scores, Tensor) else scores)]
        if m.ndim != 3 or not len(lab) == len(sc) == m.shape[0]:
            raise ValueError(
                f"expected masks (M, H, W) with M labels and M scores, got masks {m.shape}, "
                f"{len(lab)} labels, {len(sc)} scores"
            )
        for mask, cls, score in zip(m, lab, sc, strict=True):
            if not 0 <= cls < len(self.category_ids):
                raise ValueError(
                    f"labels: {cls} is not a class index in [0, {len(self.category_ids)})"
                )
            self.results.append(
                {
                    "image_id": image_id,
                    "category_id": self.category_ids[cls],
                    "segmentation": encode_rle(mask),
                    "score": score,
                }
            )

    def write(self) -> Path:
        """Write the JSON list and return its path."""
        return write_json(self.path, self.results)
