"""bf16 for every system: `precision="bf16"` autocast, `model.to(torch.bfloat16)`, the engine.

The tolerances were measured on the `tiny` presets (random weights, CPU, seeds 0-3; see
`docs/performance/precision.md`) and set at about twice the worst case seen. Each comparison
is relative to the fp32 output's size, so a silently disabled autocast is caught by the dtype
hooks (bf16 must be seen inside) and garbage by the error bounds (another model's output is
~100% off).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import samkit._precision as precision_module
from samkit._precision import autocast, check_precision, to_float32
from samkit.data.synthetic import CLASS_NAMES, NUM_THING_CLASSES, generate_scene, oversegment
from samkit.engine import Trainer, evaluate
from samkit.modules.visual_adapter import letterbox
from samkit.proposals import patches_from_masks
from samkit.systems import load_pretrained
from samkit.systems.sam_cp import SAMCP, build_sam_cp
from samkit.systems.sam_mi import SAMMI, build_sam_mi
from samkit.systems.ssp_sam import SSPSAM, build_ssp_sam
from samkit.systems.tasks import build_task
from tests.engine.test_systems import config as engine_config
from tests.engine.test_systems import make_data
from tests.engine.test_systems import make_task as make_engine_task

TEXTS = ["a red circle", "all squares"]
NAMES = ["circle", "grass", "sky"]


def rel_error(ref: Tensor, out: Tensor) -> float:
    """`||out - ref|| / ||ref||` in float32."""
    ref, out = ref.float(), out.float()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def sign_agreement(ref: Tensor, out: Tensor) -> float:
    """Fraction of pixels whose logits are on the same side of 0 (the mask threshold)."""
    return float(((ref > 0) == (out > 0)).float().mean())


@contextmanager
def linear_dtypes(model: nn.Module) -> Iterator[dict[str, set[torch.dtype]]]:
    """Record the output dtypes of every `nn.Linear` of `model` while the block runs."""
    seen: dict[str, set[torch.dtype]] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):

            def hook(_m: nn.Module, _i: Any, out: Tensor, name: str = name) -> None:
                seen.setdefault(name, set()).add(out.dtype)

            handles.append(mod.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def under(seen: dict[str, set[torch.dtype]], prefix: str) -> set[torch.dtype]:
    """The dtypes seen by the Linear layers whose names start with `prefix`."""
    out: set[torch.dtype] = set()
    for name, dtypes in seen.items():
        if name.startswith(prefix):
            out |= dtypes
    assert out, f"no Linear layer under {prefix!r} ran"
    return out


def floats(obj: Any) -> list[Tensor]:
    """The floating tensors among the fields of an output dataclass."""
    return [
        v
        for v in vars(obj).values()
        if isinstance(v, Tensor) and v.is_floating_point() and v.numel() > 0
    ]


def _ssp(device: torch.device) -> SSPSAM:
    torch.manual_seed(0)
    return build_ssp_sam("tiny").to(device).eval()


def _cp(device: torch.device, **kw: Any) -> SAMCP:
    torch.manual_seed(0)
    return build_sam_cp("tiny", **kw).to(device).eval()


def _mi(device: torch.device) -> SAMMI:
    torch.manual_seed(0)
    return build_sam_mi("tiny", sampling="deterministic").to(device).eval()


def _ssp_images(device: torch.device) -> Tensor:
    return torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0)).to(device)


def _cp_inputs(device: torch.device) -> tuple[Tensor, list]:
    scenes = [generate_scene(i, size=64) for i in range(2)]
    images = torch.stack([s.image for s in scenes]).to(device)
    patches = [
        patches_from_masks(oversegment(s.segment_masks, i).masks).to(device)
        for i, s in enumerate(scenes)
    ]
    return images, patches


def _mi_images(device: torch.device) -> Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)


class TestPrecisionOption:
    def test_builders_validate_precision(self) -> None:
        for build in (build_ssp_sam, build_sam_mi):
            with pytest.raises(ValueError, match=r"precision: expected one of \['fp32', 'bf16'\]"):
                build("tiny", precision="fp16")
        with pytest.raises(ValueError, match="precision: expected one of"):
            build_sam_cp("tiny", build_proposer=False, precision="half")
        assert build_ssp_sam("tiny", precision="bf16").config.precision == "bf16"

    def test_helpers(self) -> None:
        assert check_precision("fp32") == "fp32"
        with autocast("fp32", "cpu"):
            assert not torch.is_autocast_enabled("cpu")
        with autocast("bf16", "cpu"):
            assert torch.is_autocast_enabled("cpu")
        out = to_float32({"a": (torch.ones(1, dtype=torch.bfloat16), torch.ones(1).double())})
        assert out["a"][0].dtype == torch.float32 and out["a"][1].dtype == torch.float64

    def test_cpu_without_bf16_kernels_warns_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(precision_module, "_warned_slow_cpu", False)
        monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: False)
        with pytest.warns(UserWarning, match="slower than fp32"), autocast("bf16", "cpu"):
            pass
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with autocast("bf16", "cpu"):  # once per process
                pass
            monkeypatch.setattr(precision_module, "_warned_slow_cpu", False)
            monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: True)
            with autocast("bf16", "cpu"), autocast("fp32", "cpu"):
                pass

    def test_saved_precision_round_trips_and_old_configs_load_as_fp32(self, tmp_path: Path) -> None:
        build_ssp_sam("tiny", precision="bf16").save_pretrained(tmp_path / "new")
        assert load_pretrained(tmp_path / "new").config.precision == "bf16"
        build_ssp_sam("tiny").save_pretrained(tmp_path / "old")
        path = tmp_path / "old" / "config.json"
        data = json.loads(path.read_text())
        del data["config"]["precision"]  # written before the field existed
        path.write_text(json.dumps(data))
        assert load_pretrained(tmp_path / "old").config.precision == "fp32"


class TestAutocast:
    """`config.precision="bf16"` against fp32 on the same weights."""

    def test_ssp_sam(self, device: torch.device) -> None:
        model = _ssp(device)
        images = _ssp_images(device)
        with torch.no_grad(), linear_dtypes(model) as seen32:
            ref = model(images, TEXTS, upsample=True)
        model.config.precision = "bf16"
        with torch.no_grad(), linear_dtypes(model) as seen:
            out = model(images, TEXTS, upsample=True)
        assert under(seen32, "") == {torch.float32}
        # the encoders, the heads and the decoder ran in bf16; the text tower in fp32
        for part in ("sam.image_encoder", "sam.mask_decoder", "clip.model.visual", "visual"):
            assert under(seen, part) == {torch.bfloat16}, part
        assert under(seen, "clip.model.transformer") == {torch.float32}
        assert all(t.dtype == torch.float32 for t in floats(out))
        assert not torch.equal(ref.low_res_logits, out.low_res_logits)
        # measured: relative error 0.010-0.011, sign agreement 0.996-0.998, boxes 0.0015-0.002
        assert rel_error(ref.low_res_logits, out.low_res_logits) < 0.025
        assert sign_agreement(ref.logits, out.logits) > 0.99
        assert (ref.boxes - out.boxes).abs().max() < 0.005

    def test_ssp_sam_task_encodes_under_the_model_precision(self, device: torch.device) -> None:
        model = _ssp(device)
        task = build_task("ssp_sam", model, class_names=None)
        images = _ssp_images(device)
        with torch.no_grad():
            ref = task.infer(images, TEXTS)
            model.config.precision = "bf16"
            with linear_dtypes(model) as seen:
                out = task.infer(images, TEXTS)
        assert under(seen, "sam.image_encoder") == {torch.bfloat16}
        assert under(seen, "clip.model.visual") == {torch.bfloat16}
        for r, o in zip(ref, out, strict=True):
            assert float((r.mask == o.mask).float().mean()) > 0.99

    def test_sam_cp(self, device: torch.device) -> None:
        model = _cp(device, build_proposer=False)
        images, patches = _cp_inputs(device)
        with torch.no_grad():
            ref = model(images, patches)
            ref_pred = model.predict(images, patches)
            model.config.precision = "bf16"
            with linear_dtypes(model) as seen:
                out = model(images, patches)
            pred = model.predict(images, patches)
        for part in ("patch_encoder", "decoder", "classifier"):
            assert under(seen, part) == {torch.bfloat16}, part
        assert all(t.dtype == torch.float32 for t in floats(out))
        assert not torch.equal(ref.affinities, out.affinities)
        # measured: relative error 0.0008-0.0033 (affinities), 0.0024-0.0037 (class logits)
        assert rel_error(ref.affinities, out.affinities) < 0.008
        assert rel_error(ref.class_logits, out.class_logits) < 0.008
        for r, p in zip(ref_pred, pred, strict=True):
            assert float((r.semantic == p.semantic).float().mean()) > 0.98

    def test_sam_cp_proposer(self, device: torch.device) -> None:
        model = _cp(device)
        images, _ = _cp_inputs(device)
        assert model.proposer is not None
        with torch.no_grad():
            ref = model.predict(images)
            model.config.precision = "bf16"
            with linear_dtypes(model.proposer) as seen:
                out = model.predict(images)
        assert under(seen, "sam.image_encoder") == {torch.bfloat16}
        assert len(ref) == len(out) == 2
        for r, o in zip(ref, out, strict=True):
            assert float((r.semantic == o.semantic).float().mean()) > 0.9

    def test_sam_mi(self, device: torch.device) -> None:
        model = _mi(device)
        images = _mi_images(device)
        with torch.no_grad():
            ref = model(images, NAMES)
            ref_tspp = model.prompter(images, NAMES)
            model.config.precision = "bf16"
            with linear_dtypes(model) as seen:
                out = model(images, NAMES)
            tspp = model.prompter(images, NAMES)
        for part in ("clip.model.visual", "sam.image_encoder", "aggregator"):
            assert under(seen, part) == {torch.bfloat16}, part
        assert all(t.dtype == torch.float32 for t in floats(out))
        assert tspp.prob.dtype == torch.float32
        assert not torch.equal(ref.logits, out.logits)
        # measured: relative error 0.006-0.020, argmax agreement 0.915-0.962 (the random heads'
        # class margins are small), TSPP probabilities 0.0006-0.0009
        assert rel_error(ref.logits, out.logits) < 0.04
        assert float((ref.logits.argmax(1) == out.logits.argmax(1)).float().mean()) > 0.85
        assert rel_error(ref_tspp.prob, tspp.prob) < 0.005

    def test_public_encoders_follow_the_precision(self, device: torch.device) -> None:
        """`encode_sam` / `encode_clip` of SSP-SAM and SAM-MI run in bf16, return float32."""
        for model, images in (
            (_ssp(device), _ssp_images(device)),
            (_mi(device), _mi_images(device)),
        ):
            model.config.precision = "bf16"
            with torch.no_grad(), linear_dtypes(model) as seen:
                sam = model.encode_sam(images)
                clip = model.encode_clip(images)
            assert under(seen, "sam.image_encoder") == {torch.bfloat16}
            assert under(seen, "clip.model.visual") == {torch.bfloat16}
            assert sam.embeddings.dtype == torch.float32
            assert clip.features.dtype == torch.float32


class TestModelCastToBfloat16:
    """`model.to(torch.bfloat16)`: forward and predict run, outputs finite and near fp32."""

    def test_letterbox_takes_bf16_images(self) -> None:
        images = torch.rand(2, 3, 40, 64)
        ref = letterbox(images, size=32)
        out = letterbox(images.bfloat16(), size=32)
        assert out.dtype == torch.float32  # antialiased resizing has no bf16 CPU kernel
        torch.testing.assert_close(out, ref, atol=1e-2, rtol=0)

    def test_ssp_sam(self, device: torch.device) -> None:
        model = _ssp(device)
        cast = copy.deepcopy(model).to(torch.bfloat16)
        images = _ssp_images(device)
        with torch.no_grad():
            ref = model(images, TEXTS, upsample=True)
            out = cast(images.bfloat16(), TEXTS, upsample=True)
            preds = build_task("ssp_sam", cast, class_names=None).infer(images, TEXTS)
            ref_preds = build_task("ssp_sam", model, class_names=None).infer(images, TEXTS)
        assert out.low_res_logits.dtype == torch.bfloat16
        assert all(torch.isfinite(t).all() for t in floats(out))
        # measured: relative error 0.010-0.017, sign agreement 0.996-0.999
        assert rel_error(ref.low_res_logits, out.low_res_logits) < 0.035
        assert sign_agreement(ref.logits, out.logits) > 0.99
        for r, p in zip(ref_preds, preds, strict=True):
            assert float((r.mask == p.mask).float().mean()) > 0.99

    def test_sam_cp(self, device: torch.device) -> None:
        model = _cp(device)
        cast = copy.deepcopy(model).to(torch.bfloat16)
        images, patches = _cp_inputs(device)
        with torch.no_grad():
            ref = model(images, patches)
            out = cast(images, patches)
            ref_pred = model.predict(images, patches)
            pred = cast.predict(images, patches)
            proposed = cast.predict(images)  # the SAM proposer in bf16 too
        assert out.affinities.dtype == torch.bfloat16
        assert all(torch.isfinite(t).all() for t in floats(out))
        # measured: relative error 0.0025-0.0048 (affinities), 0.0030-0.0071 (class logits)
        assert rel_error(ref.affinities, out.affinities) < 0.01
        assert rel_error(ref.class_logits, out.class_logits) < 0.015
        for r, p in zip(ref_pred, pred, strict=True):
            assert float((r.semantic == p.semantic).float().mean()) > 0.98
        assert [p.semantic.shape for p in proposed] == [(64, 64), (64, 64)]

    def test_sam_cp_open_vocabulary(self, device: torch.device) -> None:
        # the frozen-CLIP classifier meets bf16 dense features and fp32 text embeddings
        model = _cp(
            device,
            build_proposer=False,
            open_vocabulary=True,
            object_mask_threshold=0.0,
            affinity_threshold=0.0,
        )
        cast = copy.deepcopy(model).to(torch.bfloat16)
        images, patches = _cp_inputs(device)
        with torch.no_grad():
            ref = model.predict(images, patches)
            pred = cast.predict(images, patches)
            model.config.precision = "bf16"
            auto = model.predict(images, patches)
        for r, p, a in zip(ref, pred, auto, strict=True):
            assert len(r.segments) > 0
            assert float((r.semantic == p.semantic).float().mean()) > 0.98
            assert float((r.semantic == a.semantic).float().mean()) > 0.98

    def test_sam_mi(self, device: torch.device) -> None:
        model = _mi(device)
        cast = copy.deepcopy(model).to(torch.bfloat16)
        images = _mi_images(device)
        with torch.no_grad():
            ref = model(images, NAMES)
            out = cast(images, NAMES)
            task = build_task("sam_mi", cast, class_names=NAMES, num_things=0)
            preds = task.infer(images)
        assert out.logits.dtype == torch.bfloat16
        assert all(torch.isfinite(t).all() for t in floats(out))
        # measured: relative error 0.006-0.018, argmax agreement 0.913-0.956
        assert rel_error(ref.logits, out.logits) < 0.04
        assert float((ref.logits.argmax(1) == out.logits.argmax(1)).float().mean()) > 0.85
        assert [p.semantic.shape for p in preds] == [(64, 64), (64, 64)]


@pytest.mark.parametrize("system", ["ssp_sam", "sam_cp", "sam_mi"])
def test_engine_trains_and_evaluates_in_bf16(
    system: str, device: torch.device, tmp_path: Path
) -> None:
    task = make_engine_task(system, 0)
    config = engine_config(system, 1, precision="bf16", device=str(device), checkpoint_every=5)
    with linear_dtypes(task.model) as seen:
        metrics = Trainer(
            task, make_data(system, "train"), config, tmp_path, val_data=make_data(system, "val")
        ).fit()
    assert torch.bfloat16 in under(seen, "")  # the training step ran under autocast
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    assert metrics  # the final evaluation ran (under the same precision)
    assert all(p.dtype == torch.float32 for p in task.model.parameters())  # weights stay fp32
    with linear_dtypes(task.model) as seen_eval:
        again = evaluate(task, make_data(system, "val"), device=device, precision="bf16")
    assert torch.bfloat16 in under(seen_eval, "")
    assert again.keys() == metrics.keys()


def test_engine_bf16_alias_still_trains_a_system(tmp_path: Path) -> None:
    task = make_engine_task("ssp_sam", 0)
    with pytest.warns(DeprecationWarning):
        config = engine_config("ssp_sam", 1, bf16=True, checkpoint_every=5)
    assert config.precision == "bf16"
    with linear_dtypes(task.model) as seen:
        Trainer(task, make_data("ssp_sam", "train"), config, tmp_path).fit()
    assert torch.bfloat16 in under(seen, "")


def test_system_precision_applies_under_the_engine_in_fp32(tmp_path: Path) -> None:
    """A system built with `precision="bf16"` runs its own autocast inside an fp32 engine."""
    torch.manual_seed(0)
    model = build_sam_mi("tiny", grid=8, g_p=2.0, precision="bf16")
    task = build_task("sam_mi", model, class_names=CLASS_NAMES, num_things=NUM_THING_CLASSES)
    config = engine_config("sam_mi", 1, checkpoint_every=5)
    with linear_dtypes(model) as seen:
        Trainer(task, make_data("sam_mi", "train"), config, tmp_path).fit()
    assert under(seen, "aggregator") == {torch.bfloat16}
