"""The engine's guarantees hold for the three real systems, not only for the toy task.

For SSP-SAM, SAM-CP and SAM-MI (tiny presets, synthetic scenes of 32-48 px):

* a run resumed from a checkpoint ends with every tensor of the state dict equal to the
  uninterrupted run's (shuffled data, SSP-SAM's dropout, SAM-MI's Bernoulli point draws from the
  global RNG; SAM-MI resumed inside each of its two stages);
* one optimizer step on 2 gloo processes with batch b each equals one process with batch 2b: the
  gradients (AdamW's first moments) and the parameters after the step. The batches hold
  different numbers of boxes, matched things and void pixels per rank, so this also checks that
  the losses' count normalisers are reduced over the ranks;
* the DDP steps raise nothing, so no system needs `find_unused_parameters` (SAM-MI in both stages);
* evaluation on 2 processes gives the metrics of 1 (an odd number of samples).

All DDP runs happen in one pair of spawned processes (`_worker`), shared by the tests.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as tmp_mp
from torch.utils.data import Dataset, Subset

from samkit.data.datasets import (
    SyntheticPanopticDataset,
    SyntheticReferringDataset,
    SyntheticSemanticDataset,
)
from samkit.data.synthetic import CLASS_NAMES, NUM_THING_CLASSES
from samkit.engine import (
    TrainConfig,
    Trainer,
    distributed,
    evaluate,
    list_checkpoints,
    load_checkpoint,
)
from samkit.modules.patch_encoder import TinyFeaturePyramid
from samkit.systems.sam_cp import build_sam_cp
from samkit.systems.sam_mi import build_sam_mi
from samkit.systems.ssp_sam import build_ssp_sam
from samkit.systems.tasks import build_task

SYSTEMS = ("ssp_sam", "sam_cp", "sam_mi")
WORLD = 2
DDP_LR = 4e-7


class VoidBand(Dataset):
    """Semantic samples with a void (255) band whose height depends on the index.

    Real semantic data has void pixels in varying amounts, which makes the per-rank count of
    valid pixels (SAM-MI's cross-entropy normaliser) differ between ranks.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        sample = self.base[i]
        semantic = sample.semantic.clone()
        semantic[: 3 * (i % 4)] = 255
        return dataclasses.replace(sample, semantic=semantic)


def make_task(system: str, seed: int, *, random: bool = True, lr: float | None = None) -> Any:
    """A tiny system's task.

    `random=False` switches its training-time randomness off; `lr` sets the learning rate of
    every parameter group the system configures itself (SAM-CP's groups take the run's).
    """
    torch.manual_seed(seed)
    if system == "ssp_sam":
        p = 0.1 if random else 0.0
        rates = {} if lr is None else {"lr": lr, "decoder_lr": lr, "clip_lr": lr}
        model: torch.nn.Module = build_ssp_sam(
            "tiny", target_head=True, adapter_dropout=p, encoder_dropout=p, **rates
        )
    elif system == "sam_cp":
        model = build_sam_cp("tiny", build_proposer=False)
        if not random:
            # The tiny preset's pyramid uses BatchNorm, whose training-mode statistics are per
            # rank: 2 x b is not 2b there (SyncBatchNorm needs a GPU). The real backbones use
            # FrozenBatchNorm2d (ResNet) or LayerNorm (Swin, ConvNeXt): per-image GroupNorm
            # stands in for them.
            model.feature_extractor = TinyFeaturePyramid(dim=model.config.dim, norm="group")
    else:
        # random: Bernoulli draws from the global RNG; else each image's draws are seeded
        rates = {} if lr is None else {"lr": lr}
        seed_rule = None if random else 0
        model = build_sam_mi("tiny", grid=8, g_p=2.0, sample_seed=seed_rule, **rates)
    return build_task(system, model, class_names=CLASS_NAMES, num_things=NUM_THING_CLASSES)


def make_eval_task(system: str) -> Any:
    """A task whose untrained predictions are not all empty, so that the metrics are not 0.

    SSP-SAM decides "target" from its mask (no presence head, any positive pixel counts) and
    SAM-CP keeps every query.
    """
    torch.manual_seed(0)
    if system == "ssp_sam":
        model: torch.nn.Module = build_ssp_sam("tiny", has_target_min_fraction=0.0)
    elif system == "sam_cp":
        model = build_sam_cp(
            "tiny", build_proposer=False, object_mask_threshold=0.0, affinity_threshold=0.0
        )
    else:
        model = build_sam_mi("tiny", grid=8, g_p=2.0)
    return build_task(system, model, class_names=CLASS_NAMES, num_things=NUM_THING_CLASSES)


def make_data(system: str, split: str) -> Dataset:
    """Training data (4 or 6 samples) or validation data (an odd number: 3 samples)."""
    n = 6 if split == "train" else 3
    if system == "ssp_sam":
        # 4 expressions per scene; 4 training samples, one without a referent: the two ranks'
        # first batches of 2 always hold different numbers of target boxes (1 and 2)
        ds = SyntheticReferringDataset(num_scenes=2, size=48, seed=1, split=split)
        return Subset(ds, (0, 1, 2, 4) if split == "train" else range(n))
    if system == "sam_cp":
        return SyntheticPanopticDataset(num_scenes=n, size=48, parts=True, split=split)
    return VoidBand(SyntheticSemanticDataset(num_scenes=n, size=32, split=split))


def stage_steps(system: str, per_stage: int) -> int | tuple[int, int]:
    return (per_stage, per_stage) if system == "sam_mi" else per_stage


def config(system: str, per_stage: int, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        steps=stage_steps(system, per_stage),
        batch_size=2,
        lr=1e-3,
        warmup_steps=1,
        grad_clip=1.0,
        log_every=1,
        checkpoint_every=1,
        keep_last=None,
        seed=3,
        progress=False,
        device="cpu",  # gloo, also where CUDA is present
    )
    base.update(kw)
    return TrainConfig(**base)


def state(task: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


# ---------------------------------------------------------------------------- DDP worker


def _ddp_config(system: str, batch_size: int) -> TrainConfig:
    """One step per stage, no warmup, no clipping, and a learning rate of 4e-7.

    AdamW's first step moves each parameter by about `lr * sign(gradient)`. Some parameters get
    a gradient that is zero in exact arithmetic and float noise in practice (attention key
    biases, a bias before a softmax): their sign differs between batch 2b and 2 x b, so equal
    parameters within `atol=1e-6` need `2 * lr < 1e-6`. The gradients themselves (the first
    moments) are compared separately, at float precision.
    """
    return config(system, 1, batch_size=batch_size, warmup_steps=0, grad_clip=None, lr=DDP_LR)


def _worker(rank: int, tmp: str, port: int) -> None:
    import os

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    assert distributed.init_distributed(backend="gloo")
    root = Path(tmp)
    results: dict[str, Any] = {}
    for system in SYSTEMS:
        out: dict[str, Any] = {"error": "", "eval": {}, "eval_error": ""}
        task = make_task(system, 0, random=False, lr=DDP_LR)
        try:
            run_dir = root / system if rank == 0 else root / f"{system}_rank1"
            Trainer(task, make_data(system, "train"), _ddp_config(system, 2), run_dir).fit()
        except Exception as err:  # reported by the tests, per system
            out["error"] = f"{type(err).__name__}: {err}"
        out["params"] = state(task)
        try:
            out["eval"] = evaluate(
                make_eval_task(system),
                make_data(system, "val"),
                batch_size=1,
                device="cpu",
                progress=False,
            )
        except Exception as err:
            out["eval_error"] = f"{type(err).__name__}: {err}"
        results[system] = out
    gathered = distributed.all_gather_object(results)
    if rank == 0:
        torch.save({"ranks": gathered}, root / "results.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    if sys.platform == "win32" or not torch.distributed.is_available():
        pytest.skip("needs gloo")
    root = tmp_path_factory.mktemp("ddp_systems")
    tmp_mp.spawn(_worker, args=(str(root), _free_port()), nprocs=WORLD, join=True)
    ranks = torch.load(root / "results.pt", weights_only=True)["ranks"]
    return root, ranks


# ---------------------------------------------------------------------------- resume


def _resume_from(
    src: Path, dst: Path, step: int, system: str, cfg: TrainConfig
) -> dict[str, torch.Tensor]:
    """Copy the run, drop its checkpoints after `step`, resume a fresh task from it."""
    shutil.copytree(src, dst)
    for path in list_checkpoints(dst):
        if load_checkpoint(path)["step"] > step:
            path.unlink()
    task = make_task(system, 1)  # another init: everything must come from the checkpoint
    Trainer(task, make_data(system, "train"), cfg, dst).fit(resume=True)
    return state(task)


def _assert_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.parametrize("system", SYSTEMS)
def test_resumed_run_equals_the_uninterrupted_run(system: str, tmp_path: Path) -> None:
    per_stage = 2 if system == "sam_mi" else 3
    cfg = config(system, per_stage)
    task = make_task(system, 0)
    initial = state(task)
    Trainer(task, make_data(system, "train"), cfg, tmp_path / "full").fit()
    want = state(task)
    assert any(not torch.equal(want[k], initial[k]) for k in want), "training changed nothing"
    # 4 or 6 samples, batch 2: 2 or 3 batches per epoch. SAM-MI: inside stage 1 (step 1 of 2)
    # and inside stage 2 (step 3 of 4); the others mid-epoch (step 1 of 3), running on into
    # the next epoch.
    resume_steps = (1, 3) if system == "sam_mi" else (1,)
    for k in resume_steps:
        got = _resume_from(tmp_path / "full", tmp_path / f"from_{k}", k, system, cfg)
        _assert_equal(got, want)


# ---------------------------------------------------------------------------- DDP


def _exp_avgs(checkpoint: Path) -> dict[int, torch.Tensor]:
    states = load_checkpoint(checkpoint)["optimizer"]["state"]
    return {int(i): s["exp_avg"] for i, s in states.items()}


@pytest.mark.parametrize("system", SYSTEMS)
def test_ddp_steps_need_no_unused_parameter_search(system: str, ddp: Any) -> None:
    _, ranks = ddp
    for rank in ranks:
        assert rank[system]["error"] == ""


@pytest.mark.parametrize("system", SYSTEMS)
def test_two_processes_with_batch_b_equal_one_with_batch_2b(
    system: str, ddp: Any, tmp_path: Path
) -> None:
    root, ranks = ddp
    assert all(rank[system]["error"] == "" for rank in ranks)
    task = make_task(system, 0, random=False, lr=DDP_LR)
    initial = state(task)
    Trainer(task, make_data(system, "train"), _ddp_config(system, 4), tmp_path).fit()
    reference = state(task)
    changed = [k for k in reference if not torch.equal(reference[k], initial[k])]
    assert changed, "the step changed no parameter"
    for rank in ranks:
        for name, value in reference.items():
            torch.testing.assert_close(rank[system]["params"][name], value, atol=1e-6, rtol=0)
    # the gradients of every stage (AdamW's first moments, 0.1 x the gradient): a loss
    # normaliser counted per rank would scale them by tens of percent; float noise is ~1e-5
    mine = list_checkpoints(tmp_path)
    theirs = list_checkpoints(root / system)
    assert [p.name for p in mine] == [p.name for p in theirs]
    for a, b in zip(mine, theirs, strict=True):
        ours, ddp_avgs = _exp_avgs(a), _exp_avgs(b)
        assert ours.keys() == ddp_avgs.keys()
        scale = max(float(m.abs().max()) for m in ours.values())
        assert scale > 0
        for i in ours:
            tol = 1e-4 * float(ours[i].abs().max()) + 1e-6 * scale
            torch.testing.assert_close(ddp_avgs[i], ours[i], atol=tol, rtol=0)


def _same_metrics(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert (math.isnan(value) and math.isnan(got[key])) or got[key] == pytest.approx(
            value, rel=1e-6, abs=1e-9
        ), key


@pytest.mark.parametrize("system", SYSTEMS)
def test_evaluation_on_two_processes_gives_the_metrics_of_one(system: str, ddp: Any) -> None:
    _, ranks = ddp
    one = evaluate(
        make_eval_task(system), make_data(system, "val"), batch_size=1, device="cpu", progress=False
    )
    nonzero = {"ssp_sam": "giou", "sam_cp": "pq", "sam_mi": "mIoU"}[system]
    assert one[nonzero] > 0  # metrics that can tell the shards apart
    for rank in ranks:
        assert rank[system]["eval_error"] == ""
        _same_metrics(rank[system]["eval"], one)


# ---------------------------------------------------------------------------- augmentation


def _first_batch(system: str, augment: str | None, out: Path) -> tuple[Any, dict[str, Any]]:
    """Train one step per stage; the first batch `training_step` saw and the final state."""
    task = make_task(system, 0)
    seen: list[Any] = []
    step = task.training_step

    def recording(batch: Any, stage: int) -> Any:
        seen.append(batch)
        return step(batch, stage)

    task.training_step = recording
    initial = state(task)
    Trainer(task, make_data(system, "train"), config(system, 1, augment=augment), out).fit()
    trained = state(task)
    assert any(not torch.equal(trained[k], initial[k]) for k in trained), "nothing trained"
    assert all(torch.isfinite(v).all() for v in trained.values() if v.is_floating_point())
    return seen[0], trained


@pytest.mark.parametrize("system", SYSTEMS)
def test_training_with_augmentation_runs_and_augments(system: str, tmp_path: Path) -> None:
    plain, _ = _first_batch(system, None, tmp_path / "plain")
    augmented, _ = _first_batch(system, "affine", tmp_path / "affine")
    assert type(augmented) is type(plain)
    assert augmented.images.shape == plain.images.shape
    assert not torch.equal(augmented.images, plain.images)
    if system == "ssp_sam":  # flips only: each target mask is the original or its mirror
        for a, p in zip(augmented.target_masks, plain.target_masks, strict=True):
            assert torch.equal(a, p) or torch.equal(a, p.flip(-1))
    else:  # the labels moved with the images and kept their values (plus void)
        assert not torch.equal(augmented.semantic, plain.semantic)
        labels = set(plain.semantic.unique().tolist())
        assert set(augmented.semantic.unique().tolist()) <= labels | {255}


def test_resumed_run_with_augmentation_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    system = "sam_cp"
    cfg = config(system, 3, augment="affine")
    task = make_task(system, 0)
    Trainer(task, make_data(system, "train"), cfg, tmp_path / "full").fit()
    want = state(task)
    _assert_equal(_resume_from(tmp_path / "full", tmp_path / "from_1", 1, system, cfg), want)
