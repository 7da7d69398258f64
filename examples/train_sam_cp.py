"""Train a small SAM-CP on synthetic panoptic scenes and evaluate PQ / mIoU / mask AP.

A thin caller of `samkit.engine`: the synthetic data sets, the tiny system, its task
(`build_task("sam_cp", ...)`) and `Trainer(...).fit()`; the engine owns the optimizer, the
warm-up + cosine schedule, checkpoints (`--out/checkpoints/step_*.pt`), `--resume` and the log
(`--out/log.jsonl`). What stays here is the example's own: the "unmerged" baseline, the table
and `metrics.json`.

The system is the `tiny-synth` preset by default (the `tiny` heads on samkit's shipped pretrained
SAM and CLIP); `--preset tiny` gives the same heads on random-weight backbones. Patches are
either "oracle-split" ground-truth segments (`--patches oracle`, the default: every segment
randomly cut into 1-4 connected parts) or the preset SAM's automatic masks (`--patches sam`). The
model has to classify the parts and merge them back into instances.

Example:
    python examples/train_sam_cp.py --steps 1500 --out runs/sam_cp
    python examples/train_sam_cp.py --steps 2000 --out runs/sam_cp --resume   # continue
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from samkit._io import write_atomic
from samkit.data.datasets import PanopticBatch, SyntheticPanopticDataset
from samkit.data.synthetic import CLASS_NAMES, NUM_THING_CLASSES
from samkit.engine import TrainConfig, Trainer
from samkit.metrics.panoptic import PanopticQuality
from samkit.systems.sam_cp import build_sam_cp
from samkit.systems.tasks import build_task
from samkit.types import Patches


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=1500, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=20, help="linear warm-up steps")
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine floor (x lr)")
    p.add_argument(
        "--score-threshold", type=float, default=None, help="override object_mask_threshold"
    )
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--train-scenes", type=int, default=4000)
    p.add_argument("--eval-scenes", type=int, default=32)
    p.add_argument(
        "--eval-every", type=int, default=500, help="evaluate every N steps (0: end only)"
    )
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--patches", choices=("oracle", "sam"), default="oracle")
    p.add_argument("--max-parts", type=int, default=4, help="oracle split: parts per segment")
    p.add_argument("--out", type=str, default=None, help="run directory (default: a temporary one)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--preset",
        default="tiny-synth",
        help="system preset: tiny-synth (pretrained backbones) or tiny (random backbones)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


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


def baseline_pq(task: Any, data: SyntheticPanopticDataset) -> dict[str, float]:
    """PQ of the unmerged oracle parts (true labels, no merging) on `data`."""
    names = task.class_names
    pq = PanopticQuality(things=range(task.num_things), stuff=range(task.num_things, len(names)))
    for start in range(0, len(data), 8):
        batch = task.collate([data[i] for i in range(start, min(start + 8, len(data)))])
        for b, (pan, segs) in enumerate(unmerged_baseline(batch, task.patches(batch))):
            pq.update(pan, segs, batch.panoptic[b], batch.segments[b])
    r = pq.compute()
    return {"baseline_pq": r["all"]["pq"], "baseline_pq_things": r["things"]["pq"]}


def history(out_dir: Path) -> list[dict[str, Any]]:
    """The evaluation rows of the engine's `log.jsonl`."""
    rows = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "eval"]


def print_table(rows: dict[str, dict[str, float]]) -> None:
    keys = ["pq", "sq", "rq", "pq_things", "pq_stuff", "mIoU", "mask_ap"]
    print(f"{'':>10} " + " ".join(f"{k:>10}" for k in keys))
    for name, r in rows.items():
        print(f"{name:>10} " + " ".join(f"{r.get(k, float('nan')):>10.3f}" for k in keys))


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train, evaluate, and return the final evaluation metrics (the task's keys + baseline)."""
    args = parse_args(argv)
    if args.resume and args.out is None:
        raise FileNotFoundError("--resume needs --out: the run directory to continue")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    overrides: dict[str, Any] = {"build_proposer": args.patches == "sam"}
    if args.score_threshold is not None:
        overrides["object_mask_threshold"] = args.score_threshold
    model = build_sam_cp(args.preset, **overrides)
    parts = args.patches == "oracle"
    common = {"size": args.size, "seed": args.seed, "parts": parts, "max_parts": args.max_parts}
    train_ds = SyntheticPanopticDataset(num_scenes=args.train_scenes, split="train", **common)
    val_ds = SyntheticPanopticDataset(num_scenes=args.eval_scenes, split="val", **common)
    task = build_task(
        "sam_cp",
        model,
        class_names=CLASS_NAMES,
        num_things=NUM_THING_CLASSES,
        patches=args.patches,
    )
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup,
        min_lr_ratio=args.min_lr_ratio,
        grad_clip=args.grad_clip,
        eval_every=args.eval_every,
        eval_batch_size=8,
        checkpoint_every=args.save_every,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    with tempfile.TemporaryDirectory(prefix="sam_cp_") as tmp:
        out_dir = Path(args.out) if args.out else Path(tmp)
        start = time.time()
        final = Trainer(task, train_ds, config, out_dir, val_data=val_ds).fit(resume=args.resume)
        final["train_seconds"] = time.time() - start
        if parts:
            final.update(baseline_pq(task, val_ds))
        rows = {"sam-cp": final}
        if parts:
            rows["unmerged"] = {
                "pq": final["baseline_pq"],
                "pq_things": final["baseline_pq_things"],
            }
        print_table(rows)
        if args.out:
            result = {"final": final, "history": history(out_dir)}
            write_atomic(out_dir / "metrics.json", json.dumps(result, indent=2).encode())
    return final


if __name__ == "__main__":
    main()
