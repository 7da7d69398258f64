"""Train SSP-SAM on synthetic referring / generalised referring scenes, then evaluate it.

The frozen parts (CLIP-Surgery features, CLIP text states, SAM image embeddings) are computed
once and cached, as the reference caches SAM embeddings; each step then runs only the trainable
heads and SAM's mask decoder. With `--set clip_trainable='"visual"'` CLIP's image tower trains
too and runs every step instead. Works on the CPU; on CUDA it uses bf16 autocast.

    python examples/train_ssp_sam.py --out runs/ssp_sam_tiny
    python examples/train_ssp_sam.py --out runs/ssp_sam_tiny --steps 4000 --resume

Outputs in `--out`: `model.safetensors` (trainable weights: heads and SAM mask decoder),
`state.pt` (optimizer, step, RNG), `config.json` and `metrics.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from samkit._io import read_checkpoint
from samkit.data.datasets import SyntheticReferringDataset
from samkit.losses.referring import ReferringLoss
from samkit.metrics.referring import ReferringMetrics, referring_iou, to_sam_padded_frame
from samkit.modules.visual_adapter import canvas_boxes
from samkit.systems.ssp_sam import SSPSAM, build_ssp_sam, config_dict
from samkit.types import ClipDenseOutput, ImageEmbedding, TextEmbedding

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
    p.add_argument("--decoder-freeze-steps", type=int, default=0, help="steps before unfreezing")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--presence-weight", type=float, default=1.0, help="weight of the GRES BCE")
    p.add_argument("--clip-grad", type=float, default=1.0, help="max grad norm (reference: 0.1)")
    p.add_argument("--train-scenes", type=int, default=4000)
    p.add_argument("--val-scenes", type=int, default=60)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=500, help="steps between evaluations")
    p.add_argument("--save-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--out", type=Path, default=Path("runs/ssp_sam"))
    p.add_argument("--resume", action="store_true", help="continue from --out if present")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="stop training after N seconds (the lr cosine then follows the clock if it is ahead)",
    )
    p.add_argument("--no-progress", action="store_true", help="disable the tqdm bar")
    return p.parse_args(argv)


@dataclass
class Split:
    """Cached frozen features and targets of one split, one row per expression."""

    clip: ClipDenseOutput | None  # per scene (None when CLIP trains: see `images`)
    images: Tensor | None  # per scene images (S, 3, H, W), kept only when CLIP trains
    sam: Tensor  # per scene SAM embeddings (S, D, h, w)
    scene: Tensor  # (E,) scene index of each expression
    text: Tensor  # (E,) index into the text cache
    masks: Tensor  # (E, 4h, 4w) bool targets in SAM's low-res padded frame
    full_masks: Tensor  # (E, H, W) bool targets at the original size
    boxes: Tensor  # (E, 4) normalised cxcywh on the CLIP canvas (zeros: no target)
    has_target: Tensor  # (E,) bool
    instances: list[Tensor]  # per expression, the scene's instance masks (baselines)
    kinds: list[str]  # per expression, its kind ("unique", "plural", "spatial", "size", "absent")
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class TextCache:
    """CLIP text states of every distinct expression, computed once."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.rows: list[TextEmbedding] = []

    def add(self, texts: Sequence[str]) -> list[int]:
        return [self.index.setdefault(t, len(self.index)) for t in texts]

    def build(self, model: SSPSAM, device: torch.device) -> TextEmbedding:
        texts = list(self.index)
        with torch.no_grad():
            out = model.encode_text(texts)
        return out.to(device)


def _select_text(text: TextEmbedding, idx: Tensor) -> TextEmbedding:
    assert text.token_states is not None and text.padding_mask is not None
    return TextEmbedding(
        embeddings=text.embeddings[idx],
        texts=[text.texts[i] for i in idx.tolist()],
        token_states=text.token_states[idx],
        padding_mask=text.padding_mask[idx],
    )


