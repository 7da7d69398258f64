"""ONNX export of SAM's encoder and prompt decoder, and of SSP-SAM's prompt path.

Each graph is traced with `torch.export` and translated by `torch.onnx.export(..., dynamo=True)`
around samkit's own tensor path, so that what ONNX Runtime computes is what
`SamBackbone.encode`, `SamBackbone.embed_prompts` + `SamBackbone.decode` and `SSPSAM.prompt` +
`SSPSAM.decode` compute (the measured differences are in `docs/export-onnx.md`):

    sam_encoder     images (B, 3, H, W) in [0, 1] -> image_embeddings (B, D, h, w)
    sam_decoder     image_embeddings (B, D, h, w), point_coords (B, K, N, 2),
                    point_labels (B, K, N) [, boxes (B, K, 4)]
                    -> low_res_logits (B, K, M, 4h, 4w), iou_scores (B, K, M)
                       [, masks (B, K, M, H, W)]
    ssp_sam_prompt  clip_features (B, C_e, g, g), clip_cls (B, C_e), text_embeddings (B, C_e),
                    token_states (B, L, C_t), padding_mask (B, L), image_embeddings (B, D, h, w)
                    -> low_res_logits (B, 1, 4h, 4w), iou_scores (B, 1), boxes (B, 4),
                       has_target (B,), prompts (B, Q, D) [, target_logits (B,)]

`B`, `K` and `N` are dynamic axes (`torch.export.Dim`): one file serves any number of images,
prompts and points. Image sizes and SSP-SAM's text length `L` are fixed at export time.

Needs the `onnx` extra (`pip install "samkit[onnx]"`: onnx, onnxscript, onnxruntime).
"""

# b - images in a batch (B)
# k - prompts per image (K)
# n - points per prompt (N)
# l - text tokens (L)

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from samkit._io import fsync_dir, write_atomic
from samkit.types import ImageEmbedding, Prompts

if TYPE_CHECKING:
    from samkit.backbones.sam import SamLike
    from samkit.systems.ssp_sam import SSPSAM

__all__ = [
    "OPSET",
    "export_sam_decoder",
    "export_sam_encoder",
    "export_ssp_sam_prompt",
    "run_onnx",
]

OPSET = 18
"""ONNX opset of every exported graph (default opset domain `ai.onnx`)."""

_PROTOBUF_LIMIT = 2**31 - 1  # bytes; larger models keep their weights in `<file>.data`


def _require(module: str) -> ModuleType:
    """Import an ONNX package, or raise an `ImportError` naming the `onnx` extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs the optional dependency {module!r}, which could not be imported "
            f'({err}). Install it with: pip install "samkit[onnx]"'
        ) from err


# ---------------------------------------------------------------------------- graph modules


class _SamEncoderGraph(nn.Module):
    """`SamBackbone.encode` on float images of one fixed size: preprocess + image encoder."""

    def __init__(self, sam: SamLike) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, images: Tensor) -> Tensor:
        return self.sam.encode(images).embeddings


class _SamDecoderGraph(nn.Module):
    """`SamBackbone.embed_prompts` + `SamBackbone.decode` on point and/or box prompts."""

    def __init__(
        self,
        sam: SamLike,
        *,
        multimask: bool,
        original_size: tuple[int, int] | None,
    ) -> None:
        super().__init__()
        self.sam = sam
        self.multimask = multimask
        side = int(sam.img_size)
        self.original_size = original_size or (side, side)
        self.input_size = (
            (side, side)
            if original_size is None
            else sam.preprocess(torch.zeros(1, 3, *original_size, device=_on(sam)[0]))[1]  # type: ignore[arg-type]
        )
        self.upsample = original_size is not None

    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        embedding = ImageEmbedding(image_embeddings, self.input_size, self.original_size)
        prompts = Prompts(points=point_coords, labels=point_labels, boxes=boxes)
        sparse, dense = self.sam.embed_prompts(prompts)
        pred = self.sam.decode(
            embedding, sparse, dense, multimask=self.multimask, upsample=self.upsample
        )
        if pred.logits is None:
            return pred.low_res_logits, pred.iou_scores
        return pred.low_res_logits, pred.iou_scores, pred.logits


class _SSPSAMPromptGraph(nn.Module):
    """`SSPSAM.prompt_from_tensors` + `SSPSAM.decode` (no upsampling)."""

    def __init__(self, model: SSPSAM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        clip_features: Tensor,
        clip_cls: Tensor,
        text_embeddings: Tensor,
        token_states: Tensor,
        padding_mask: Tensor,
        image_embeddings: Tensor,
    ) -> tuple[Tensor, ...]:
        model = self.model
        prompts = model.prompt_from_tensors(
            clip_features, clip_cls, text_embeddings, token_states, padding_mask
        )
        side = int(model.sam.img_size)
        embedding = ImageEmbedding(image_embeddings, (side, side), (side, side))
        out = model.decode(embedding, prompts)
        heads = (out.low_res_logits, out.iou_scores, out.boxes, out.has_target, out.prompts)
        if out.target_logits is None:
            return heads
        return (*heads, out.target_logits)


# ---------------------------------------------------------------------------- export core


def _axis_names(program: torch.export.ExportedProgram, dynamic: Mapping[str, Any]) -> dict:
    """torch.export's symbols (`s34`) of the dynamic input axes -> their `Dim` names (`B`)."""
    names: dict[str, str] = {}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in dynamic:
            shape = node.meta["val"].shape
            for axis, dim in dynamic[node.name].items():
                names[str(shape[axis])] = str(dim.__name__)
    return names


