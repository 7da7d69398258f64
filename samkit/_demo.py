"""Steps of `samkit demo`: each takes the shared context and returns the files it wrote."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from samkit._io import write_atomic
from samkit.data.synthetic import CLASS_NAMES, Scene, generate_scene
from samkit.visualization import (
    PALETTE,
    annotate,
    colorize_labels,
    draw_points,
    make_grid,
    overlay_masks,
    save_image,
)

CLASS_LEGEND: list[tuple[str, tuple[int, int, int]]] = [
    (name, (int(PALETTE[i][0]), int(PALETTE[i][1]), int(PALETTE[i][2])))
    for i, name in enumerate(CLASS_NAMES)
]
"""Legend of the semantic colours: class `i` is drawn in `PALETTE[i]`."""


def _save(tiles: list[Any], ncols: int, path: Path, title: str, legend: bool = False) -> Path:
    """Grid the tiles, add the title (and the class legend) and write the PNG."""
    grid = make_grid(tiles, ncols=ncols)
    save_image(annotate(grid, title=title, legend=CLASS_LEGEND if legend else []), path)
    return path


TimingSink = Callable[[str, str, float], None]


@dataclass
class DemoContext:
    """What the demo steps share: arguments, device, scenes and lazily built backbones."""

    args: argparse.Namespace
    device: torch.device
    record: TimingSink
    scenes: list[Scene]
    _cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, args: argparse.Namespace, record: TimingSink) -> DemoContext:
        """Generate the scenes and return a fresh context."""
        scenes = [generate_scene(args.seed + i, size=args.size) for i in range(args.num_scenes)]
        return cls(args=args, device=torch.device(args.device), record=record, scenes=scenes)

    @property
    def out(self) -> Path:
        """Output folder."""
        return Path(self.args.out)

    @property
    def images(self) -> Tensor:
        """All scene images, `(B, 3, H, W)` in `[0, 1]`, on the demo device."""
        return torch.stack([s.image for s in self.scenes]).to(self.device)

    @contextmanager
    def timed(self, part: str, what: str) -> Iterator[None]:
        """Record the wall time of a block (synchronising CUDA first)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.record(part, what, time.perf_counter() - t0)

    def sam(self) -> Any:
        """The SAM backbone (shipped tiny-synth unless a checkpoint was given), built once."""
        if "sam" not in self._cache:
            from samkit.backbones.sam import build_sam_backbone

            ckpt = self.args.sam_checkpoint
            variant = self.args.sam_variant or ("vit_h" if ckpt is not None else "tiny-synth")
            self._cache["sam"] = build_sam_backbone(variant, ckpt).to(self.device).eval()
        return self._cache["sam"]

    def system_preset(self) -> str:
        """The systems' preset: `tiny-synth` (shipped backbones), or `tiny` with random ones."""
        random = self.args.sam_variant == "tiny" or self.args.clip_model == "tiny"
        return "tiny" if random else "tiny-synth"

    def clip(self) -> Any:
        """The CLIP backbone (shipped tiny-synth unless a checkpoint was given), built once."""
        if "clip" not in self._cache:
            from samkit.backbones.clip import build_clip_backbone

            ckpt = self.args.clip_checkpoint
            name = self.args.clip_model or ("ViT-B-16" if ckpt is not None else "tiny-synth")
            self._cache["clip"] = build_clip_backbone(name, ckpt).to(self.device).eval()
        return self._cache["clip"]


def step_scenes(ctx: DemoContext) -> list[Path]:
    """Write the generated scenes next to their semantic maps."""
    tiles: list[np.ndarray | Tensor] = []
    for scene in ctx.scenes:
        tiles += [scene.image, colorize_labels(scene.semantic)]
    title = "generated scenes | ground-truth semantic maps"
    return [_save(tiles, 2, ctx.out / "scenes.png", title, legend=True)]


@torch.no_grad()
def step_sam_points(ctx: DemoContext, grid: int = 8, keep: int = 6) -> list[Path]:
    """Prompt SAM with a point grid and overlay the best-scored masks of each scene."""
    sam = ctx.sam()
    images = ctx.images
    size = (images.shape[-2], images.shape[-1])
    with ctx.timed("SAM", f"encode {images.shape[0]} images"):
        emb = sam.encode(images)
    cells = (torch.arange(grid, dtype=torch.float32, device=ctx.device) + 0.5) / grid
    ys, xs = torch.meshgrid(cells * size[0], cells * size[1], indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], -1)  # (N, 2) original frame
    points = sam.transform_coords(points, size)[None].expand(images.shape[0], -1, -1)
    with ctx.timed("SAM", f"decode {grid * grid} point prompts per image"):
        pred = sam.predict_points(emb, points, multimask=True).best()
    tiles: list[np.ndarray | Tensor] = []
    for b, scene in enumerate(ctx.scenes):
        top = pred.iou_scores[b, :, 0].topk(min(keep, grid * grid)).indices
        low = pred.low_res_logits[b, top, 0]
        masks = sam.postprocess_masks(low, emb.input_size, emb.original_size) > sam.mask_threshold
        pts = torch.stack([xs.flatten(), ys.flatten()], -1)[top]
        tiles.append(draw_points(overlay_masks(scene.image, masks.cpu()), pts.cpu()))
    title = f"SAM: the {keep} best-scored masks of {grid * grid} point prompts, and their points"
    return [_save(tiles, len(tiles), ctx.out / "sam_points.png", title)]


