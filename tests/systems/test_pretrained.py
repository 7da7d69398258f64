"""save_pretrained / from_pretrained / load_pretrained: round trips, backbones by path, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from samkit.backbones.clip import build_clip_backbone
from samkit.backbones.sam import build_sam_backbone
from samkit.proposals import patches_from_masks
from samkit.systems import (
    SAMCP,
    SAMMI,
    SSPSAM,
    build_sam_cp,
    build_sam_mi,
    build_ssp_sam,
    load_pretrained,
    read_pretrained_config,
)

# ---------------------------------------------------------------------- the three systems
SAMCP_THINGS = ("cat", "dog")
SAMCP_STUFF = ("sky", "grass", "road")
SAMMI_CLASSES = ("circle", "grass", "sky")


def _images() -> Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _patches() -> list[Any]:
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, :32], masks[1, 32:, :32], masks[2, 32:, 32:] = True, True, True
    return [patches_from_masks(masks)]


def _ssp_sam(**kw: Any) -> nn.Module:
    return build_ssp_sam(
        "tiny", feature_norm="token", gru_over_padding=True, num_prompts=4, target_head=True, **kw
    )


def _sam_cp(**kw: Any) -> nn.Module:
    kw = {"build_proposer": False, **kw}
    return build_sam_cp(
        "tiny",
        thing_classes=SAMCP_THINGS,
        stuff_classes=SAMCP_STUFF,
        decoder_layers=1,
        object_mask_threshold=0.2,
        **kw,
    ).eval()  # build_sam_cp returns a module in training mode; from_pretrained in eval mode


def _sam_mi(**kw: Any) -> nn.Module:
    model = build_sam_mi(
        "tiny",
        num_layers=1,
        grid=8,  # few SAM point prompts: fast on the CPU
        sam_batch_size=256,
        sampling="deterministic",
        alpha=0.4,
        clip_finetune="attention_qv",
        **kw,
    )
    model.class_names = SAMMI_CLASSES
    return model


def _outputs(model: nn.Module) -> list[Tensor]:
    """The tensors the system computes on fixed inputs (in eval mode, without grad)."""
    with torch.no_grad():
        return [t for t in _forward(model).values() if t is not None]


def _forward(model: nn.Module) -> dict[str, Tensor]:
    if isinstance(model, SSPSAM):
        out = model(_images().expand(2, -1, -1, -1), ["the red circle", "all squares"])
        return {"logits": out.low_res_logits, "boxes": out.boxes, "target": out.target_logits}
    if isinstance(model, SAMCP):
        out = model(_images(), _patches())
        return {"affinities": out.affinities, "class_logits": out.class_logits}
    assert isinstance(model, SAMMI)
    return {"logits": model(_images(), list(SAMMI_CLASSES)).logits}


def _train(model: nn.Module, steps: int = 2) -> None:
    """A few optimizer steps on the system's trainable parameters (stage 2 for SAM-MI)."""
    if isinstance(model, SAMMI):
        model.configure_stage(2)  # re-parametrises CLIP's q/v projections (attention_qv)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    for _ in range(steps):
        loss = sum(t.float().square().mean() for t in _forward(model).values() if t is not None)
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
    model.eval()


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "ssp_sam": _ssp_sam,
    "sam_cp": _sam_cp,
    "sam_mi": _sam_mi,
}
CLASSES = {"ssp_sam": SSPSAM, "sam_cp": SAMCP, "sam_mi": SAMMI}


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    for x, y in zip(_outputs(a), _outputs(b), strict=True):
        assert x.isfinite().all() and torch.equal(x, y)


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_round_trip_fresh_and_trained(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    model.save_pretrained(tmp_path / "fresh")
    loaded = CLASSES[name].from_pretrained(tmp_path / "fresh")
    assert type(loaded) is CLASSES[name] and not loaded.training
    assert loaded.config == model.config
    _assert_same(model, loaded)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model)
    after = model.state_dict()
    assert any(k not in before or not torch.equal(before[k], after[k]) for k in after)
    model.save_pretrained(tmp_path / "trained")  # a second system, trained weights
    again = load_pretrained(tmp_path / "trained")
    assert type(again) is CLASSES[name]
    _assert_same(model, again)


def test_config_records_system_vocabulary_and_version(tmp_path: Path) -> None:
    import samkit

    _sam_cp().save_pretrained(tmp_path / "cp")
    data = read_pretrained_config(tmp_path / "cp")
    assert data["system"] == "sam_cp" and data["class"] == "SAMCP"
    assert data["class_names"] == list(SAMCP_THINGS + SAMCP_STUFF)
    assert data["num_things"] == 2
    assert data["samkit_version"] == samkit.__version__ and data["format_version"] == 1
    assert data["config"]["object_mask_threshold"] == 0.2
    mi = load_pretrained(_sam_mi().save_pretrained(tmp_path / "mi"))
    assert mi.class_names == SAMMI_CLASSES
    assert read_pretrained_config(tmp_path / "mi")["class_names"] == list(SAMMI_CLASSES)
    ssp = read_pretrained_config(_ssp_sam().save_pretrained(tmp_path / "ssp"))
    assert ssp["class_names"] is None  # referring: no vocabulary


