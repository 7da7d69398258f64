"""`samkit export-onnx sam|ssp-sam --out DIR [...]`: ONNX graphs for ONNX Runtime and friends.

`sam` writes `sam_encoder.onnx` (images -> embeddings) and `sam_decoder.onnx` (embeddings and
point / box prompts -> mask logits and IoU) for a SAM variant (`--variant`, optional
`--checkpoint`). `ssp-sam` writes `sam_encoder.onnx` and `ssp_sam_prompt.onnx` (CLIP and text
features plus SAM embeddings -> mask, box, target decision) for a trained run (`--run`) or a
preset (`--preset`); the CLIP towers and tokenisation stay in PyTorch.

Unless `--no-check`, every graph is then run with ONNX Runtime on fresh random inputs of other
sizes than at export and compared with samkit's PyTorch path; the largest absolute difference
is printed and stored with the graphs' inputs and outputs in `DIR/onnx.json`. See
docs/export-onnx.md:

    samkit export-onnx sam --variant tiny-synth --out onnx/sam
    samkit export-onnx ssp-sam --run runs/ssp --out onnx/ssp
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samkit.cli._run import write_json

if TYPE_CHECKING:
    from torch import Tensor

    from samkit.backbones.sam import SamLike
    from samkit.systems.ssp_sam import SSPSAM

__all__ = ["add_parser", "run_export_onnx"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `export-onnx` command to the `samkit` sub-parsers."""
    p = sub.add_parser(
        "export-onnx",
        help="export SAM or SSP-SAM's prompt path to ONNX",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", choices=("sam", "ssp-sam"), help="what to export")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--variant", default="tiny-synth", help="SAM variant (sam; default tiny-synth)")
    p.add_argument("--checkpoint", type=Path, default=None, help="SAM weights (sam)")
    p.add_argument("--run", type=Path, default=None, help="run folder of `samkit train` (ssp-sam)")
    p.add_argument("--preset", default=None, help="SSP-SAM preset instead of --run (ssp-sam)")
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="image size the encoder graph takes (default: the square model input)",
    )
    p.add_argument(
        "--original-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="decoder also outputs masks at this size (sam)",
    )
    p.add_argument("--boxes", action="store_true", help="decoder takes a box per prompt (sam)")
    p.add_argument("--single-mask", action="store_true", help="decoder returns 1 mask, not 3")
    p.add_argument("--no-encoder", action="store_true", help="skip the SAM encoder graph")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    p.set_defaults(handler=run_export_onnx)
    return p


def run_export_onnx(args: argparse.Namespace) -> int:
    """Run `samkit export-onnx`; print each graph, its export time and its check."""
    from samkit.export import OPSET

    image_size = tuple(args.image_size) if args.image_size else None
    original_size = tuple(args.original_size) if args.original_size else None
    jobs: list[tuple[str, Callable[[Path], Path], Callable[[Path], float]]] = []
    if args.target == "sam":
        if args.run is not None or args.preset is not None:
            raise ValueError("--run and --preset are for ssp-sam; use --variant for sam")
        from samkit.backbones import build_sam_backbone

        sam: Any = build_sam_backbone(args.variant, args.checkpoint)
        multimask = not args.single_mask
        jobs.append(_decoder_job(sam, args.boxes, multimask, original_size))
    else:
        if (args.run is None) == (args.preset is None):
            raise ValueError("ssp-sam: pass exactly one of --run RUN and --preset NAME")
        if args.checkpoint is not None or args.boxes or args.original_size or args.single_mask:
            raise ValueError("--checkpoint, --boxes, --original-size, --single-mask are for sam")
        model = _load_ssp_sam(args.run, args.preset)
        sam = model.sam
        jobs.append(_ssp_sam_job(model))
    if not args.no_encoder:
        jobs.insert(0, _encoder_job(sam, image_size))
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"opset": OPSET, "graphs": {}}
    for name, export, check in jobs:
        start = time.perf_counter()
        path = export(args.out / f"{name}.onnx")
        seconds = time.perf_counter() - start
        entry: dict[str, Any] = {"file": path.name, "export_seconds": round(seconds, 1)}
        entry.update(_signature(path) if not args.no_check else {})
        line = f"wrote {path} ({seconds:.1f} s)"
        if not args.no_check:
            diff = check(path)
            entry["max_abs_diff"] = diff
            line += f"; max |ONNX Runtime - PyTorch| = {diff:.2e}"
        report["graphs"][name] = entry
        print(line)
    write_json(args.out / "onnx.json", report)
    print(f"wrote {args.out / 'onnx.json'}")
    return 0


