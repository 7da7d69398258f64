"""Linear probes: what do the frozen random-weight backbones tell about synthetic objects?

For every feature-grid cell covered more than half by one object, a linear classifier is fit on
training scenes to predict the object's colour and its shape from that cell's feature vector
alone, and scored on validation scenes (chance: the majority class). This explains the limits of
the CPU learning runs on synthetic scenes (see docs/systems/ssp-sam.md): colour is linearly
readable from a single cell, shape is not, so a model has to learn shape from the layout of
several cells.

With `--finetune-steps N`, a fifth row fine-tunes the tiny CLIP's image tower (at the 64 px
canvas) for `N` steps on exactly these per-cell colour and shape labels, then probes it frozen:
how much shape can direct supervision teach it in a CPU budget?

    python examples/probe_features.py
    python examples/probe_features.py --train-scenes 4000 --finetune-steps 1500
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from samkit.backbones.sam import build_sam_backbone
from samkit.data.datasets import SPLIT_OFFSETS
from samkit.data.synthetic import COLOR_NAMES, THING_CLASSES, Scene, generate_scene
from samkit.systems.ssp_sam import build_ssp_sam


def cell_labels(scenes: Sequence[Scene], grid: int) -> tuple[Tensor, Tensor]:
    """Colour and shape id of the object covering > 50% of each cell, -1 elsewhere: (S, g*g)."""
    colors, shapes = [], []
    for scene in scenes:
        if len(scene.instance_masks) == 0:
            colors.append(torch.full((grid * grid,), -1))
            shapes.append(torch.full((grid * grid,), -1))
            continue
        cover = F.adaptive_avg_pool2d(scene.instance_masks.float()[None], grid)[0].flatten(1)
        best, owner = cover.max(0)
        color, shape = scene.instance_colors[owner].clone(), scene.instance_classes[owner].clone()
        color[best < 0.5] = -1
        shape[best < 0.5] = -1
        colors.append(color)
        shapes.append(shape)
    return torch.stack(colors), torch.stack(shapes)


def linear_probe(
    x: Tensor, y: Tensor, x_val: Tensor, y_val: Tensor, classes: int
) -> tuple[float, float]:
    """(validation accuracy, majority-class accuracy) of a standardised linear classifier."""
    x, y, x_val, y_val = x[y >= 0], y[y >= 0], x_val[y_val >= 0], y_val[y_val >= 0]
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_val = (x - mean) / std, (x_val - mean) / std
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((head(x_val).argmax(1) == y_val).float().mean())
    majority = float((y_val == y_val.mode().values).float().mean())
    return acc, majority


def finetune_clip_cells(
    scenes: Sequence[Scene], steps: int, *, lr: float = 2e-3, batch_size: int = 32
) -> Callable[[Tensor], Tensor]:
    """Train the tiny CLIP's image tower on per-cell colour and shape labels; return its extractor.

    Two linear heads on the CLIP-Surgery features (64 px canvas) predict the colour and the shape
    of the object covering each cell (cross-entropy, other cells ignored); random horizontal and
    vertical flips; AdamW with a 50-step warm-up and a cosine decay.
    """
    model = build_ssp_sam("tiny", clip_trainable="visual")
    images = torch.stack([s.image for s in scenes])
    grid = model.config.clip_image_size // model.clip.patch_size
    colours, shapes = (y.view(-1, grid, grid) for y in cell_labels(scenes, grid))
    dim = model.clip.embed_dim
    heads = torch.nn.ModuleList(
        [torch.nn.Linear(dim, len(COLOR_NAMES)), torch.nn.Linear(dim, len(THING_CLASSES))]
    )
    params = [p for p in model.clip.parameters() if p.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = (
                lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
            )
        idx = torch.randint(len(scenes), (batch_size,), generator=gen)
        x, targets = images[idx], [colours[idx], shapes[idx]]
        for axis in (-1, -2):
            if bool(torch.rand((), generator=gen) < 0.5):
                x, targets = x.flip(axis), [t.flip(axis) for t in targets]
        feats = model.encode_clip(x).features.permute(0, 2, 3, 1)
        loss = sum(
            F.cross_entropy(head(feats).flatten(0, 2), t.flatten(), ignore_index=-1)
            for head, t in zip(heads, targets, strict=True)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return lambda im: model.encode_clip(im).features


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-scenes", type=int, default=800)
    p.add_argument("--val-scenes", type=int, default=200)
    p.add_argument("--size", type=int, default=128)
    p.add_argument(
        "--finetune-steps", type=int, default=0, help="also probe a CLIP trained on cell labels"
    )
    args = p.parse_args(argv)
    torch.manual_seed(0)
    train = [generate_scene(i, size=args.size) for i in range(args.train_scenes)]
    val = [generate_scene(SPLIT_OFFSETS["val"] + i, size=args.size) for i in range(args.val_scenes)]

    def images(scenes: Sequence[Scene]) -> Tensor:
        return torch.stack([s.image for s in scenes])

    extractors: dict[str, Callable[[Tensor], Tensor]] = {}
    for canvas in (64, 128):
        model = build_ssp_sam("tiny", clip_image_size=canvas)
        extractors[f"CLIP-Surgery, {canvas} px canvas"] = lambda im, m=model: (
            m.encode_clip(im).features
        )
    for variant in ("tiny", "small"):
        sam = build_sam_backbone(variant)
        extractors[f"SAM {variant} embedding"] = lambda im, s=sam: s.encode(im).embeddings
    if args.finetune_steps > 0:
        name = f"CLIP 64 px, {args.finetune_steps} steps on cells"
        extractors[name] = finetune_clip_cells(train, args.finetune_steps)
    results = {}
    print(f"{'features':<32}{'grid':>6}{'colour':>9}{'chance':>8}{'shape':>8}{'chance':>8}")
    for name, extract in extractors.items():
        with torch.no_grad():
            f_train, f_val = extract(images(train)), extract(images(val))
        grid = f_train.shape[-1]
        c_train, s_train = cell_labels(train, grid)
        c_val, s_val = cell_labels(val, grid)
        flat = [f.flatten(2).transpose(1, 2).reshape(-1, f.shape[1]) for f in (f_train, f_val)]
        colour = linear_probe(
            flat[0], c_train.flatten(), flat[1], c_val.flatten(), len(COLOR_NAMES)
        )
        shape = linear_probe(
            flat[0], s_train.flatten(), flat[1], s_val.flatten(), len(THING_CLASSES)
        )
        results[name] = {"colour": colour, "shape": shape}
        print(
            f"{name:<32}{grid:>6}{colour[0]:>9.3f}{colour[1]:>8.3f}{shape[0]:>8.3f}{shape[1]:>8.3f}"
        )
    return results


if __name__ == "__main__":
    main()
