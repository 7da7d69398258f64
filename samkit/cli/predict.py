"""`samkit predict RUN IMAGE... --out DIR [--text T]... [--classes A,B,...]`.

Runs a trained system on image files (JPEG or PNG, read with `torchvision.io`) and writes, per
image, a labelled overlay (title and a legend with the class names) plus machine-readable
results in the standard format of the task:

- sam-cp: `panoptic_pred/*.png` + `panoptic_pred.json` (COCO panoptic),
  `instances_results.json` (COCO results, RLE masks), `semantic/*.png` (class index per pixel);
- sam-mi: `semantic/*.png` (class index per pixel; `classes.txt` lists the names);
- ssp-sam: `masks/<image>_<k>.png` (0/255) + `referring.json` (text, has_target, score, RLE).

The same writers serve `samkit eval --predictions`.
"""

from __future__ import annotations

import abc
import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samkit.cli._run import RunInfo, display_name, write_json

if TYPE_CHECKING:  # torch is imported when a command runs, so `samkit --help` stays quick
    from torch import Tensor, nn

__all__ = ["add_parser", "load_run", "prediction_writer", "read_image", "run_predict"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `predict` command to the `samkit` sub-parsers."""
    p = sub.add_parser(
        "predict",
        help="run a trained system on image files",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, help="run folder written by `samkit train`")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--text",
        action="append",
        default=[],
        help="referring expression (ssp-sam), repeatable; each is applied to every image",
    )
    p.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names (sam-cp, sam-mi: open vocabulary; default the run's)",
    )
    p.add_argument(
        "--num-things", type=int, default=None, help="thing classes among --classes (sam-cp)"
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="consecutive images of equal size run together, at most this many (default 8; "
        "each image's result does not depend on its batch)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=None,
        help="compute precision of the system (default: the one it was saved with, fp32)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(handler=run_predict)
    return p


def read_image(path: Path) -> Tensor:
    """Read a JPEG or PNG as `(3, H, W)` float RGB in `[0, 1]`; errors name the file."""
    from torchvision.io import ImageReadMode, decode_image

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        image = decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JPEG or PNG image: {err}") from err
    return image.float() / 255.0


def load_run(run: Path, info: RunInfo, *, precision: str | None = None) -> nn.Module:
    """The trained system of a run folder (`RUN/model`), checked against `run.json`.

    `precision` (`"fp32"` or `"bf16"`) replaces the system's `config.precision` when given.
    """
    from samkit.systems import load_pretrained

    folder = run / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: no trained model; the run has not finished (resume it with "
            f"`samkit train {display_name(info.system)} ... --out {run} --resume`)"
        )
    model = load_pretrained(folder)
    if precision is not None:
        from samkit._precision import check_precision

        config: Any = model.config
        config.precision = check_precision(precision, name="--precision")
    return model


def _safe_stem(image_id: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(image_id)) or "image"


class _Writer(abc.ABC):
    """Collects predictions of one task and writes them in its standard format."""

    def __init__(self, out: Path) -> None:
        self.out = out

    @abc.abstractmethod
    def add(self, predictions: Sequence[Any], batch: Any) -> None:
        """Write (or remember) the predictions of one batch (`batch.image_ids`, `.texts`)."""

    @abc.abstractmethod
    def close(self) -> list[Path]:
        """Write what is left and return the paths written."""


class _PanopticWriter(_Writer):
    def __init__(self, out: Path, class_names: Sequence[str], num_things: int, ids: Sequence[int]):
        from samkit.data import CocoPanopticWriter, CocoResultsWriter

        super().__init__(out)
        self.panoptic = CocoPanopticWriter(
            out, class_names=class_names, num_things=num_things, category_ids=ids
        )
        self.instances = CocoResultsWriter(out / "instances_results.json", category_ids=ids)

    def add(self, predictions: Sequence[Any], batch: Any) -> None:
        from samkit.data import write_semantic_png

        for image_id, res in zip(batch.image_ids, predictions, strict=True):
            stem = _safe_stem(image_id)
            self.panoptic.add(image_id, res.panoptic.cpu(), res.segments, file_name=f"{stem}.png")
            self.instances.add(
                image_id, res.instance_masks.cpu(), res.instance_labels.cpu(), res.instance_scores
            )
            write_semantic_png(self.out / "semantic" / f"{stem}.png", res.semantic.cpu())

    def close(self) -> list[Path]:
        return [
            self.panoptic.write(),
            self.panoptic.png_dir,
            self.instances.write(),
            self.out / "semantic",
        ]


class _SemanticWriter(_Writer):
    def __init__(self, out: Path, class_names: Sequence[str]):
        from samkit._io import write_atomic

        super().__init__(out)
        write_atomic(out / "classes.txt", ("\n".join(class_names) + "\n").encode())

    def add(self, predictions: Sequence[Any], batch: Any) -> None:
        from samkit.data import write_semantic_png

        for image_id, pred in zip(batch.image_ids, predictions, strict=True):
            write_semantic_png(self.out / "semantic" / f"{_safe_stem(image_id)}.png", pred.semantic)

    def close(self) -> list[Path]:
        return [self.out / "classes.txt", self.out / "semantic"]


class _ReferringWriter(_Writer):
    def __init__(self, out: Path):
        super().__init__(out)
        self.records: list[dict[str, Any]] = []
        self.count: dict[str, int] = {}

    def add(self, predictions: Sequence[Any], batch: Any) -> None:
        from samkit.data import encode_rle, write_mask_png

        for image_id, text, pred in zip(batch.image_ids, batch.texts, predictions, strict=True):
            stem = _safe_stem(image_id)
            k = self.count.get(stem, 0)
            self.count[stem] = k + 1
            mask = pred.mask.cpu() & bool(pred.has_target)
            path = write_mask_png(self.out / "masks" / f"{stem}_{k}.png", mask)
            self.records.append(
                {
                    "image_id": image_id,
                    "text": text,
                    "has_target": bool(pred.has_target),
                    "score": float(pred.score),
                    "mask_file": str(path.relative_to(self.out)),
                    "segmentation": encode_rle(mask),
                }
            )

    def close(self) -> list[Path]:
        path = self.out / "referring.json"
        write_json(path, self.records)
        return [path, self.out / "masks"]


def prediction_writer(system: str, out: Path, data: Any = None, **vocabulary: Any) -> _Writer:
    """The writer of `system`'s predictions into `out` (vocabulary from `data` or keywords)."""
    names = vocabulary.get("class_names", getattr(data, "class_names", None))
    things = int(vocabulary.get("num_things", getattr(data, "num_things", 0)))
    out.mkdir(parents=True, exist_ok=True)
    if system == "ssp_sam":
        return _ReferringWriter(out)
    if names is None:
        raise ValueError(f"{display_name(system)} predictions need class names")
    if system == "sam_mi":
        return _SemanticWriter(out, list(names))
    ids = vocabulary.get("category_ids", getattr(data, "category_ids", None))
    return _PanopticWriter(out, list(names), things, ids or list(range(len(names))))


def _overlay(system: str, image: Tensor, pred: Any, names: Sequence[str], title: str) -> Any:
    """Labelled overlay of one prediction: the masks coloured by class, a title, a legend."""
    import torch

    from samkit.visualization import PALETTE, annotate, overlay_masks

    def color(k: int) -> tuple[int, int, int]:
        r, g, b = (int(c) for c in PALETTE[k % len(PALETTE)])
        return r, g, b

    if system == "ssp_sam":
        mask = pred.mask.cpu() & bool(pred.has_target)
        base = overlay_masks(image, mask[None], colors=[(255, 64, 64)])
        verdict = f"score {pred.score:.2f}" if pred.has_target else "no target"
        return annotate(base, title=f"{title} ({verdict})", legend=[("target", (255, 64, 64))])
    labels = pred.semantic.cpu()
    present = [int(k) for k in torch.unique(labels) if 0 <= int(k) < len(names)]
    masks = torch.stack([labels == k for k in present]) if present else labels[None] < 0
    base = overlay_masks(image, masks, colors=[color(k) for k in present] or [(0, 0, 0)])
    if system == "sam_cp":
        title = f"{title}: {len(pred.segments)} segments"
    return annotate(base, title=title, legend=[(names[k], color(k)) for k in present])


def _batches(images: Sequence[Tensor], batch_size: int) -> list[list[int]]:
    """Runs of consecutive images of equal size, at most `batch_size` long (order kept)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size: expected an int >= 1, got {batch_size!r}")
    out: list[list[int]] = []
    for i, image in enumerate(images):
        last = out[-1] if out else None
        if last and len(last) < batch_size and images[last[0]].shape == image.shape:
            last.append(i)
        else:
            out.append([i])
    return out


def run_predict(args: argparse.Namespace) -> int:
    """Run `samkit predict`; returns the exit code."""
    from types import SimpleNamespace

    import torch
    from tqdm.auto import tqdm

    from samkit.engine.distributed import default_device
    from samkit.systems.tasks import build_task
    from samkit.visualization import save_image

    info = RunInfo.read(args.run)
    system = info.system
    if system == "ssp_sam" and not args.text:
        raise ValueError("ssp-sam needs at least one --text expression")
    if system != "ssp_sam" and args.text:
        raise ValueError(f"--text is for ssp-sam runs; this run is {display_name(system)}")
    names = info.class_names
    things = info.num_things
    if args.classes is not None:
        if system == "ssp_sam":
            raise ValueError("--classes is for sam-cp and sam-mi runs; this run is ssp-sam")
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
        things = (
            args.num_things
            if args.num_things is not None
            else (0 if system == "sam_mi" else len(names))
        )
    images = [read_image(p) for p in args.images]  # every file is checked before any work
    batches = _batches(images, args.batch_size)
    device = torch.device(args.device) if args.device is not None else default_device()
    model = load_run(args.run, info, precision=args.precision).to(device).eval()
    task = build_task(system, model, class_names=names, num_things=things, **info.task_options)
    writer = prediction_writer(system, args.out, class_names=names, num_things=things)
    overlays: list[Path] = []
    texts = list(args.text) if system == "ssp_sam" else [None]
    bar = tqdm(total=len(images), desc="samkit predict", disable=args.no_progress)
    with torch.no_grad():
        for idx in batches:
            # rows: every image of the batch with every expression (image-major order)
            rows = [(i, k, text) for i in idx for k, text in enumerate(texts)]
            stack = torch.stack([images[i] for i, _, _ in rows]).to(device)
            row_texts = [text for _, _, text in rows]
            expressions = [t for t in row_texts if t is not None]
            preds = task.infer(stack, texts=expressions if system == "ssp_sam" else None)
            meta = SimpleNamespace(
                image_ids=[args.images[i].stem for i, _, _ in rows], texts=row_texts
            )
            writer.add(preds, meta)
            for (i, k, text), pred in zip(rows, preds, strict=True):
                path = args.images[i]
                suffix = f"_{k}" if text is not None else ""
                title = f"{path.name}: {text}" if text is not None else path.name
                target = args.out / "overlays" / f"{_safe_stem(path.stem)}{suffix}.png"
                save_image(_overlay(system, images[i], pred, names or [], title), target)
                overlays.append(target)
            bar.update(len(idx))
    bar.close()
    written = writer.close()
    print(f"wrote {len(overlays)} overlays to {args.out / 'overlays'}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
