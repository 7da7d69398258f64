"""The Trainer: schedule, accumulation, bit-exact resume, logs, clear errors."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from samkit.engine import (
    Task,
    TrainConfig,
    Trainer,
    build_scheduler,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from tests.engine._toy import ToyData, make_task, params


def _config(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        steps=6,
        batch_size=2,
        lr=1e-2,
        warmup_steps=2,
        min_lr_ratio=0.1,
        grad_clip=1.0,
        log_every=1,
        checkpoint_every=1,
        keep_last=None,
        seed=3,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _fit(
    out: Path,
    config: TrainConfig,
    *,
    seed: int = 0,
    resume: bool = False,
    val: Any = None,
    **task_kw: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    task = make_task(seed, **task_kw)
    metrics = Trainer(task, ToyData(10), config, out, val_data=val).fit(resume=resume)
    return params(task), metrics


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_toy_task_implements_the_protocol() -> None:
    assert isinstance(make_task(), Task)


def test_schedule_warms_up_then_decays_each_group_to_its_floor() -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    v = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [w], "lr": 1.0}, {"params": [v], "lr": 0.01}])
    sched = build_scheduler(opt, steps=12, warmup_steps=3, min_lr_ratio=0.1)
    lrs = []
    for _ in range(12):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    lrs.append([g["lr"] for g in opt.param_groups])
    first = [r[0] for r in lrs]
    assert first[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a > b for a, b in zip(first[3:], first[4:], strict=False))  # cosine decreases
    assert first[-1] == pytest.approx(0.1)  # floor after the last step
    assert [r[1] for r in lrs] == pytest.approx([0.01 * f for f in first])  # per-group floor


def test_accumulating_two_micro_batches_equals_one_double_batch(tmp_path: Path) -> None:
    kw = dict(steps=2, warmup_steps=0, grad_clip=None, checkpoint_every=100)  # 8 of 10 samples
    a, _ = _fit(tmp_path / "a", _config(batch_size=4, **kw), dropout=0.0, jitter=0.0)
    b, _ = _fit(tmp_path / "b", _config(batch_size=2, accumulate=2, **kw), dropout=0.0, jitter=0.0)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    ca, cb = (load_checkpoint(latest_checkpoint(p)) for p in (tmp_path / "a", tmp_path / "b"))
    for s in ca["optimizer"]["state"]:  # first moments = gradients: equal too
        torch.testing.assert_close(
            ca["optimizer"]["state"][s]["exp_avg"],
            cb["optimizer"]["state"][s]["exp_avg"],
            atol=1e-7,
            rtol=1e-5,
        )


def _resume_matches(tmp_path: Path, config: TrainConfig, at: list[int], **task_kw: Any) -> None:
    full = tmp_path / "full"
    reference, _ = _fit(full, config, **task_kw)
    assert [int(p.stem.split("_")[1]) for p in list_checkpoints(full)] == list(
        range(1, sum(config.stage_steps(make_task(**task_kw).stages)) + 1)
    )
    for k in at:
        run = tmp_path / f"resume_{k}"
        shutil.copytree(full, run)
        for p in list_checkpoints(run):
            if int(p.stem.split("_")[1]) > k:
                p.unlink()
        # another init: resuming must load the weights, not keep them
        resumed, _ = _fit(run, config, seed=100 + k, resume=True, **task_kw)
        _assert_same(reference, resumed)


def test_resume_is_bit_exact_mid_epoch_with_dropout_augmentation_accumulation(
    tmp_path: Path,
) -> None:
    # 10 samples / batch 2 = 5 micro-batches per epoch, 2 per step: steps 1, 3 end mid-epoch
    config = _config(accumulate=2)
    state = load_checkpoint(
        _fit(tmp_path / "probe", config)[0] and list_checkpoints(tmp_path / "probe")[2]
    )
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 1)
    _resume_matches(tmp_path, config, at=[1, 3, 5])


def test_resume_is_bit_exact_across_two_stages(tmp_path: Path) -> None:
    config = _config(steps=(3, 3), warmup_steps=1)
    _resume_matches(tmp_path, config, at=[2, 3, 4], two_stages=True)  # 3: the stage boundary
    state = load_checkpoint(list_checkpoints(tmp_path / "full")[2])
    assert (state["stage"], state["stage_name"]) == (0, "fit")
    assert load_checkpoint(list_checkpoints(tmp_path / "full")[3])["stage"] == 1


def test_results_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    config = _config(steps=3, checkpoint_every=100)
    a, _ = _fit(tmp_path / "a", config)
    b, _ = _fit(tmp_path / "b", _config(steps=3, checkpoint_every=100, num_workers=2))
    _assert_same(a, b)


def test_a_different_seed_gives_a_different_run(tmp_path: Path) -> None:
    a, _ = _fit(tmp_path / "a", _config(steps=2))
    b, _ = _fit(tmp_path / "b", _config(steps=2, seed=4))
    assert not torch.equal(a["head.weight"], b["head.weight"])


def test_checkpoint_holds_one_consistent_unit(tmp_path: Path) -> None:
    config = _config(steps=4, keep_last=2, checkpoint_every=1)
    final, _ = _fit(tmp_path, config)
    kept = list_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["step_000000003.pt", "step_000000004.pt"]
    state = load_checkpoint(kept[-1])
    assert state["step"] == 4 and state["config"]["steps"] == 4
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "batch_in_epoch"} <= state.keys()
    assert {"torch", "numpy", "python"} <= state["rng"][0].keys()
    _assert_same(final, state["model"])
    assert state["scheduler"]["last_epoch"] == 4


def test_log_has_a_row_per_step_and_eval_rows_and_resume_drops_later_rows(
    tmp_path: Path,
) -> None:
    config = _config(steps=4, eval_every=2)
    _, metrics = _fit(tmp_path, config, val=ToyData(5, seed=9, augment=False))
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert set(train[0]["lr"]) == {"first", "second"}
    assert train[0]["lr"]["first"] == pytest.approx(1e-2 / 3)  # warmup 2: 1/3 of the rate
    assert all(math.isfinite(r["loss"]) and "mse" in r and "time" in r for r in train)
    assert [r["step"] for r in evals] == [2, 4]
    assert metrics == {k: evals[-1][k] for k in ("mse", "count")} and metrics["count"] == 5
    # interrupted after step 2's checkpoint: rows of steps 3-4 and a torn line are dropped
    for p in list_checkpoints(tmp_path)[2:]:
        p.unlink()
    with (tmp_path / "log.jsonl").open("a") as f:
        f.write('{"kind": "train", "st')
    _fit(tmp_path, config, resume=True, val=ToyData(5, seed=9, augment=False))
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in rows] == [
        ("train", 1),
        ("train", 2),
        ("eval", 2),
        ("train", 3),
        ("train", 4),
        ("eval", 4),
    ]


def test_evaluation_does_not_change_the_training_run(tmp_path: Path) -> None:
    val = ToyData(3, seed=9, augment=True)  # draws from the RNG
    a, _ = _fit(tmp_path / "a", _config(steps=4))
    b, _ = _fit(tmp_path / "b", _config(steps=4, eval_every=1), val=val)
    _assert_same(a, b)


def test_existing_run_is_refused_without_resume(tmp_path: Path) -> None:
    _fit(tmp_path, _config(steps=1))
    with pytest.raises(FileExistsError, match="resume=True"):
        _fit(tmp_path, _config(steps=1))


def test_resume_without_checkpoints_starts_fresh_and_a_finished_run_stays(tmp_path: Path) -> None:
    a, _ = _fit(tmp_path / "a", _config(steps=2), resume=True)
    b, _ = _fit(tmp_path / "b", _config(steps=2))
    _assert_same(a, b)
    c, _ = _fit(tmp_path / "a", _config(steps=2), seed=7, resume=True)
    _assert_same(a, c)


def test_changed_configuration_on_resume_warns(tmp_path: Path) -> None:
    _fit(tmp_path, _config(steps=2))
    with pytest.warns(UserWarning, match="batch_size: 2 -> 1"):
        _fit(tmp_path, _config(steps=3, batch_size=1), resume=True)


def test_trainable_parameter_without_gradient_is_named(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"no gradient from training_step: unused"):
        _fit(tmp_path, _config(steps=1), train_unused=True)
    _fit(tmp_path / "ok", _config(steps=1), train_unused=True, use_unused=True)


def test_steps_must_match_the_stages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one step count per stage"):
        _fit(tmp_path, _config(steps=3), two_stages=True)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        _config(batch_size=0)


def test_too_small_data_set_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than batch_size=11"):
        _fit(tmp_path, _config(batch_size=11))


def test_bf16_autocast_trains(tmp_path: Path) -> None:
    before = params(make_task())
    after, _ = _fit(tmp_path, _config(steps=2, precision="bf16"))
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert all(v.dtype == torch.float32 for v in after.values())  # autocast: weights stay fp32


def test_bf16_flag_is_a_deprecated_alias_of_precision(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="precision='bf16'"):
        config = _config(steps=2, bf16=True)
    assert config.precision == "bf16" and "bf16" not in config.to_dict()
    with pytest.warns(DeprecationWarning):
        assert _config(bf16=False).precision == "fp32"
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="contradicts"):
        _config(bf16=False, precision="bf16")
    with pytest.raises(ValueError, match=r"precision: expected one of \['fp32', 'bf16'\]"):
        _config(precision="fp16")
    # the alias trains exactly as precision="bf16" does
    alias, _ = _fit(tmp_path / "alias", config)
    named, _ = _fit(tmp_path / "named", _config(steps=2, precision="bf16"))
    _assert_same(alias, named)


def test_resume_reads_the_bf16_flag_of_older_checkpoints(tmp_path: Path) -> None:
    _fit(tmp_path, _config(steps=2, precision="bf16"))
    path = latest_checkpoint(tmp_path)
    assert path is not None
    state = load_checkpoint(path)
    saved = {k: v for k, v in state["config"].items() if k != "precision"}
    state["config"] = {**saved, "bf16": True}  # what checkpoints held before `precision`
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same precision: no "different configuration" warning
        _fit(tmp_path, _config(steps=2, precision="bf16"), resume=True)
    with pytest.warns(UserWarning, match="precision: 'bf16' -> 'fp32'"):
        _fit(tmp_path, _config(steps=2), resume=True)


def test_augment_names_a_preset_and_needs_a_samkit_batch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"augment must be None or one of \['affine'"):
        _config(augment="strong")
    # the toy task's (x, y) tuples are no samkit batch: the first step says so
    with pytest.raises(TypeError, match="ReferringBatch, PanopticBatch or SemanticBatch"):
        _fit(tmp_path, _config(steps=1, augment="flip"))


def test_changing_the_augmentation_on_resume_warns(tmp_path: Path) -> None:
    _fit(tmp_path, _config(steps=2))
    # (the warning comes before the first step; the toy batches cannot be augmented)
    with pytest.warns(UserWarning, match="augment: None -> 'flip'"), pytest.raises(TypeError):
        _fit(tmp_path, _config(steps=3, augment="flip"), resume=True)
