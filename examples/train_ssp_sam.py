"""Train SSP-SAM on synthetic referring / generalised referring scenes, then evaluate it.

A thin caller of `samkit.engine`: the synthetic data sets, the tiny system, its task
(`build_task("ssp_sam", ...)`) and `Trainer(...).fit()`; the engine owns the optimizer, the
warm-up + cosine schedule, bf16 autocast on CUDA, checkpoints (`--out/checkpoints/step_*.pt`),
`--resume` and the log (`--out/log.jsonl`). What stays here is the example's own: the trivial
baselines, the per-kind breakdown, the table and `metrics.json`. The task encodes each distinct
image of a batch once (SAM and CLIP) every step; nothing is cached between steps.

    python examples/train_ssp_sam.py --out runs/ssp_sam_tiny
    python examples/train_ssp_sam.py --out runs/ssp_sam_tiny --steps 4000 --resume
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from samkit._io import write_atomic
from samkit.data.datasets import SyntheticReferringDataset
from samkit.engine import TrainConfig, Trainer
from samkit.metrics.referring import ReferringMetrics, referring_iou
from samkit.systems.ssp_sam import build_ssp_sam
from samkit.systems.tasks import build_task

DEFAULT_OVERRIDES = (
    "target_head=true",
    'sam_variant="small"',
    "adapter_dim=128",
    "num_prompts=16",
    "depth=3",
)
"""The example's changes to the preset (see docs/systems/ssp-sam.md); `--set` goes on top."""


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`FIELD=VALUE` strings (JSON values) to a dict; later items win."""
    out: dict[str, Any] = {}
    for item in items:
        field, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[field] = json.loads(value)
        except ValueError:
            example = "sam_variant='\"small\"'"
            raise SystemExit(
                f"--set: expected FIELD=VALUE with a JSON value (quote strings: {example}), "
                f"got {item!r}"
            ) from None
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="tiny", help="SSP-SAM preset (tiny, vit_b16_224, ...)")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="SSPSAMConfig overrides (JSON values), applied after the example's own: "
        + " ".join(DEFAULT_OVERRIDES),
    )
    p.add_argument("--steps", type=int, default=1500, help="optimisation steps in total")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate of the heads")
    p.add_argument("--decoder-lr", type=float, default=2e-3, help="learning rate of SAM's decoder")
    p.add_argument(
        "--freeze-decoder", action="store_true", help="keep SAM's mask decoder frozen throughout"
    )
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine floor (x each lr)")
    p.add_argument("--presence-weight", type=float, default=1.0, help="weight of the GRES BCE")
    p.add_argument("--clip-grad", type=float, default=1.0, help="max grad norm (reference: 0.1)")
    p.add_argument("--train-scenes", type=int, default=4000)
    p.add_argument("--val-scenes", type=int, default=60)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=500, help="steps between evaluations")
    p.add_argument("--save-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--out", type=Path, default=Path("runs/ssp_sam"))
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="disable the tqdm bar")
    return p.parse_args(argv)


@torch.no_grad()
def by_kind(task: Any, data: SyntheticReferringDataset, batch_size: int) -> dict[str, Any]:
    """Per expression kind: count, mean IoU (with the no-target decision) and has-target rate."""
    task.model.eval()
    ious: list[Tensor] = []
    decided: list[Tensor] = []
    kinds: list[str] = []
    for start in range(0, len(data), batch_size):
        samples = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        batch = task.collate(samples)
        preds = task.predict(batch)
        masks = torch.stack([p.mask.cpu() for p in preds])
        has = torch.tensor([p.has_target for p in preds])
        ious.append(referring_iou(masks, batch.target_masks.cpu(), has_target=has)[2])
        decided.append(has.float())
        kinds += [s.kind for s in samples]
    iou, rate = torch.cat(ious), torch.cat(decided)
    out = {}
    for kind in sorted(set(kinds)):
        sel = torch.tensor([k == kind for k in kinds])
        out[kind] = {
            "count": int(sel.sum()),
            "iou": float(iou[sel].mean()),
            "has_target_rate": float(rate[sel].mean()),
        }
    return out


def baselines(data: SyntheticReferringDataset) -> dict[str, dict[str, float]]:
    """Trivial predictors: always empty, union of all objects, largest object."""
    rules = {
        "empty": lambda m: torch.zeros(m.shape[1:], dtype=torch.bool),
        "union": lambda m: m.any(0),
        "largest": lambda m: (
            m[m.flatten(1).sum(-1).argmax()]
            if len(m)
            else torch.zeros(m.shape[1:], dtype=torch.bool)
        ),
    }
    samples = [data[i] for i in range(len(data))]
    targets = torch.stack([s.target_mask for s in samples])
    out = {}
    for name, rule in rules.items():
        metrics = ReferringMetrics()
        metrics.update(torch.stack([rule(s.instance_masks) for s in samples]), targets)
        out[name] = metrics.compute()
    return out


def print_table(rows: dict[str, dict[str, float]]) -> str:
    keys = ["giou", "ciou", "pr@0.5", "pr@0.7", "pr@0.9", "n_acc", "t_acc"]
    lines = [f"{'':<12}" + "".join(f"{k:>9}" for k in keys)]
    for name, r in rows.items():
        lines.append(f"{name:<12}" + "".join(f"{r[k]:>9.3f}" for k in keys))
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # The example's `small` SAM replaces the random `tiny` one; a pretrained preset keeps its own.
    defaults = [o for o in DEFAULT_OVERRIDES if args.preset == "tiny" or "sam_variant" not in o]
    overrides = parse_overrides([*defaults, *args.set])
    model = build_ssp_sam(args.preset, lr=args.lr, decoder_lr=args.decoder_lr, **overrides)
    kw = {"size": args.image_size, "seed": args.seed}
    train = SyntheticReferringDataset(num_scenes=args.train_scenes, **kw)
    val = SyntheticReferringDataset(num_scenes=args.val_scenes, split="val", **kw)
    task = build_task(
        "ssp_sam",
        model,
        class_names=(),
        train_decoder=not args.freeze_decoder,
        presence_weight=args.presence_weight,
    )
    eval_batch = min(args.batch_size, 32)
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,  # every group sets its own rate (heads, decoder, CLIP); only a default
        warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio,
        grad_clip=args.clip_grad,
        precision="bf16" if torch.device(args.device).type == "cuda" else "fp32",
        eval_every=args.eval_every,
        eval_batch_size=eval_batch,
        checkpoint_every=args.save_every,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    t0 = time.time()
    final = Trainer(task, train, config, args.out, val_data=val).fit(resume=args.resume)
    train_s = time.time() - t0
    kinds = by_kind(task, val, eval_batch)
    base = baselines(val)
    table = print_table(
        {"ssp-sam": final, **{f"always {k}" if k == "empty" else k: v for k, v in base.items()}}
    )
    for kind, r in kinds.items():
        print(
            f"{kind:<8} n={r['count']:<4} mean IoU {r['iou']:.3f}"
            f"  judged to have a target {r['has_target_rate']:.3f}"
        )
    rows = [json.loads(line) for line in (args.out / "log.jsonl").read_text().splitlines()]
    history = [r for r in rows if r["kind"] == "eval"]
    result = {
        "metrics": final,
        "by_kind": kinds,
        "baselines": base,
        "best_baseline_giou": max(v["giou"] for v in base.values()),
        "steps": history[-1]["step"] if history else 0,
        "train_seconds": train_s,
        "history": history,
        "table": table,
    }
    write_atomic(args.out / "metrics.json", json.dumps(result, indent=2).encode())
    print(f"trained {result['steps']} steps; {train_s:.0f} s with the evaluations")
    return result


if __name__ == "__main__":
    main()