def _load_ssp_sam(run: Path | None, preset: str | None) -> SSPSAM:
    from samkit.systems.ssp_sam import SSPSAM, build_ssp_sam

    if preset is not None:
        return build_ssp_sam(preset)
    assert run is not None
    from samkit.cli._run import RunInfo
    from samkit.cli.predict import load_run

    model = load_run(run, RunInfo.read(run))
    if not isinstance(model, SSPSAM):
        raise ValueError(f"{run}: holds a {type(model).__name__}, not an SSP-SAM run")
    return model


def _signature(path: Path) -> dict[str, Any]:
    """Names, shapes (axis names for dynamic axes) and types of a graph's inputs and outputs."""
    from samkit.export.onnx import _require

    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {
        "inputs": [[i.name, list(i.shape), i.type] for i in session.get_inputs()],
        "outputs": [[o.name, list(o.shape), o.type] for o in session.get_outputs()],
    }


def _diff(out: dict[str, Tensor], ref: dict[str, Tensor]) -> float:
    return max(float((out[k].double() - v.double()).abs().max()) for k, v in ref.items())


def _encoder_job(
    sam: SamLike, image_size: tuple[int, ...] | None
) -> tuple[str, Callable[[Path], Path], Callable[[Path], float]]:
    import torch

    from samkit.export import export_sam_encoder, run_onnx

    size = image_size or (sam.img_size, sam.img_size)

    def export(path: Path) -> Path:
        return export_sam_encoder(sam, path, image_size=image_size)  # type: ignore[arg-type]

    def check(path: Path) -> float:
        images = torch.rand(3, 3, *size)
        with torch.no_grad():
            ref = sam.encode(images).embeddings
        return _diff(run_onnx(path, {"images": images}), {"image_embeddings": ref})

    return "sam_encoder", export, check


def _decoder_job(
    sam: SamLike, boxes: bool, multimask: bool, original_size: tuple[int, ...] | None
) -> tuple[str, Callable[[Path], Path], Callable[[Path], float]]:
    import torch

    from samkit.export import export_sam_decoder, run_onnx
    from samkit.types import ImageEmbedding, Prompts

    def export(path: Path) -> Path:
        return export_sam_decoder(
            sam,
            path,
            boxes=boxes,
            multimask=multimask,
            original_size=original_size,  # type: ignore[arg-type]
        )

    def check(path: Path) -> float:
        b, k, n, side = 1, 4, 3, sam.img_size
        emb = torch.randn(b, sam.prompt_dim, *sam.embedding_size)
        coords = torch.rand(b, k, n, 2) * side
        labels = torch.randint(0, 2, (b, k, n)).float()
        feeds = {"image_embeddings": emb, "point_coords": coords, "point_labels": labels}
        box = None
        if boxes:
            box = (torch.rand(b, k, 2, 2).sort(dim=2).values * side).reshape(b, k, 4)
            feeds["boxes"] = box
        orig = tuple(original_size) if original_size else (side, side)
        input_size = sam.preprocess(torch.zeros(1, 3, *orig))[1]
        embedding = ImageEmbedding(emb, input_size, orig)  # type: ignore[arg-type]
        with torch.no_grad():
            sparse, dense = sam.embed_prompts(Prompts(points=coords, labels=labels, boxes=box))
            pred = sam.decode(
                embedding, sparse, dense, multimask=multimask, upsample=bool(original_size)
            )
        ref = {"low_res_logits": pred.low_res_logits, "iou_scores": pred.iou_scores}
        if pred.logits is not None:
            ref["masks"] = pred.logits
        return _diff(run_onnx(path, feeds), ref)

    return "sam_decoder", export, check


def _ssp_sam_job(model: SSPSAM) -> tuple[str, Callable[[Path], Path], Callable[[Path], float]]:
    import torch

    from samkit.export import export_ssp_sam_prompt, run_onnx

    def export(path: Path) -> Path:
        return export_ssp_sam_prompt(model, path)

    def check(path: Path) -> float:
        exprs = ["the red circle", "all squares left of the big blue triangle", "x"]
        images = torch.rand(len(exprs), 3, 96, 128)
        with torch.no_grad():
            ref = model(images, exprs)
            text = model.encode_text(exprs)
            clip = model.encode_clip(images)
            emb = model.sam.encode(images)
        assert text.token_states is not None and text.padding_mask is not None
        feeds = {
            "clip_features": clip.features,
            "clip_cls": clip.cls,
            "text_embeddings": text.embeddings,
            "token_states": text.token_states,
            "padding_mask": text.padding_mask,
            "image_embeddings": emb.embeddings,
        }
        out = run_onnx(path, feeds)
        names = ("low_res_logits", "iou_scores", "boxes", "prompts")
        diff = _diff(out, {k: getattr(ref, k) for k in names})
        if not torch.equal(out["has_target"], ref.has_target):
            raise RuntimeError(f"{path}: has_target differs from PyTorch")
        return diff

    return "ssp_sam_prompt", export, check