@torch.no_grad()
def step_clip_similarity(ctx: DemoContext) -> list[Path]:
    """Label every CLIP patch with its most similar class name (the value path SAM-MI uses)."""
    clip = ctx.clip()
    images = ctx.images
    with ctx.timed("CLIP", f"encode {len(CLASS_NAMES)} class names"):
        text = clip.encode_text(list(CLASS_NAMES), templates=["a photo of a {}."])
    with ctx.timed("CLIP", "dense features (value path)"):
        dense = clip.encode_dense(images, mode="value").features  # (B, C, h, w)
    dense = F.normalize(dense, dim=1)
    logits = torch.einsum("bchw,tc->bthw", dense, text.embeddings.to(dense))
    logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    labels = logits.argmax(1).cpu()
    tiles: list[np.ndarray | Tensor] = []
    for b, scene in enumerate(ctx.scenes):
        tiles += [scene.image, colorize_labels(labels[b])]
    title = "CLIP zero-shot: the most similar class name of every patch"
    return [_save(tiles, 2, ctx.out / "clip_similarity.png", title, legend=True)]


@torch.no_grad()
def step_ssp_sam(ctx: DemoContext) -> list[Path]:
    """SSP-SAM (untrained heads): segment each scene's first referring expression."""
    from samkit.systems.ssp_sam import build_ssp_sam

    model = build_ssp_sam(ctx.system_preset()).to(ctx.device).eval()
    expressions = [s.expressions[0].text for s in ctx.scenes]
    with ctx.timed("SSP-SAM", f"forward {len(expressions)} expressions"):
        out = model(ctx.images, expressions, upsample=True)
    assert out.logits is not None
    masks = (out.logits[:, 0] > 0).cpu()
    tiles = [
        annotate(overlay_masks(s.image, masks[b : b + 1]), title=f'"{expressions[b]}"', font_size=9)
        for b, s in enumerate(ctx.scenes)
    ]
    title = "SSP-SAM (untrained heads): masks of the expressions"
    path = _save(tiles, len(tiles), ctx.out / "ssp_sam.png", title)
    write_atomic(ctx.out / "ssp_sam_expressions.txt", ("\n".join(expressions) + "\n").encode())
    return [path]


@torch.no_grad()
def step_sam_cp(ctx: DemoContext) -> list[Path]:
    """SAM-CP (untrained heads): SAM's patches, composed into a panoptic map."""
    from samkit.systems.sam_cp import build_sam_cp

    model = build_sam_cp(ctx.system_preset(), build_proposer=True).to(ctx.device).eval()
    assert model.proposer is not None
    with ctx.timed("SAM-CP", "SAM patch proposals"):
        patches = model.proposer(ctx.images)
    with ctx.timed("SAM-CP", "predict (affinity decoder, merging, fusion)"):
        results = model.predict(ctx.images, patches)
    tiles: list[np.ndarray | Tensor] = []
    for scene, res, p in zip(ctx.scenes, results, patches, strict=True):
        tiles += [overlay_masks(scene.image, p.masks.cpu()), colorize_labels(res.panoptic.cpu())]
    title = "SAM-CP: SAM patches | panoptic (untrained)"
    return [_save(tiles, 2, ctx.out / "sam_cp.png", title)]


@torch.no_grad()
def step_sam_mi(ctx: DemoContext) -> list[Path]:
    """SAM-MI (untrained heads): open-vocabulary labels with the sampled SAM prompts."""
    from samkit.systems.sam_mi import build_sam_mi

    model = build_sam_mi(ctx.system_preset()).to(ctx.device).eval()
    images = ctx.images
    with ctx.timed("SAM-MI", f"forward over {len(CLASS_NAMES)} class names"):
        out = model(images, list(CLASS_NAMES))
    logits = F.interpolate(out.logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    labels = logits.argmax(1).cpu()
    scale = max(images.shape[-2:]) / model.sam.img_size
    tiles: list[np.ndarray | Tensor] = []
    for b, scene in enumerate(ctx.scenes):
        pts = (out.points[b][out.point_valid[b]] * scale).cpu()
        tiles += [draw_points(scene.image, pts), colorize_labels(labels[b])]
    title = "SAM-MI: TSPP prompts | labels (untrained)"
    return [_save(tiles, 2, ctx.out / "sam_mi.png", title, legend=True)]


STEPS: list[tuple[str, Callable[[DemoContext], list[Path]]]] = [
    ("scenes", step_scenes),
    ("SAM point prompts", step_sam_points),
    ("CLIP dense similarity", step_clip_similarity),
    ("SSP-SAM", step_ssp_sam),
    ("SAM-CP", step_sam_cp),
    ("SAM-MI", step_sam_mi),
]
