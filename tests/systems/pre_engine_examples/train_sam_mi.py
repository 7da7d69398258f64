"""Train SAM-MI (tiny preset) on synthetic semantic scenes, two stages, on the CPU.

Stage 1 trains the text-guided sparse point prompter (TSPP) alone with L_tspp; stage 2 trains
everything except SAM with L_ce + 0.1 L_tspp (TSPP at lr x 0.2; CLIP, all of it as in the tiny
preset, at lr x 0.01, the paper's CLIP-to-base lr ratio, where the preset itself uses x 1.0).
Evaluation reports mIoU on held-out scenes, the majority-class baseline, the fraction of the
32x32 grid TSPP samples per image, and the fraction of ground-truth segments larger than g_p
grid cells that receive at least one sampled point.

    python examples/train_sam_mi.py --steps1 400 --steps2 400 --out runs/sam_mi
    python examples/train_sam_mi.py --out runs/sam_mi --resume   # continue from the checkpoint
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from scipy.ndimage import label as connected_components
from tqdm import tqdm

from samkit._io import read_checkpoint
from samkit.data.datasets import SyntheticSemanticDataset
from samkit.losses.sam_mi import SAMMILoss
from samkit.metrics.semantic import SemanticIoU
from samkit.modules.tspp import masks_from_labels
from samkit.systems.sam_mi import SAMMI, build_sam_mi


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps1", type=int, default=400, help="stage-1 (TSPP only) steps")
    p.add_argument("--steps2", type=int, default=400, help="stage-2 (full model) steps")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", type=int, default=128, help="scene side in pixels")
    p.add_argument("--train-scenes", type=int, default=400)
    p.add_argument("--val-scenes", type=int, default=24)
    p.add_argument("--eval-every", type=int, default=200, help="evaluate every N steps (0: end)")
    p.add_argument("--lr", type=float, default=None, help="base lr (default: preset's)")
    p.add_argument("--clip-finetune", choices=["none", "attention_qv", "all"], default=None)
    p.add_argument(
        "--clip-lr-mult", type=float, default=0.01, help="stage-2 CLIP lr multiplier (paper's)"
    )
    p.add_argument("--tspp-lr-mult", type=float, default=0.2, help="stage-2 TSPP lr multiplier")
    p.add_argument("--clip-size", type=int, default=None, help="CLIP input side")
    p.add_argument("--out", type=str, default="runs/sam_mi", help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.*")
    p.add_argument("--clip-grad", type=float, default=1.0, help="grad-norm clip (0: off)")
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--no-progress", action="store_true", help="disable the tqdm bars")
    return p.parse_args(argv)


@dataclass
class Data:
    images: torch.Tensor  # (N, 3, H, W)
    labels: torch.Tensor  # (N, H, W)
    class_names: list[str]


def load_split(split: str, num: int, size: int, seed: int) -> Data:
    ds = SyntheticSemanticDataset(num_scenes=num, split=split, seed=seed, size=size)
    items = [ds[i] for i in range(num)]
    return Data(
        images=torch.stack([s.image for s in items]),
        labels=torch.stack([s.semantic for s in items]).long(),
        class_names=list(ds.class_names),
    )


def sampled_cells(
    points: torch.Tensor, valid: torch.Tensor, image_hw: tuple[int, int], sam_size: int, grid: int
) -> torch.Tensor:
    """Grid cells `(B, g, g)` holding a sampled point (points are cell centres in SAM's frame)."""
    scale = sam_size / max(image_hw)
    h_in, w_in = round(image_hw[0] * scale), round(image_hw[1] * scale)
    j = (points[..., 0] / w_in * grid).floor().long().clamp(0, grid - 1)
    i = (points[..., 1] / h_in * grid).floor().long().clamp(0, grid - 1)
    cells = torch.zeros(points.shape[0], grid * grid, dtype=torch.bool, device=points.device)
    cells.scatter_(1, i * grid + j, valid)
    return cells.reshape(-1, grid, grid)


def segment_recall(cells: torch.Tensor, labels: torch.Tensor, num_classes: int, g_p: float):
    """Segments (connected components of each class on the grid) > g_p cells, and those hit."""
    grid = cells.shape[-1]
    masks = masks_from_labels(labels, num_classes)
    on_grid = F.adaptive_avg_pool2d(masks.float(), grid) >= 0.5  # as tspp_targets resizes
    total = hit = 0
    for b in range(on_grid.shape[0]):
        for k in range(num_classes):
            comp, n = connected_components(on_grid[b, k].cpu().numpy())
            for c in range(1, n + 1):
                seg = torch.from_numpy(comp == c)
                if seg.sum() > g_p:
                    total += 1
                    hit += int((cells[b].cpu() & seg).any())
    return total, hit


@torch.no_grad()
def evaluate(model: SAMMI, data: Data, batch_size: int, device: torch.device) -> dict[str, float]:
    model.eval()
    num_classes = len(data.class_names)
    metric = SemanticIoU(num_classes=num_classes)
    points, seg_total, seg_hit = [], 0, 0
    for start in range(0, len(data.images), batch_size):
        images = data.images[start : start + batch_size].to(device)
        labels = data.labels[start : start + batch_size].to(device)
        out = model(images, data.class_names)
        logits = F.interpolate(out.logits, size=labels.shape[-2:], mode="bilinear")
        metric.update(logits.argmax(1), labels)
        points.append(out.point_valid.sum(1).float())
        if model.config.prompting == "tspp":
            hw = (images.shape[-2], images.shape[-1])
            cells = sampled_cells(
                out.points, out.point_valid, hw, model.sam.img_size, model.config.grid
            )
            t, h = segment_recall(cells, labels, num_classes, model.config.g_p)
            seg_total, seg_hit = seg_total + t, seg_hit + h
    pts = torch.cat(points)
    grid_cells = model.config.grid**2
    return {
        "miou": float(metric.compute()),
        "pixel_acc": float(metric.pixel_accuracy()),
        "points_per_image": float(pts.mean()),
        "max_grid_fraction": float(pts.max()) / grid_cells,
        "segment_recall": seg_hit / max(seg_total, 1),
        "segments": float(seg_total),
    }


def majority_baseline(train: Data, val: Data) -> float:
    counts = torch.bincount(train.labels.flatten(), minlength=len(train.class_names))
    pred = torch.full_like(val.labels, int(counts.argmax()))
    metric = SemanticIoU(num_classes=len(val.class_names))
    metric.update(pred, val.labels)
    return float(metric.compute())


def save_checkpoint(out: Path, model: SAMMI, opt: torch.optim.Optimizer, state: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / "last.safetensors"))
    torch.save({"optimizer": opt.state_dict()}, out / "last_optim.pt")
    (out / "last.json").write_text(json.dumps(state, indent=2))


