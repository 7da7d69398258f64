"""Train the tiny SAM-CP on synthetic panoptic scenes and evaluate PQ / mIoU / mask AP.

Patches are either "oracle-split" ground-truth segments (`--patches oracle`, the default: every
segment randomly cut into 1-4 connected parts, so learning can be checked without real SAM
weights) or the tiny random-weight SAM's automatic masks (`--patches sam`). The model has to
classify the parts and merge them back into instances.

Example:
    python examples/train_sam_cp.py --steps 1500 --out runs/sam_cp
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from samkit._io import read_checkpoint
from samkit.data.datasets import PanopticBatch, SyntheticPanopticDataset, collate_panoptic
from samkit.data.synthetic import NUM_CLASSES, NUM_THING_CLASSES
from samkit.losses.sam_cp import SAMCPLoss
from samkit.matching import build_patch_targets
from samkit.metrics.panoptic import PanopticQuality
from samkit.metrics.semantic import SemanticIoU
from samkit.proposals import patches_from_masks
from samkit.systems.sam_cp import SAMCP, build_sam_cp
from samkit.types import Patches

NUM_STUFF = NUM_CLASSES - NUM_THING_CLASSES


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=1500, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=20, help="linear warm-up steps")
    p.add_argument(
        "--score-threshold", type=float, default=None, help="override object_mask_threshold"
    )
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--train-scenes", type=int, default=4000)
    p.add_argument("--eval-scenes", type=int, default=32)
    p.add_argument(
        "--eval-every", type=int, default=500, help="evaluate every N steps (0: end only)"
    )
    p.add_argument("--patches", choices=("oracle", "sam"), default="oracle")
    p.add_argument("--max-parts", type=int, default=4, help="oracle split: parts per segment")
    p.add_argument("--out", type=str, default=None, help="checkpoint / metrics directory")
    p.add_argument("--resume", action="store_true", help="resume from --out/last.*")
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def batch_patches(model: SAMCP, batch: PanopticBatch, mode: str) -> list[Patches]:
    """Oracle-split parts of the ground-truth segments, or the tiny SAM's patches."""
    if mode == "oracle":
        assert batch.part_masks is not None
        return [patches_from_masks(m) for m in batch.part_masks]
    assert model.proposer is not None
    return model.proposer(batch.images)


def unmerged_baseline(batch: PanopticBatch, patches: list[Patches]) -> list[tuple[Any, list]]:
    """Every patch is its own segment, labelled with its parent's true class (no merging)."""
    out = []
    assert batch.part_parents is not None
    for b, p in enumerate(patches):
        pan = torch.zeros(p.image_size, dtype=torch.long)
        segs: list[dict] = []
        for mask, parent in zip(p.masks.cpu(), batch.part_parents[b].cpu(), strict=True):
            segs.append({"id": len(segs) + 1, "category_id": int(batch.segment_classes[b][parent])})
            pan[mask] = len(segs)
        out.append((pan, segs))
    return out


@torch.no_grad()
def evaluate(
    model: SAMCP, loader: DataLoader, device: torch.device, mode: str, *, baseline: bool = False
) -> dict[str, float]:
    """PQ / SQ / RQ (all, things, stuff), mIoU and (if pycocotools is there) mask AP."""
    model.eval()
    pq = PanopticQuality(
        things=range(NUM_THING_CLASSES), stuff=range(NUM_THING_CLASSES, NUM_CLASSES)
    )
    base = PanopticQuality(
        things=range(NUM_THING_CLASSES), stuff=range(NUM_THING_CLASSES, NUM_CLASSES)
    )
    miou = SemanticIoU(num_classes=NUM_CLASSES)
    try:
        from samkit.metrics.instance import MaskAP

        ap: Any = MaskAP()
    except ImportError:
        ap = None
    for batch in loader:
        batch = batch.to(device)
        patches = batch_patches(model, batch, mode)
        results = model.predict(batch.images, patches)
        for b, res in enumerate(results):
            pq.update(res.panoptic, res.segments, batch.panoptic[b], batch.segments[b])
            miou.update(res.semantic[None], batch.semantic[b][None])
            if ap is not None:
                ap.update(
                    res.instance_masks,
                    res.instance_scores,
                    res.instance_labels,
                    batch.instance_masks[b],
                    batch.instance_classes[b],
                )
        if baseline and mode == "oracle":
            for b, (pan, segs) in enumerate(unmerged_baseline(batch, patches)):
                base.update(pan, segs, batch.panoptic[b].cpu(), batch.segments[b])
    r = pq.compute()
    out = {
        "pq": r["all"]["pq"],
        "sq": r["all"]["sq"],
        "rq": r["all"]["rq"],
        "pq_things": r["things"]["pq"],
        "pq_stuff": r["stuff"]["pq"],
        "miou": float(miou.compute()),
    }
    if ap is not None:
        out["mask_ap"] = ap.compute()["ap"]
    if baseline and mode == "oracle":
        rb = base.compute()
        out["baseline_pq"] = rb["all"]["pq"]
        out["baseline_pq_things"] = rb["things"]["pq"]
    model.train()
    return out


