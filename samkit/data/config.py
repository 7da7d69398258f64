"""Data files: a small YAML or JSON file naming a format and its reader's arguments.

    # data/coco_val.yaml
    format: coco_panoptic
    image_root: coco/val2017
    panoptic_json: coco/annotations/panoptic_val2017.json
    panoptic_root: coco/annotations/panoptic_val2017
    size: 512

`format` picks the reader (`FORMATS`); every other key is one of that reader's keyword
arguments, and relative paths are relative to the data file's folder. A JSON file holds the
same object. Unknown formats or keys, missing required keys and values of the wrong type are a
`ValueError` naming the data file.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from samkit.data._files import PathLike
from samkit.data.coco import CocoInstances, CocoPanoptic
from samkit.data.datasets import (
    SyntheticPanopticDataset,
    SyntheticReferringDataset,
    SyntheticSemanticDataset,
)
from samkit.data.refer import RefCoco
from samkit.data.semantic import SemanticFolder

__all__ = ["FORMATS", "PATH_KEYS", "load_data_file"]

FORMATS: dict[str, Callable[..., Dataset]] = {  # type: ignore[type-arg]
    "coco_panoptic": CocoPanoptic,
    "coco_instances": CocoInstances,
    "semantic_folder": SemanticFolder,
    "refcoco": RefCoco,
    "synthetic_panoptic": SyntheticPanopticDataset,
    "synthetic_semantic": SyntheticSemanticDataset,
    "synthetic_referring": SyntheticReferringDataset,
}
"""Data-file `format` -> the dataset class it builds."""

PATH_KEYS: dict[str, tuple[str, ...]] = {
    "coco_panoptic": ("image_root", "panoptic_json", "panoptic_root"),
    "coco_instances": ("image_root", "instances_json"),
    "semantic_folder": ("image_dir", "annotation_dir", "classes"),
    "refcoco": ("image_root", "refs", "instances_json"),
}
"""Keys of every format whose values are paths (relative ones are resolved against the data
file's folder; `classes` only when it is a string, a list being the names themselves)."""

_SYNTHETIC_KEYS = {
    "num_objects",
    "num_stuff",
    "object_scale",
    "min_visible_fraction",
    "no_target_fraction",
}


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable data file: {err}") from err
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from err
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"{path}: expected a .yaml, .yml or .json data file")
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err


def _allowed_keys(fmt: str, cls: Callable[..., Any]) -> tuple[set[str], set[str]]:
    """(all keyword arguments, required ones) of a reader."""
    params = inspect.signature(cls).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    required = {n for n in names if params[n].default is inspect.Parameter.empty}
    if fmt.startswith("synthetic_"):
        names |= _SYNTHETIC_KEYS
    return names, required


def load_data_file(path: PathLike) -> Dataset:  # type: ignore[type-arg]
    """Build the dataset a data file describes.

    Args:
        path: A `.yaml`, `.yml` or `.json` file with `format` and the reader's arguments.

    Returns:
        The dataset (`CocoPanoptic`, `CocoInstances`, `SemanticFolder`, `RefCoco` or a
        synthetic dataset).

    Raises:
        FileNotFoundError: If the data file (or a file it names) does not exist.
        ValueError: If the file is malformed: not a mapping, unknown `format`, unknown or
            missing keys, or a value the reader refuses; the message names the data file.

    Examples:
        >>> ds = load_data_file("data/coco_val.yaml")  # doctest: +SKIP
        >>> ds.class_names[:3]  # doctest: +SKIP
        ('person', 'bicycle', 'car')
    """
    p = Path(path)
    spec = _read(p)
    if not isinstance(spec, dict):
        raise ValueError(f"{p}: expected a mapping with a 'format' key, got {type(spec).__name__}")
    spec = dict(spec)
    fmt = spec.pop("format", None)
    if fmt not in FORMATS:
        raise ValueError(f"{p}: format: expected one of {sorted(FORMATS)}, got {fmt!r}")
    cls = FORMATS[fmt]
    allowed, required = _allowed_keys(fmt, cls)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(
            f"{p}: unknown keys {unknown} for format {fmt!r}; expected some of {sorted(allowed)}"
        )
    missing = sorted(required - set(spec))
    if missing:
        raise ValueError(f"{p}: format {fmt!r} needs the keys {missing}")
    base = p.parent
    for key in PATH_KEYS.get(fmt, ()):
        value = spec.get(key)
        if key == "classes" and isinstance(value, list):
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(f"{p}: {key}: expected a path (a string), got {value!r}")
        spec[key] = str(base / os.path.expanduser(value))
    for key in ("object_scale", "num_objects", "num_stuff", "size"):
        if isinstance(spec.get(key), list):  # YAML / JSON have no tuples
            spec[key] = tuple(spec[key])
    try:
        return cls(**spec)
    except TypeError as err:
        raise ValueError(f"{p}: bad value for format {fmt!r}: {err}") from err
    except ValueError as err:
        raise ValueError(f"{p}: {err}") from err