def _save(program: Any, path: Path, axis_names: Mapping[str, str]) -> None:
    """Write an `ONNXProgram` atomically: the `.onnx` file (and `.onnx.data` when > 2 GB).

    Symbolic axes are renamed from torch.export's symbols to the `Dim` names (`B`, `K`, `N`).
    """
    import re

    onnx = _require("onnx")
    proto = program.model_proto
    if axis_names:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, axis_names)) + r")\b")
        graph = proto.graph
        for value in [*graph.input, *graph.output, *graph.value_info]:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param:
                    dim.dim_param = pattern.sub(lambda m: axis_names[m.group(1)], dim.dim_param)
    if proto.ByteSize() < _PROTOBUF_LIMIT:
        write_atomic(path, proto.SerializeToString())
        return
    # Too large for one protobuf: the weights go to `<name>.data` beside it. Both files are
    # written in a temporary folder next to `path` and renamed into place, the data first.
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        onnx.save_model(
            proto, str(staged), save_as_external_data=True, location=f"{path.name}.data"
        )
        for extra in sorted(Path(tmp).iterdir()):
            if extra != staged:
                os.replace(extra, path.parent / extra.name)
        os.replace(staged, path)
    fsync_dir(path.parent)


def _export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: str | os.PathLike[str],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic: Mapping[str, Mapping[int, Any]],
    opset: int,
) -> Path:
    """Trace `module` on `args` with the dynamo exporter and write the ONNX file."""
    _require("onnx")
    _require("onnxscript")
    out = Path(path)
    if out.suffix != ".onnx":
        raise ValueError(f"path: expected a file name ending in .onnx, got {str(path)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    dynamic_shapes = {name: dict(dynamic.get(name, {})) for name in input_names}
    kwargs = dict(zip(input_names, args, strict=True))
    modes = [(m, m.training) for m in module.modules()]  # restored exactly afterwards
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The GRU's flat weights are re-assigned while tracing: harmless for a frozen graph.
            warnings.filterwarnings(
                "ignore", message=r".*assigned during export", category=UserWarning
            )
            # torch.export first, so that an axis the code specialises raises here instead of
            # being fixed silently by the ONNX exporter's fallbacks
            program = torch.export.export(
                module, (), kwargs=kwargs, dynamic_shapes=dynamic_shapes, strict=False
            )
            warnings.filterwarnings("ignore", message=r".*axis name", category=UserWarning)
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                verbose=False,
            )
    finally:
        for m, mode in modes:
            m.training = mode
    if onnx_program is None:  # only the legacy exporter returns None
        raise RuntimeError("torch.onnx.export returned no program")
    _save(onnx_program, out, _axis_names(program, dynamic_shapes))
    return out


def _dims(*names: str) -> dict[str, Any]:
    return {n: torch.export.Dim(n, min=1) for n in names}