def test_overwrite_keeps_directory_consistent(tmp_path: Path) -> None:
    a, b = _ssp_sam(), _ssp_sam()
    a.save_pretrained(tmp_path)
    b.save_pretrained(tmp_path)  # replaces both files
    _assert_same(b, SSPSAM.from_pretrained(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


# ---------------------------------------------------------------------- backbones by path
@pytest.fixture
def sam_file(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    path = tmp_path / "ckpt" / "sam_tiny.pth"
    path.parent.mkdir()
    torch.save(build_sam_backbone("tiny").state_dict(), path)
    return path


@pytest.fixture
def clip_file(tmp_path: Path) -> Path:
    torch.manual_seed(2)
    path = tmp_path / "ckpt" / "clip_tiny.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save(build_clip_backbone("tiny").model.state_dict(), path)
    return path


def test_backbones_from_a_path_are_left_out_and_reloaded(
    sam_file: Path, clip_file: Path, tmp_path: Path
) -> None:
    model = _ssp_sam(sam_checkpoint=str(sam_file), clip_checkpoint=str(clip_file))
    _train(model)  # trains the mask decoder, which is saved even though SAM came from a file
    model.save_pretrained(tmp_path / "out")
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert not any(
        k.startswith(("clip.", "sam.image_encoder.", "sam.prompt_encoder.")) for k in saved
    )
    assert any(k.startswith("sam.mask_decoder.") for k in saved)
    records = {r["name"]: r for r in read_pretrained_config(tmp_path / "out")["backbones"]}
    assert records["sam"]["path"] == str(sam_file) and not records["sam"]["included"]
    _assert_same(model, SSPSAM.from_pretrained(tmp_path / "out"))

    sam_file.unlink()
    with pytest.raises(FileNotFoundError, match=r"sam_tiny\.pth.*include_backbones=True"):
        SSPSAM.from_pretrained(tmp_path / "out")


def test_changed_backbone_file_is_detected(sam_file: Path, tmp_path: Path) -> None:
    model = _sam_mi(sam_checkpoint=str(sam_file))
    model.save_pretrained(tmp_path / "out")
    assert not any(k.startswith("sam.") for k in load_file(tmp_path / "out" / "model.safetensors"))
    torch.manual_seed(9)
    torch.save(build_sam_backbone("tiny").state_dict(), sam_file)  # other weights, same name
    with pytest.raises(ValueError, match=r"sam_tiny\.pth: the sam weights in this file differ"):
        load_pretrained(tmp_path / "out")


def test_include_backbones_makes_the_directory_self_contained(
    sam_file: Path, clip_file: Path, tmp_path: Path
) -> None:
    model = _sam_cp(
        build_proposer=True, sam_checkpoint=str(sam_file), clip_checkpoint=str(clip_file)
    )
    model.save_pretrained(tmp_path / "out", include_backbones=True)
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert any(k.startswith("proposer.sam.") for k in saved)
    assert any(k.startswith("clip.") for k in saved)
    sam_file.unlink()
    clip_file.unlink()
    loaded = SAMCP.from_pretrained(tmp_path / "out")
    assert loaded.config.sam_checkpoint == str(sam_file)  # the config still says where from
    _assert_same(model, loaded)


def test_fine_tuned_clip_from_a_path_is_saved(clip_file: Path, tmp_path: Path) -> None:
    # SAM-MI fine-tunes CLIP in stage 2 (attention_qv): its weights cannot be left out
    model = _sam_mi(clip_checkpoint=str(clip_file))
    _train(model)
    model.save_pretrained(tmp_path / "out")
    clip_file.unlink()
    _assert_same(model, load_pretrained(tmp_path / "out"))


# ---------------------------------------------------------------------- errors
@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return _ssp_sam().save_pretrained(tmp_path / "ssp")


def _rewrite_weights(directory: Path, edit: Callable[[dict[str, Tensor]], None]) -> None:
    from safetensors import safe_open

    path = directory / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata=metadata)


def test_wrong_system(saved: Path) -> None:
    with pytest.raises(ValueError, match=r"config\.json: holds a 'ssp_sam' system.*SSPSAM"):
        SAMCP.from_pretrained(saved)


def test_missing_unexpected_and_misshapen_keys(saved: Path) -> None:
    key = "fusion.proj.weight"
    original = load_file(saved / "model.safetensors")
    _rewrite_weights(saved, lambda t: t.pop(key))
    with pytest.raises(ValueError, match=rf"model\.safetensors: .*missing keys \(1\): {key}"):
        SSPSAM.from_pretrained(saved)
    _rewrite_weights(saved, lambda t: t.update({key: original[key], "extra.weight": torch.ones(2)}))
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): extra\.weight"):
        SSPSAM.from_pretrained(saved)
    _rewrite_weights(saved, lambda t: (t.pop("extra.weight"), t.update({key: original[key][:1]})))
    with pytest.raises(ValueError, match=rf"shape mismatches \(1\): {key}: saved \(1, "):
        SSPSAM.from_pretrained(saved)


def test_missing_and_unreadable_files(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="directory not found"):
        load_pretrained(tmp_path / "nowhere")
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable"):
        load_pretrained(saved)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: not found"):
        load_pretrained(saved)
    weights.write_bytes(data)
    config = saved / "config.json"
    text = config.read_text()
    config.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"config\.json: not a readable samkit config"):
        load_pretrained(saved)
    config.unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json: not found"):
        load_pretrained(saved)


def test_newer_format_version(saved: Path) -> None:
    path = saved / "config.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config\.json: written by a newer samkit.*upgrade"):
        load_pretrained(saved)


def test_weights_of_another_save_are_refused(saved: Path, tmp_path: Path) -> None:
    # what a reader sees if a save is interrupted between the weights and the config
    other = _ssp_sam().save_pretrained(tmp_path / "other")
    (saved / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"model\.safetensors: belongs to another save"):
        load_pretrained(saved)


def test_custom_backbone_cannot_be_saved(tmp_path: Path) -> None:
    model = build_sam_mi("tiny", sam=build_sam_backbone("tiny"))
    with pytest.raises(ValueError, match="sam= module"):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()
