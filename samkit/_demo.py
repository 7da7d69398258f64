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
from samkit.visualization import colorize_labels, draw_points, make_grid, overlay_masks, save_image

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
        """The SAM backbone (tiny unless a checkpoint was given), built once."""
        if "sam" not in self._cache:
            from samkit.backbones.sam import build_sam_backbone

            ckpt = self.args.sam_checkpoint
            variant = self.args.sam_variant or ("vit_h" if ckpt is not None else "tiny")
            self._cache["sam"] = build_sam_backbone(variant, ckpt).to(self.device).eval()
        return self._cache["sam"]

    def clip(self) -> Any:
        """The CLIP backbone (tiny unless a checkpoint was given), built once."""
        if "clip" not in self._cache:
            from samkit.backbones.clip import build_clip_backbone

            ckpt = self.args.clip_checkpoint
            name = self.args.clip_model or ("ViT-B-16" if ckpt is not None else "tiny")
            self._cache["clip"] = build_clip_backbone(name, ckpt).to(self.device).eval()
        return self._cache["clip"]


def step_scenes(ctx: DemoContext) -> list[Path]:
    """Write the generated scenes next to their semantic maps."""
    tiles: list[np.ndarray | Tensor] = []
    for scene in ctx.scenes:
        tiles += [scene.image, colorize_labels(scene.semantic)]
    path = ctx.out / "scenes.png"
    save_image(make_grid(tiles, ncols=2), path)
    return [path]


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
    path = ctx.out / "sam_points.png"
    save_image(make_grid(tiles, ncols=len(tiles)), path)
    return [path]


@torch.no_grad()
def step_clip_similarity(ctx: DemoContext) -> list[Path]:
    """Label every CLIP patch with its most similar class name (CLIP-Surgery features)."""
    clip = ctx.clip()
    images = ctx.images
    with ctx.timed("CLIP", f"encode {len(CLASS_NAMES)} class names"):
        text = clip.encode_text(list(CLASS_NAMES), templates=["a photo of a {}."])
    with ctx.timed("CLIP", "dense features (surgery)"):
        dense = clip.encode_dense(images, mode="surgery").features  # (B, C, h, w)
    dense = F.normalize(dense, dim=1)
    logits = torch.einsum("bchw,tc->bthw", dense, text.embeddings.to(dense))
    logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    labels = logits.argmax(1).cpu()
    tiles: list[np.ndarray | Tensor] = []
    for b, scene in enumerate(ctx.scenes):
        tiles += [scene.image, colorize_labels(labels[b])]
    path = ctx.out / "clip_similarity.png"
    save_image(make_grid(tiles, ncols=2), path)
    return [path]


@torch.no_grad()
def step_ssp_sam(ctx: DemoContext) -> list[Path]:
    """SSP-SAM (tiny, untrained heads): segment each scene's first referring expression."""
    from samkit.systems.ssp_sam import build_ssp_sam

    model = build_ssp_sam("tiny").to(ctx.device).eval()
    expressions = [s.expressions[0].text for s in ctx.scenes]
    with ctx.timed("SSP-SAM", f"forward {len(expressions)} expressions"):
        out = model(ctx.images, expressions, upsample=True)
    assert out.logits is not None
    masks = (out.logits[:, 0] > 0).cpu()
    tiles = [overlay_masks(s.image, masks[b : b + 1]) for b, s in enumerate(ctx.scenes)]
    path = ctx.out / "ssp_sam.png"
    save_image(make_grid(tiles, ncols=len(tiles)), path)
    write_atomic(ctx.out / "ssp_sam_expressions.txt", ("\n".join(expressions) + "\n").encode())
    return [path]


@torch.no_grad()
def step_sam_cp(ctx: DemoContext) -> list[Path]:
    """SAM-CP (tiny, untrained heads): compose SAM patches into a panoptic map."""
    from samkit.systems.sam_cp import build_sam_cp

    model = build_sam_cp("tiny", build_proposer=True).to(ctx.device).eval()
    assert model.proposer is not None
    with ctx.timed("SAM-CP", "SAM patch proposals"):
        patches = model.proposer(ctx.images)
    with ctx.timed("SAM-CP", "predict (affinity decoder, merging, fusion)"):
        results = model.predict(ctx.images, patches)
    tiles: list[np.ndarray | Tensor] = []
    for scene, res in zip(ctx.scenes, results, strict=True):
        tiles += [scene.image, colorize_labels(res.panoptic.cpu())]
    path = ctx.out / "sam_cp.png"
    save_image(make_grid(tiles, ncols=2), path)
    return [path]


@torch.no_grad()
def step_sam_mi(ctx: DemoContext) -> list[Path]:
    """SAM-MI (tiny, untrained heads): open-vocabulary labels with the sampled SAM prompts."""
    from samkit.systems.sam_mi import build_sam_mi

    model = build_sam_mi("tiny").to(ctx.device).eval()
    images = ctx.images
    with ctx.timed("SAM-MI", f"forward over {len(CLASS_NAMES)} class names"):
        out = model(images, list(CLASS_NAMES))
    logits = F.interpolate(out.logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    labels = logits.argmax(1).cpu()
    scale = max(images.shape[-2:]) / model.sam.img_size
    tiles: list[np.ndarray | Tensor] = []
    for b, scene in enumerate(ctx.scenes):
        pts = (out.points[b][out.point_valid[b]] * scale).cpu()
        tiles += [scene.image, draw_points(colorize_labels(labels[b]), pts)]
    path = ctx.out / "sam_mi.png"
    save_image(make_grid(tiles, ncols=2), path)
    return [path]


STEPS: list[tuple[str, Callable[[DemoContext], list[Path]]]] = [
    ("scenes", step_scenes),
    ("SAM point prompts", step_sam_points),
    ("CLIP dense similarity", step_clip_similarity),
    ("SSP-SAM", step_ssp_sam),
    ("SAM-CP", step_sam_cp),
    ("SAM-MI", step_sam_mi),
]
