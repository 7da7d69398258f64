"""CLIP pretraining: captions and their positives, learning, held-out combinations."""

from __future__ import annotations

import torch

from samkit.backbones.clip import build_clip_backbone
from samkit.data.synthetic import CLASS_NAMES, COLOR_NAMES
from samkit.pretrain.clip import (
    HELDOUT_COMBOS,
    SEEN_COMBOS,
    ClipPairDataset,
    ClipPretrainTask,
    _vocabulary,
)


def _task() -> ClipPretrainTask:
    torch.manual_seed(0)
    return ClipPretrainTask(build_clip_backbone("tiny"), partial_caption=0.5)


def test_heldout_combinations_never_reach_training() -> None:
    assert not SEEN_COMBOS & HELDOUT_COMBOS
    data = ClipPairDataset(length=300)
    drawn = {(c.color, c.shape) for c, _ in (data[i] for i in range(300)) if c.color}
    assert drawn <= SEEN_COMBOS and len(drawn) == len(SEEN_COMBOS)
    held = ClipPairDataset(length=60, heldout=True)
    assert {
        (c.color, c.shape) for c, _ in (held[i] for i in range(60)) if c.color
    } <= HELDOUT_COMBOS


def test_every_true_caption_is_a_positive() -> None:
    task = _task()
    data = ClipPairDataset(length=64, scene_every=1000)
    batch = task.collate([data[i] for i in range(64)])
    texts, positive = task._captions(batch)
    assert len(texts) == positive.shape[1] == len(set(texts))
    for i in range(64):
        color = COLOR_NAMES[batch.colors[i]] if batch.colors[i] >= 0 else None
        shape = CLASS_NAMES[batch.shapes[i]]
        for j, text in enumerate(texts):
            words = set(text.lower().replace(".", "").split())
            names_shape = shape in words
            names_color = any(c in words for c in COLOR_NAMES)
            if color is None:  # stuff: only its own name
                truth = names_shape and not names_color
            else:
                color_ok = color in words or not names_color
                shape_ok = names_shape or (
                    "shape" in words and not any(s in words for s in CLASS_NAMES)
                )
                truth = color_ok and shape_ok and (names_shape or names_color)
            assert bool(positive[i, j]) == truth, (text, color, shape)
        assert bool(positive[i].any())


def test_training_step_learns_crops_and_dense_alignment() -> None:
    task = _task()
    groups = task.configure_stage(0)
    data = ClipPairDataset(length=32, crop_size=32, scene_size=64, scene_every=8)
    batch = task.collate([data[i] for i in range(32)])
    task.model.train()
    opt = torch.optim.AdamW(groups, lr=3e-3)
    first = None
    for _ in range(30):
        torch.manual_seed(0)  # the same captions every step: a fixed objective
        out = task.training_step(batch, 0)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = float(out["loss"].detach()) if first is None else first
    assert "dense" in out and float(out["loss"].detach()) < 0.6 * first


def test_vocabulary_covers_every_combination_and_stuff() -> None:
    names, index = _vocabulary()
    assert len(names) == len(set(names)) == len(index) == 6 * 4 + 5


def test_pretrain_clip_output_loads_through_the_builder(tmp_path) -> None:
    """`samkit pretrain clip`'s weights file is a checkpoint `build_clip_backbone` accepts."""
    import warnings

    from safetensors.torch import load_file

    from samkit.cli import main

    out = tmp_path / "run"
    args = ["pretrain", "clip", "--out", str(out), "--steps", "2", "--eval-scenes", "1"]
    assert main([*args, "--no-progress"]) == 0
    path = out / "weights.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float16 throughout: the activation is a guess
        clip = build_clip_backbone("tiny-synth", checkpoint=path, quick_gelu=False)
    saved = load_file(path)
    state = clip.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(state[k], saved[k].float()) for k in saved)
