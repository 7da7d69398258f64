"""Pretraining runs: recipes, the engine run, the fp16 export and the quality report.

`pretrain(kind, out_dir, recipe=...)` trains one backbone with `samkit.engine.Trainer`, writes
the engine's run folder (checkpoints, `log.jsonl`) plus:

* `weights.safetensors`: the trained weights in float16 (what samkit ships as `tiny-synth`);
* `quality.json`: the figures of `samkit.pretrain.report` on held-out generated scenes;
* `recipe.json`: the recipe, so the run can be repeated exactly.

`samkit pretrain sam|clip` is the command line for it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from samkit._io import write_atomic
from samkit.data.writers import write_json

__all__ = ["RECIPES", "PretrainRecipe", "export_fp16", "pretrain"]


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines a pretraining run.

    Attributes:
        kind: `"sam"` or `"clip"`.
        arch: The backbone architecture (`build_sam_backbone` / `build_clip_backbone` name).
        steps: Optimizer steps.
        batch_size: Scenes (SAM) or image-caption pairs (CLIP) per step, over all processes
            (under `torchrun` each process takes an equal share).
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warmup.
        min_lr_ratio: Cosine floor, as a fraction of `lr`.
        grad_clip: Max gradient norm.
        seed: Seed of the weights, the data order and every random draw.
        options: Task options (`SamPretrainTask` / `ClipPretrainTask` keyword arguments).
    """

    kind: str
    arch: str
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.1
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    grad_clip: float | None = 1.0
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, PretrainRecipe] = {
    "sam/tiny-synth": PretrainRecipe(
        kind="sam",
        arch="tiny-synth",
        steps=6000,
        batch_size=8,
        lr=1e-3,
        options={"prompts_per_image": 4, "correction_rounds": 1},
    ),
    "clip/tiny-synth": PretrainRecipe(
        kind="clip",
        arch="tiny-synth",
        steps=2000,
        batch_size=48,
        lr=1e-3,
        weight_decay=0.1,
        options={"dense_weight": 1.0, "partial_caption": 0.3},
    ),
}
"""The recipes of the shipped `tiny-synth` weights, by `"<kind>/<preset>"`."""


def export_fp16(module: nn.Module, path: str | Path) -> str:
    """Write `module`'s state dict as float16 safetensors, atomically; return its SHA-256.

    Floating tensors are cast to float16; others are kept. Parametrizations are not expected
    (the exported state dict must load into a freshly built module).
    """
    state = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in module.state_dict().items()
    }
    data = save_safetensors(state)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def pretrain(
    kind: str,
    out_dir: str | Path,
    *,
    preset: str = "tiny-synth",
    steps: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    progress: bool = True,
    evaluate_scenes: int = 200,
) -> dict[str, Any]:
    """Pretrain a tiny backbone, export it in float16 and measure it.

    Args:
        kind: `"sam"` or `"clip"`.
        out_dir: The run folder.
        preset: The recipe name (`RECIPES["<kind>/<preset>"]`).
        steps: Override the recipe's steps (shorter runs for tests).
        seed: Override the recipe's seed.
        resume: Continue the run in `out_dir` from its last checkpoint.
        progress: Show progress bars (on stderr).
        evaluate_scenes: Held-out scenes (SAM) or crops per combination group (CLIP) measured.

    Returns:
        The quality report (also written to `quality.json`), with `sha256` and `minutes`.

    Raises:
        ValueError: For an unknown kind or preset.
    """
    key = f"{kind}/{preset}"
    if key not in RECIPES:
        raise ValueError(f"kind/preset: expected one of {sorted(RECIPES)}, got {key!r}")
    recipe = RECIPES[key]
    if steps is not None:
        recipe = replace(recipe, steps=steps)
    if seed is not None:
        recipe = replace(recipe, seed=seed)
    from samkit.engine.distributed import init_distributed, is_main_process, world_size

    init_distributed()
    if recipe.batch_size % world_size():
        raise ValueError(
            f"batch_size {recipe.batch_size} of recipe {key!r} must divide evenly over "
            f"{world_size()} processes"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        write_json(out / "recipe.json", asdict(recipe), indent=2)
    # Tiny models trained from scratch on CPU produce denormal floats that slow every step by an
    # order of magnitude; flushing them to zero changes nothing measurable. The mode covers the
    # whole run (the weights were made with it) and is restored on return.
    from samkit.engine.numerics import denormals_flushed

    with denormals_flushed():
        return _pretrain(kind, recipe, key, out, resume, progress, evaluate_scenes)


def _pretrain(
    kind: str,
    recipe: PretrainRecipe,
    key: str,
    out: Path,
    resume: bool,
    progress: bool,
    evaluate_scenes: int,
) -> dict[str, Any]:
    """`pretrain`'s run (training, export and measurement) inside its floating-point mode."""
    from samkit.engine import TrainConfig, Trainer
    from samkit.engine.distributed import broadcast_object, is_main_process, world_size

    torch.manual_seed(recipe.seed)
    task, train_data, val_data = _build(recipe)
    config = TrainConfig(
        steps=recipe.steps,
        batch_size=recipe.batch_size // world_size(),
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        warmup_steps=min(recipe.warmup_steps, recipe.steps),
        min_lr_ratio=recipe.min_lr_ratio,
        grad_clip=recipe.grad_clip,
        seed=recipe.seed,
        eval_every=max(recipe.steps // 4, 1),
        log_every=25,
        checkpoint_every=max(min(500, recipe.steps), 1),
        keep_last=2,
        eval_batch_size=8,
        progress=progress,
    )
    start = time.perf_counter()
    Trainer(task, train_data, config, out, val_data=val_data).fit(resume=resume)
    minutes = (time.perf_counter() - start) / 60.0
    report: dict[str, Any] = {}
    if is_main_process():  # under torchrun every rank holds the same weights; rank 0 writes
        model = task.model
        model.eval()
        sha = export_fp16(model, out / "weights.safetensors")
        from samkit.pretrain.report import measure

        report = measure(kind, model, num=evaluate_scenes)
        report.update(
            {
                "sha256": sha,
                "minutes_this_process": round(minutes, 2),
                "recipe": key,
                "processes": world_size(),
                "threads_per_process": torch.get_num_threads(),
            }
        )
        write_json(out / "quality.json", report, indent=2)
    return dict(broadcast_object(report))


def _build(recipe: PretrainRecipe) -> tuple[Any, Any, Any]:
    """The task, training data and validation data of a recipe."""
    if recipe.kind == "sam":
        from samkit.backbones.sam import SamBackbone, build_sam_backbone
        from samkit.pretrain.sam import FamilySceneDataset, SamPretrainTask

        sam = build_sam_backbone(recipe.arch, pretrained=False)
        if not isinstance(sam, SamBackbone):
            raise ValueError(f"arch: pretraining builds SAM (ViT) backbones, not {recipe.arch!r}")
        scenes = FamilySceneDataset(length=recipe.steps * recipe.batch_size + 1)
        return (
            SamPretrainTask(sam, **recipe.options),
            scenes,
            FamilySceneDataset(length=32, offset=10**8),
        )
    from samkit.backbones.clip import build_clip_backbone
    from samkit.pretrain.clip import ClipPairDataset, ClipPretrainTask

    clip = build_clip_backbone(recipe.arch, pretrained=False)
    pairs = ClipPairDataset(length=recipe.steps * recipe.batch_size + 1)
    return (
        ClipPretrainTask(clip, **recipe.options),
        pairs,
        ClipPairDataset(length=256, offset=10**8, heldout=True),
    )