def build_split(
    model: SSPSAM, ds: SyntheticReferringDataset, texts: TextCache, device: torch.device
) -> Split:
    sam, cfg = model.sam, model.config
    low = 4 * sam.embedding_size[0]
    per = ds.expressions_per_scene
    clip_f, clip_c, sam_e, ims = [], [], [], []
    clip_frozen = cfg.clip_trainable == "none"
    scene_idx, text_idx, masks, full, boxes, inst = [], [], [], [], [], []
    kinds: list[str] = []
    chunk = 32
    for start in range(0, ds.num_scenes, chunk):
        idx = range(start, min(start + chunk, ds.num_scenes))
        samples = [ds[s * per + e] for s in idx for e in range(per)]
        images = torch.stack([samples[i * per].image for i in range(len(idx))]).to(device)
        with torch.no_grad():
            if clip_frozen:
                c = model.encode_clip(images)
                clip_f.append(c.features)
                clip_c.append(c.cls)
            else:
                ims.append(images)
            emb = sam.encode(images)
            sam_e.append(emb.embeddings)
        size = tuple(images.shape[-2:])
        tm = torch.stack([s.target_mask for s in samples])
        full.append(tm)
        masks.append(to_sam_padded_frame(tm, long_side=sam.img_size, frame_size=low))
        xyxy = torch.stack([s.target_box for s in samples])
        xyxy = xyxy + torch.tensor([0.0, 0.0, 1.0, 1.0]) * (xyxy.abs().sum(-1, keepdim=True) > 0)
        boxes.append(canvas_boxes(xyxy, size, size=cfg.clip_image_size))
        scene_idx += [s for s in idx for _ in range(per)]
        text_idx += texts.add([s.text for s in samples])
        inst += [s.instance_masks for s in samples]
        kinds += [s.kind for s in samples]
    return Split(
        clip=ClipDenseOutput(features=torch.cat(clip_f), cls=torch.cat(clip_c))
        if clip_frozen
        else None,
        images=None if clip_frozen else torch.cat(ims),
        sam=torch.cat(sam_e),
        scene=torch.tensor(scene_idx),
        text=torch.tensor(text_idx),
        masks=torch.cat(masks).to(device),
        full_masks=torch.cat(full),
        boxes=torch.cat(boxes).to(device),
        has_target=torch.cat(full).flatten(1).any(1).to(device),
        instances=inst,
        kinds=kinds,
        original_size=(int(size[0]), int(size[1])),
        input_size=emb.input_size,
    )


def run_batch(model: SSPSAM, split: Split, text: TextEmbedding, idx: Tensor, *, upsample: bool):
    scenes = split.scene[idx].to(split.sam.device)
    if split.clip is not None:
        clip = ClipDenseOutput(features=split.clip.features[scenes], cls=split.clip.cls[scenes])
    else:  # CLIP trains: encode every distinct scene of the batch once
        assert split.images is not None
        unique, inverse = scenes.unique(return_inverse=True)
        c = model.encode_clip(split.images[unique])
        clip = ClipDenseOutput(features=c.features[inverse], cls=c.cls[inverse])
    emb = ImageEmbedding(split.sam[scenes], split.input_size, split.original_size)
    return model(
        None,
        text=_select_text(text, split.text[idx].to(split.sam.device)),
        clip_features=clip,
        sam_embeddings=emb,
        upsample=upsample,
    )


def evaluate(
    model: SSPSAM,
    split: Split,
    text: TextEmbedding,
    batch_size: int,
    by_kind: dict[str, dict[str, float]] | None = None,
) -> dict[str, float]:
    """Standard metrics; fills `by_kind` with per-kind mean IoU and `has_target` rate if given."""
    model.eval()
    metrics = ReferringMetrics()
    ious, decided = [], []
    with torch.no_grad():
        for start in range(0, len(split.scene), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(split.scene)))
            out = run_batch(model, split, text, idx, upsample=True)
            assert out.logits is not None
            # the mask and the model's no-target decision, scored as ReLA does
            pred, has = (out.logits[:, 0] > 0).cpu(), out.has_target.cpu()
            gt = split.full_masks[idx]
            metrics.update(pred, gt, has_target=has)
            ious.append(referring_iou(pred, gt, has_target=has)[2])
            decided.append(out.has_target.cpu())
    model.train()
    if by_kind is not None:
        iou, has = torch.cat(ious), torch.cat(decided).float()
        for kind in sorted(set(split.kinds)):
            sel = torch.tensor([k == kind for k in split.kinds])
            by_kind[kind] = {
                "count": int(sel.sum()),
                "iou": float(iou[sel].mean()),
                "has_target_rate": float(has[sel].mean()),
            }
    return metrics.compute()


def baselines(split: Split) -> dict[str, dict[str, float]]:
    """Trivial predictors: always empty, union of all objects, largest object."""
    out = {}
    rules = {
        "empty": lambda m: torch.zeros(m.shape[1:], dtype=torch.bool),
        "union": lambda m: m.any(0),
        "largest": lambda m: (
            m[m.flatten(1).sum(-1).argmax()]
            if len(m)
            else torch.zeros(m.shape[1:], dtype=torch.bool)
        ),
    }
    for name, rule in rules.items():
        metrics = ReferringMetrics()
        preds = torch.stack([rule(m) for m in split.instances])
        metrics.update(preds, split.full_masks)
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


def trainable_state(model: SSPSAM) -> dict[str, Tensor]:
    prefixes = tuple(f"{n}." for n in model.heads()) + ("sam.mask_decoder.",)
    if model.config.clip_trainable == "visual":
        prefixes += ("clip.model.visual.",)
    return {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if k.startswith(prefixes)
    }