def model_state(model: SAMCP) -> dict[str, torch.Tensor]:
    """The full state (the frozen random-weight CLIP too: it defines the class embeddings)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(out: Path, model: SAMCP, opt: torch.optim.Optimizer, step: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file(model_state(model), str(out / "last.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "step": step}, out / "last_state.pt")


def load_checkpoint(out: Path, model: SAMCP, opt: torch.optim.Optimizer) -> int:
    kind = "SAM-CP resume state"
    model.load_state_dict(read_checkpoint(out / "last.safetensors", kind=kind))
    state = read_checkpoint(out / "last_state.pt", kind=kind)
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])


def print_table(rows: dict[str, dict[str, float]]) -> None:
    keys = sorted({k for r in rows.values() for k in r})
    print(f"{'':>10} " + " ".join(f"{k:>18}" for k in keys))
    for name, r in rows.items():
        print(f"{name:>10} " + " ".join(f"{r.get(k, float('nan')):>18.3f}" for k in keys))


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train, evaluate, and return the final evaluation metrics."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    overrides: dict[str, Any] = {"build_proposer": args.patches == "sam"}
    if args.score_threshold is not None:
        overrides["object_mask_threshold"] = args.score_threshold
    model = build_sam_cp("tiny", **overrides).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    criterion = SAMCPLoss()
    parts = args.patches == "oracle"
    common = {"size": args.size, "seed": args.seed, "parts": parts, "max_parts": args.max_parts}
    train_ds = SyntheticPanopticDataset(num_scenes=args.train_scenes, split="train", **common)
    val_ds = SyntheticPanopticDataset(num_scenes=args.eval_scenes, split="val", **common)
    gen = torch.Generator().manual_seed(args.seed)
    train_dl = DataLoader(
        train_ds,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate_panoptic,
        generator=gen,
    )
    val_dl = DataLoader(val_ds, batch_size=8, collate_fn=collate_panoptic)
    out_dir = Path(args.out) if args.out else None
    step = 0
    if args.resume:
        if out_dir is None or not (out_dir / "last.safetensors").exists():
            raise FileNotFoundError("--resume needs --out with a saved checkpoint")
        step = load_checkpoint(out_dir, model, opt)
    first = step  # a resumed run continues the schedule where it stopped
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: _lr_factor(first + i, args.steps, args.warmup)
    )
    history: list[dict[str, float]] = []
    start = time.time()
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, desc="sam-cp")
    data = iter(train_dl)
    while step < args.steps:
        try:
            batch = next(data)
        except StopIteration:
            data = iter(train_dl)
            batch = next(data)
        batch = batch.to(device)
        patches = batch_patches(model, batch, args.patches)
        targets = [
            build_patch_targets(
                p,
                batch.segment_masks[b],
                batch.segment_classes[b],
                num_things=NUM_THING_CLASSES,
                num_stuff=NUM_STUFF,
            )
            for b, p in enumerate(patches)
        ]
        losses = criterion(model(batch.images, patches), targets)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses['loss'].item():.3f}")
        if args.eval_every and step % args.eval_every == 0 and step < args.steps:
            metrics = evaluate(model, val_dl, device, args.patches)
            history.append({"step": step, **metrics})
            bar.write(f"step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
            if out_dir is not None:
                save_checkpoint(out_dir, model, opt, step)
    bar.close()
    final = evaluate(model, val_dl, device, args.patches, baseline=True)
    final["train_seconds"] = time.time() - start
    history.append({"step": step, **final})
    rows = {"sam-cp": {k: v for k, v in final.items() if not k.startswith("baseline")}}
    if "baseline_pq" in final:
        rows["unmerged"] = {"pq": final["baseline_pq"], "pq_things": final["baseline_pq_things"]}
    print_table(rows)
    if out_dir is not None:
        save_checkpoint(out_dir, model, opt, step)
        (out_dir / "metrics.json").write_text(json.dumps(history, indent=2))
    return final


if __name__ == "__main__":
    main()