def _on(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


# ---------------------------------------------------------------------------- public API


def export_sam_encoder(
    sam: SamLike,
    path: str | os.PathLike[str],
    *,
    image_size: tuple[int, int] | None = None,
    opset: int = OPSET,
) -> Path:
    """Export SAM's preprocessing and image encoder (`SamBackbone.encode`) to ONNX.

    Graph: `images (B, 3, H, W)` float RGB in `[0, 1]` -> `image_embeddings (B, D, h, w)`.
    Resizing (long side to `img_size`, bilinear with antialiasing), normalisation and padding
    are inside the graph, so it takes the images as they are. `B` is dynamic; `H`, `W` are fixed
    to `image_size`.

    Args:
        sam: A SAM backbone (tested: `build_sam_backbone("tiny")`, `"tiny-synth"`).
        path: The `.onnx` file to write (atomically; parent folders are created).
        image_size: `(H, W)` of the images the graph takes; default the square model input
            `(img_size, img_size)` (no resizing inside the graph).
        opset: ONNX opset.

    Returns:
        The path written.

    Raises:
        ImportError: If onnx or onnxscript is missing (names `pip install "samkit[onnx]"`).
        ValueError: If `path` does not end in `.onnx` or `image_size` is not two positive ints.
    """
    side = int(sam.img_size)
    size = _check_size(image_size, name="image_size") if image_size is not None else (side, side)
    device, dtype = _on(sam)  # type: ignore[arg-type]
    images = torch.rand(2, 3, *size, device=device, dtype=dtype)
    return _export(
        _SamEncoderGraph(sam),
        (images,),
        path,
        input_names=["images"],
        output_names=["image_embeddings"],
        dynamic={"images": {0: _dims("B")["B"]}},
        opset=opset,
    )


def export_sam_decoder(
    sam: SamLike,
    path: str | os.PathLike[str],
    *,
    points: bool = True,
    boxes: bool = False,
    multimask: bool = True,
    original_size: tuple[int, int] | None = None,
    opset: int = OPSET,
) -> Path:
    """Export SAM's prompt encoder and mask decoder (`embed_prompts` + `decode`) to ONNX.

    Inputs (in this order; prompts in the SAM input frame, as `Prompts`):

    * `image_embeddings (B, D, h, w)` float, from the encoder graph or `sam.encode`;
    * with `points`: `point_coords (B, K, N, 2)` float `(x, y)` pixels and
      `point_labels (B, K, N)` float (1 foreground, 0 background, -1 padding). Without a box,
      SAM's padding point is appended inside the graph, as `SamBackbone.embed_prompts` does;
    * with `boxes`: `boxes (B, K, 4)` float `(x0, y0, x1, y1)` pixels.

    Outputs: `low_res_logits (B, K, M, 4h, 4w)`, `iou_scores (B, K, M)` and, with
    `original_size`, `masks (B, K, M, H, W)` (logits cropped and resized to that size; threshold
    at 0). `M` is 3 with `multimask`, else 1. `B`, `K` and `N` are dynamic axes.

    Unlike segment_anything's `SamOnnxModel` (one image, `K = 1`, boxes as points labelled 2
    and 3, the single-mask choice made inside the graph from the point count), the graph has
    samkit's batched semantics; for `B = K = 1` its outputs equal `SamOnnxModel`'s mask tokens
    1-3 (`multimask`) or token 0.

    Args:
        sam: A SAM backbone (tested: `build_sam_backbone("tiny")`, `"tiny-synth"`).
        path: The `.onnx` file to write (atomically; parent folders are created).
        points: Take point prompts.
        boxes: Take one box per prompt.
        multimask: Return SAM's 3 ambiguity masks instead of the single-mask token.
        original_size: `(H, W)` of the original images: also output `masks` at that size.
        opset: ONNX opset.

    Returns:
        The path written.

    Raises:
        ImportError: If onnx or onnxscript is missing (names `pip install "samkit[onnx]"`).
        ValueError: If neither `points` nor `boxes` is set, or `path` does not end in `.onnx`.
    """
    if not (points or boxes):
        raise ValueError("export_sam_decoder: expected points=True and/or boxes=True, got neither")
    if original_size is not None:
        original_size = _check_size(original_size, name="original_size")
    device, dtype = _on(sam)  # type: ignore[arg-type]
    b, k, n = 2, 3, 2  # example sizes (not 0 or 1, which torch.export would specialise)
    h, w = sam.embedding_size
    side = float(sam.img_size)
    args = [torch.randn(b, sam.prompt_dim, h, w, device=device, dtype=dtype)]
    names = ["image_embeddings"]
    d = _dims("B", "K", "N")
    dynamic: dict[str, dict[int, Any]] = {"image_embeddings": {0: d["B"]}}
    if points:
        args += [
            torch.rand(b, k, n, 2, device=device) * side,
            torch.ones(b, k, n, device=device),
        ]
        names += ["point_coords", "point_labels"]
        dynamic["point_coords"] = {0: d["B"], 1: d["K"], 2: d["N"]}
        dynamic["point_labels"] = {0: d["B"], 1: d["K"], 2: d["N"]}
    if boxes:
        corners = torch.rand(b, k, 2, 2, device=device).sort(dim=2).values * side
        args.append(corners.reshape(b, k, 4))
        names.append("boxes")
        dynamic["boxes"] = {0: d["B"], 1: d["K"]}
    outputs = ["low_res_logits", "iou_scores"] + (["masks"] if original_size else [])
    graph = _SamDecoderGraph(sam, multimask=multimask, original_size=original_size)
    return _export(
        graph,
        tuple(args),
        path,
        input_names=names,
        output_names=outputs,
        dynamic=dynamic,
        opset=opset,
    )


def export_ssp_sam_prompt(
    model: SSPSAM, path: str | os.PathLike[str], *, opset: int = OPSET
) -> Path:
    """Export SSP-SAM's prompt path (adapters, fusion, prompt generator, SAM decoding) to ONNX.

    The graph is `SSPSAM.prompt` followed by `SSPSAM.decode`: everything after the frozen
    encoders. Inputs are their outputs (`B` dynamic): `clip_features (B, C_e, g, g)` and
    `clip_cls (B, C_e)` (`model.encode_clip(images)`), `text_embeddings (B, C_e)`,
    `token_states (B, L, C_t)` and `padding_mask (B, L)` bool (`model.encode_text(...)`;
    tokenisation stays in Python), `image_embeddings (B, D, h, w)` (`model.sam.encode(images)`
    or the SAM encoder graph). `L` is fixed to the model's text length (`config.text_length`,
    else CLIP's 77), which `SSPSAM.tokenize` always produces: the linguistic adapter's GRU is
    unrolled over the tokens when traced. Outputs: `low_res_logits (B, 1, 4h, 4w)`,
    `iou_scores (B, 1)`, `boxes (B, 4)` (normalised cxcywh on the CLIP canvas),
    `has_target (B,)` bool, `prompts (B, Q, D)` and, with `config.target_head`,
    `target_logits (B,)`.

    Args:
        model: An `SSPSAM` with a SAM v1 backbone (tested: presets `tiny`, `tiny-synth`).
        path: The `.onnx` file to write (atomically; parent folders are created).
        opset: ONNX opset.

    Returns:
        The path written.

    Raises:
        ImportError: If onnx or onnxscript is missing (names `pip install "samkit[onnx]"`).
        ValueError: If `path` does not end in `.onnx`.
    """
    device, dtype = _on(model)
    clip = model.clip
    b = 2
    grid = model.config.clip_image_size // clip.patch_size
    length = model.config.text_length or clip.context_length
    h, w = model.sam.embedding_size
    padding = torch.zeros(b, length, dtype=torch.bool, device=device)
    padding[0, length // 2 :] = True  # one padded text, one full one
    args = (
        torch.randn(b, clip.embed_dim, grid, grid, device=device, dtype=dtype),
        torch.randn(b, clip.embed_dim, device=device, dtype=dtype),
        torch.randn(b, clip.embed_dim, device=device, dtype=dtype),
        torch.randn(b, length, clip.text_width, device=device, dtype=dtype),
        padding,
        torch.randn(b, model.sam.prompt_dim, h, w, device=device, dtype=dtype),
    )
    names = [
        "clip_features",
        "clip_cls",
        "text_embeddings",
        "token_states",
        "padding_mask",
        "image_embeddings",
    ]
    batch = _dims("B")["B"]
    dynamic: dict[str, dict[int, Any]] = {name: {0: batch} for name in names}
    outputs = ["low_res_logits", "iou_scores", "boxes", "has_target", "prompts"]
    if model.config.target_head:
        outputs.append("target_logits")
    return _export(
        _SSPSAMPromptGraph(model),
        args,
        path,
        input_names=names,
        output_names=outputs,
        dynamic=dynamic,
        opset=opset,
    )


def run_onnx(
    path: str | os.PathLike[str], inputs: Mapping[str, Tensor], *, timing: bool = False
) -> dict[str, Tensor]:
    """Run an exported graph with ONNX Runtime on the CPU.

    Args:
        path: The `.onnx` file.
        inputs: One tensor per graph input, by name (moved to the CPU).
        timing: Also return the run time in seconds under the key `"_seconds"` (a 0-d tensor).

    Returns:
        The outputs by name, as CPU tensors.

    Raises:
        ImportError: If onnxruntime is missing (names `pip install "samkit[onnx]"`).
        ValueError: If the input names differ from the graph's.
    """
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = [i.name for i in session.get_inputs()]
    if sorted(expected) != sorted(inputs):
        raise ValueError(f"inputs: expected the names {expected}, got {sorted(inputs)}")
    feeds = {name: inputs[name].detach().cpu().contiguous().numpy() for name in expected}
    start = time.perf_counter()
    values = session.run(None, feeds)
    seconds = time.perf_counter() - start
    out = {o.name: torch.from_numpy(v) for o, v in zip(session.get_outputs(), values, strict=True)}
    if timing:
        out["_seconds"] = torch.tensor(seconds)
    return out


def _check_size(size: Sequence[int], *, name: str) -> tuple[int, int]:
    values = tuple(size)
    if len(values) != 2 or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f"{name}: expected (H, W), two positive ints, got {size!r}")
    return int(values[0]), int(values[1])