def load_checkpoint(out: Path, model: SAMMI, opt: torch.optim.Optimizer) -> None:
    """Load what `save_checkpoint` wrote (tensors only; a bad file is a clear ValueError)."""
    kind = "SAM-MI resume state"
    model.load_state_dict(read_checkpoint(out / "last.safetensors", kind=kind))
    opt.load_state_dict(read_checkpoint(out / "last_optim.pt", kind=kind)["optimizer"])


def print_table(rows: list[dict[str, Any]]) -> None:
    keys = ["stage", "step", "loss", "miou", "baseline", "points_per_image", "segment_recall"]
    print(" | ".join(f"{k:>16}" for k in keys))
    for r in rows:
        cells = [
            f"{r[k]:>16.4f}" if isinstance(r.get(k), float) else f"{r.get(k, ''):>16}" for k in keys
        ]
        print(" | ".join(cells))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    overrides: dict[str, Any] = {}
    if args.lr is not None:
        overrides["lr"] = args.lr
    if args.clip_finetune is not None:
        overrides["clip_finetune"] = args.clip_finetune
    if args.clip_lr_mult is not None:
        overrides["clip_lr_multiplier"] = args.clip_lr_mult
    if args.tspp_lr_mult is not None:
        overrides["tspp_lr_multiplier"] = args.tspp_lr_mult
    if args.clip_size is not None:
        overrides["clip_size"] = args.clip_size
    model = build_sam_mi("tiny", **overrides).to(device)
    crit = SAMMILoss(g_p=model.config.g_p, m_p=model.config.m_p)
    train = load_split("train", args.train_scenes, args.size, args.seed)
    val = load_split("val", args.val_scenes, args.size, args.seed)
    baseline = majority_baseline(train, val)
    out = Path(args.out)
    state: dict[str, Any] = {"stage": 1, "step": 0, "history": []}
    if args.resume and (out / "last.json").exists():
        state = json.loads((out / "last.json").read_text())
    rng = torch.Generator().manual_seed(args.seed + 1000 * state["stage"] + state["step"])
    steps = {1: args.steps1, 2: args.steps2}
    t0 = time.time()
    for stage in (1, 2):
        if stage < state["stage"]:
            continue
        groups = model.configure_stage(stage)
        opt = torch.optim.AdamW(groups, weight_decay=model.config.weight_decay)
        if args.resume and state["step"] > 0 and stage == state["stage"]:
            load_checkpoint(out, model, opt)
        bar = tqdm(
            range(state["step"], steps[stage]), desc=f"stage {stage}", disable=args.no_progress
        )
        for step in bar:
            model.train()
            idx = torch.randint(0, len(train.images), (args.batch_size,), generator=rng)
            images, labels = train.images[idx].to(device), train.labels[idx].to(device)
            if stage == 1:
                output: Any = model.prompter(images, train.class_names)
            else:
                output = model(images, train.class_names)
            loss = crit(output, labels, stage=stage)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad > 0:
                params = [q for group in opt.param_groups for q in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            last = step + 1 == steps[stage]
            if (args.eval_every and (step + 1) % args.eval_every == 0) or last:
                row = {"stage": stage, "step": step + 1, "loss": loss.item(), "baseline": baseline}
                if stage == 2 or last:
                    row.update(evaluate(model, val, args.batch_size, device))
                state["history"].append(row)
                tqdm.write(
                    json.dumps(
                        {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
                    )
                )
                state.update(stage=stage, step=step + 1)
                save_checkpoint(out, model, opt, state)
        state.update(stage=stage + 1, step=0)
    final = dict(state["history"][-1]) if state["history"] else {}
    final["baseline"] = baseline
    final["seconds"] = time.time() - t0
    print_table(state["history"])
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()}))
    return final


if __name__ == "__main__":
    main()