def lr_factor(step: int, progress: float, warmup_steps: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from 1 to 0.05 over `progress` in [0, 1]."""
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def save(out: Path, model: SSPSAM, opt, step: int, args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(out / "model.safetensors"))
    torch.save(
        {
            "optimizer": opt.state_dict(),
            "step": step,
            "rng": torch.get_rng_state(),
        },
        out / "state.pt",
    )
    cfg = {"config": config_dict(model.config), "args": {k: str(v) for k, v in vars(args).items()}}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


def load(out: Path, model: SSPSAM, opt) -> int:
    kind = "SSP-SAM resume state"
    weights = read_checkpoint(out / "model.safetensors", kind=kind)
    missing = set(trainable_state(model)) - set(weights)
    if missing:
        raise RuntimeError(f"checkpoint lacks {sorted(missing)[:5]}")
    model.load_state_dict(weights, strict=False)
    state = read_checkpoint(out / "state.pt", kind=kind)
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    overrides = parse_overrides([*DEFAULT_OVERRIDES, *args.set])
    model = build_ssp_sam(args.preset, lr=args.lr, decoder_lr=args.decoder_lr, **overrides)
    if model.config.clip_trainable not in ("none", "visual"):
        raise SystemExit(
            "this example caches CLIP text states; clip_trainable must be 'none' or 'visual', "
            f"got {model.config.clip_trainable!r}"
        )
    model = model.to(device)
    t0 = time.time()
    texts = TextCache()
    kw = {"size": args.image_size, "seed": args.seed}
    train = build_split(
        model, SyntheticReferringDataset(num_scenes=args.train_scenes, **kw), texts, device
    )
    val = build_split(
        model,
        SyntheticReferringDataset(num_scenes=args.val_scenes, split="val", **kw),
        texts,
        device,
    )
    text = texts.build(model, device)
    cache_s = time.time() - t0

    opt = torch.optim.AdamW(model.param_groups())
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    step = load(args.out, model, opt) if args.resume and (args.out / "state.pt").exists() else 0
    criterion = ReferringLoss(presence_weight=args.presence_weight)
    gen = torch.Generator().manual_seed(args.seed + step)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    history: list[dict[str, float]] = []
    t1 = time.time()
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, desc="ssp-sam")
    while step < args.steps:
        elapsed = time.time() - t1
        if args.time_limit and elapsed > args.time_limit:
            break
        # the cosine follows the steps, or the clock when a time limit would cut the steps short
        progress = step / max(args.steps, 1)
        if args.time_limit:
            progress = max(progress, elapsed / args.time_limit)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, progress, args.warmup_steps)
        model.set_decoder_frozen(step < args.decoder_freeze_steps)
        idx = torch.randint(len(train.scene), (args.batch_size,), generator=gen)
        with autocast:
            out = run_batch(model, train, text, idx, upsample=False)
            terms = criterion(
                out.low_res_logits.float(),
                train.masks[idx, None].float(),
                out.boxes.float(),
                train.boxes[idx],
                out.target_logits.float() if out.target_logits is not None else None,
                train.has_target[idx],
            )
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for g in opt.param_groups for p in g["params"]], args.clip_grad
        )
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{terms.total.item():.3f}")
        if step % args.eval_every == 0 or step == args.steps:
            r = evaluate(model, val, text, 4 * args.batch_size)
            history.append({"step": step, **r})
            bar.write(
                f"step {step}: val gIoU {r['giou']:.3f} cIoU {r['ciou']:.3f} N-acc {r['n_acc']:.3f}"
            )
        if step % args.save_every == 0:
            save(args.out, model, opt, step, args)
    bar.close()
    train_s = time.time() - t1
    save(args.out, model, opt, step, args)
    kinds: dict[str, dict[str, float]] = {}
    final = evaluate(model, val, text, 4 * args.batch_size, by_kind=kinds)
    base = baselines(val)
    table = print_table(
        {"ssp-sam": final, **{f"always {k}" if k == "empty" else k: v for k, v in base.items()}}
    )
    for kind, r in kinds.items():
        print(
            f"{kind:<8} n={r['count']:<4} mean IoU {r['iou']:.3f}"
            f"  judged to have a target {r['has_target_rate']:.3f}"
        )
    result = {
        "metrics": final,
        "by_kind": kinds,
        "baselines": base,
        "best_baseline_giou": max(v["giou"] for v in base.values()),
        "steps": step,
        "train_seconds": train_s,
        "cache_seconds": cache_s,
        "history": history,
        "table": table,
    }
    (args.out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(f"trained {step} steps in {train_s:.0f} s (+{cache_s:.0f} s caching)")
    return result


if __name__ == "__main__":
    main()
