"""Train SAM-MI on synthetic semantic scenes, two stages, on the CPU.

A thin caller of `samkit.engine`: the synthetic data sets, the system (`--preset tiny-synth`,
the default: the tiny heads on the shipped pretrained SAM and CLIP; `--preset tiny`: random
backbones), its task (`build_task("sam_mi", ...)`, stages `("tspp", "full")`) and
`Trainer(...).fit()`; the engine owns the optimizer, the schedule, checkpoints
(`--out/checkpoints/step_*.pt`), `--resume` and the log (`--out/log.jsonl`). What stays here is
the example's own: the majority-class baseline, the table and `metrics.json`.

Stage 1 trains the text-guided sparse point prompter (TSPP) alone with L_tspp; stage 2 trains
everything except SAM with L_ce + 0.1 L_tspp (TSPP at lr x 0.2; CLIP, the part the preset
fine-tunes, at lr x 0.01, the paper's CLIP-to-base lr ratio).
The learning rate is constant (no warm-up, no decay), as in the paper's short schedules.
Evaluation reports mIoU on held-out scenes, the majority-class baseline, the fraction of the
32x32 grid TSPP samples per image, and the fraction of ground-truth segments larger than g_p
grid cells that receive at least one sampled point.

    python examples/train_sam_mi.py --steps1 400 --steps2 400 --out runs/sam_mi
    python examples/train_sam_mi.py --steps2 800 --out runs/sam_mi --resume   # continue
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from samkit._io import write_atomic
from samkit.data.datasets import SyntheticSemanticDataset
from samkit.engine import TrainConfig, Trainer
from samkit.metrics.semantic import SemanticIoU
from samkit.systems.sam_mi import build_sam_mi
from samkit.systems.tasks import build_task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps1", type=int, default=400, help="stage-1 (TSPP only) steps")
    p.add_argument("--steps2", type=int, default=400, help="stage-2 (full model) steps")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", type=int, default=128, help="scene side in pixels")
    p.add_argument("--train-scenes", type=int, default=400)
    p.add_argument("--val-scenes", type=int, default=24)
    p.add_argument("--eval-every", type=int, default=200, help="evaluate every N steps (0: end)")
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps")
    p.add_argument("--lr", type=float, default=None, help="base lr (default: preset's)")
    p.add_argument("--clip-finetune", choices=["none", "attention_qv", "all"], default=None)
    p.add_argument(
        "--clip-lr-mult", type=float, default=0.01, help="stage-2 CLIP lr multiplier (paper's)"
    )
    p.add_argument("--tspp-lr-mult", type=float, default=0.2, help="stage-2 TSPP lr multiplier")
    p.add_argument("--clip-size", type=int, default=None, help="CLIP input side")
    p.add_argument(
        "--lambda-mse", type=float, default=None, help="weight of L_mse in L_tspp (preset's)"
    )
    p.add_argument("--out", type=str, default="runs/sam_mi", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--clip-grad", type=float, default=1.0, help="grad-norm clip (0: off)")
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--preset",
        default="tiny-synth",
        help="system preset: tiny-synth (shipped pretrained backbones) or tiny (random ones)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--no-progress", action="store_true", help="disable the tqdm bars")
    return p.parse_args(argv)


def majority_baseline(train: SyntheticSemanticDataset, val: SyntheticSemanticDataset) -> float:
    """mIoU of predicting the most frequent training class everywhere."""
    num = len(train.class_names)
    counts = torch.zeros(num, dtype=torch.long)
    for i in range(len(train)):
        labels = train[i].semantic.long().flatten()
        counts += torch.bincount(labels[labels < num], minlength=num)
    metric = SemanticIoU(num_classes=num)
    for i in range(len(val)):
        labels = val[i].semantic.long()
        metric.update(torch.full_like(labels, int(counts.argmax()))[None], labels[None])
    return float(metric.compute())


def print_table(rows: list[dict[str, Any]]) -> None:
    keys = ["stage", "step", "mIoU", "baseline", "points_per_image", "segment_recall"]
    print(" | ".join(f"{k:>16}" for k in keys))
    for r in rows:
        cells = [
            f"{r[k]:>16.4f}" if isinstance(r.get(k), float) else f"{r.get(k, ''):>16}" for k in keys
        ]
        print(" | ".join(cells))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train both stages, evaluate; return the last evaluation with `baseline`, stage, step."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
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
    if args.lambda_mse is not None:
        overrides["lambda_mse"] = args.lambda_mse
    model = build_sam_mi(args.preset, **overrides)
    common = {"size": args.size, "seed": args.seed}
    train = SyntheticSemanticDataset(num_scenes=args.train_scenes, split="train", **common)
    val = SyntheticSemanticDataset(num_scenes=args.val_scenes, split="val", **common)
    task = build_task("sam_mi", model, class_names=train.class_names)
    config = TrainConfig(
        steps=(args.steps1, args.steps2),
        batch_size=args.batch_size,
        lr=model.config.lr,  # every group sets its own rate; this is only the default
        weight_decay=model.config.weight_decay,
        warmup_steps=0,
        min_lr_ratio=1.0,  # constant rate
        grad_clip=args.clip_grad if args.clip_grad > 0 else None,
        eval_every=args.eval_every,
        eval_batch_size=args.batch_size,
        checkpoint_every=args.save_every,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    out = Path(args.out)
    t0 = time.time()
    Trainer(task, train, config, out, val_data=val).fit(resume=args.resume)
    seconds = time.time() - t0
    baseline = majority_baseline(train, val)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    history = [
        {**r, "stage": r["stage"] + 1, "baseline": baseline} for r in rows if r["kind"] == "eval"
    ]
    final = dict(history[-1]) if history else {}
    final.update(baseline=baseline, seconds=seconds)
    print_table(history)
    write_atomic(
        out / "metrics.json", json.dumps({"final": final, "history": history}, indent=2).encode()
    )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()}))
    return final


if __name__ == "__main__":
    main()
