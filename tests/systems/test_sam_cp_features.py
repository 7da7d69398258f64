"""SAM-CP on pretrained features: a torchvision ResNet trunk or a CLIP ConvNeXt.

Small random upstream models stand in for the released weights (ResNet-18, open_clip
`tiny-convnext`); they are written to files, SAM-CP is built from the files, runs, trains its
heads, and survives `save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import Tensor, nn

from samkit.backbones.clip_convnext import ClipConvNeXt, build_clip_convnext
from samkit.proposals import patches_from_masks
from samkit.systems.sam_cp import SAMCP, build_sam_cp
from samkit.types import Patches


def _patches() -> list[Patches]:
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, :32], masks[1, 32:, :32], masks[2, 32:, 32:] = True, True, True
    return [patches_from_masks(masks)]


def _images() -> Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def _forward(model: SAMCP) -> list[Tensor]:
    with torch.no_grad():
        out = model(_images(), _patches())
    return [out.affinities, out.class_logits]


def _assert_same_outputs(a: SAMCP, b: SAMCP) -> None:
    for x, y in zip(_forward(a.eval()), _forward(b.eval()), strict=True):
        torch.testing.assert_close(x, y, atol=0.0, rtol=0.0)


def _build(**kw: Any) -> SAMCP:
    return build_sam_cp("tiny", build_proposer=False, **kw)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18(weights=None)
    for m in resnet.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("features") / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def convnext_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(2)
    clip = build_clip_convnext("tiny-convnext")
    with torch.no_grad():
        for p in clip.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("features") / "open_clip_convnext.pth"
    torch.save(clip.model.state_dict(), path)
    return path


class TestResNetFeatures:
    def test_builds_with_the_file_and_trains(self, resnet_file: Path) -> None:
        model = _build(backbone="resnet18", feature_checkpoint=str(resnet_file)).train()
        state = torch.load(resnet_file, weights_only=True)
        fx = model.feature_extractor
        assert torch.equal(fx.stem[0].weight, state["conv1.weight"])
        assert torch.equal(fx.stages[3][1].bn2.running_var, state["layer4.1.bn2.running_var"])
        out = model(_images(), _patches())
        assert out.affinities.shape == (2, 1, 8, 3) and out.class_logits.shape == (2, 1, 8, 9)
        (out.affinities.square().mean() + out.class_logits.square().mean()).backward()
        for name, p in model.named_parameters():
            if name.startswith(("feature_extractor.stem", "feature_extractor.stages.0", "clip.")):
                assert p.grad is None, name  # frozen: SAM-CP's frozen stem / first stage
            else:
                assert p.grad is not None and torch.isfinite(p.grad).all(), name

    def test_save_and_load_without_the_file(self, resnet_file: Path, tmp_path: Path) -> None:
        copy = tmp_path / "resnet18.pth"
        copy.write_bytes(resnet_file.read_bytes())
        model = _build(backbone="resnet18", feature_checkpoint=str(copy)).eval()
        model.save_pretrained(tmp_path / "out")
        saved = load_file(tmp_path / "out" / "model.safetensors")
        assert "feature_extractor.stages.3.1.conv2.weight" in saved  # the trunk trains: kept
        data = json.loads((tmp_path / "out" / "config.json").read_text())
        record = {r["name"]: r for r in data["backbones"]}["features"]
        assert record["path"] == str(copy) and record["included"]
        assert data["config"]["feature_checkpoint"] == str(copy)
        copy.unlink()
        loaded = SAMCP.from_pretrained(tmp_path / "out")
        assert loaded.config.feature_checkpoint == str(copy)
        _assert_same_outputs(model, loaded)

    def test_bad_file_names_it(self, tmp_path: Path) -> None:
        torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
        with pytest.raises(ValueError, match=r"r34\.pth: does not fit a torchvision ResNet-18"):
            _build(backbone="resnet18", feature_checkpoint=str(tmp_path / "r34.pth"))


class TestClipConvNeXtFeatures:
    def test_one_clip_gives_features_and_class_embeddings(self, convnext_file: Path) -> None:
        model = _build(
            backbone="clip", clip_name="tiny-convnext", clip_checkpoint=str(convnext_file)
        )
        assert isinstance(model.clip, ClipConvNeXt)
        assert model.clip is model.feature_extractor.backbone
        assert not any(k.startswith("clip.") for k in model.state_dict())  # held once
        reference = build_clip_convnext("tiny-convnext", convnext_file)
        names = list(model.class_names)
        expected = reference.encode_text(names, templates=list(model.config.text_templates))
        torch.testing.assert_close(model.text_embeddings(names), expected.embeddings)
        with torch.no_grad():
            stages = model.feature_extractor.backbone(_images())
            torch.testing.assert_close(stages[-1], reference(_images())[-1])

    def test_forward_grad_flow_and_open_vocabulary(self, convnext_file: Path) -> None:
        model = _build(
            backbone="clip",
            clip_name="tiny-convnext",
            clip_checkpoint=str(convnext_file),
            open_vocabulary=True,
        ).train()
        assert not model.clip.model.training  # the frozen CLIP stays in eval mode
        out = model(_images(), _patches())
        (out.affinities.square().mean() + out.class_logits.square().mean()).backward()
        for name, p in model.named_parameters():
            if name.startswith("feature_extractor.backbone."):
                assert not p.requires_grad and p.grad is None, name
            else:
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
        result = model.eval().predict(_images(), _patches())[0]
        assert result.panoptic.shape == (64, 64)
        vocab = ["cat", "dog", "sky"]
        assert model.predict(_images(), _patches(), vocab, num_things=2)[0].semantic.shape == (
            64,
            64,
        )

    def test_device(self, convnext_file: Path, device: torch.device) -> None:
        model = _build(
            backbone="clip",
            clip_name="tiny-convnext",
            clip_checkpoint=str(convnext_file),
            open_vocabulary=True,
        ).eval()
        expected = _forward(model)
        model.to(device)  # the CLIP moves with the feature extractor that holds it
        assert model.clip.pixel_mean.device.type == device.type
        patches = [p.to(device) for p in _patches()]
        with torch.no_grad():
            out = model(_images().to(device), patches)
        for got, want in zip((out.affinities, out.class_logits), expected, strict=True):
            assert got.device.type == device.type
            torch.testing.assert_close(got.cpu(), want, atol=1e-3, rtol=1e-3)
        assert model.predict(_images().to(device), patches)[0].panoptic.shape == (64, 64)

    def test_save_leaves_the_clip_out_and_reads_it_back(
        self, convnext_file: Path, tmp_path: Path
    ) -> None:
        copy = tmp_path / "convnext.pth"
        copy.write_bytes(convnext_file.read_bytes())
        model = _build(backbone="clip", clip_name="tiny-convnext", clip_checkpoint=str(copy))
        model.save_pretrained(tmp_path / "out")
        saved = load_file(tmp_path / "out" / "model.safetensors")
        assert not any(k.startswith("feature_extractor.backbone.") for k in saved)
        assert any(k.startswith("feature_extractor.fpn.") for k in saved)
        _assert_same_outputs(model, SAMCP.from_pretrained(tmp_path / "out"))

        model.save_pretrained(tmp_path / "full", include_backbones=True)
        torch.manual_seed(9)
        torch.save(build_clip_convnext("tiny-convnext").model.state_dict(), copy)  # file changed
        with pytest.raises(ValueError, match=r"convnext\.pth: the clip weights in this file"):
            SAMCP.from_pretrained(tmp_path / "out")
        copy.unlink()
        _assert_same_outputs(model, SAMCP.from_pretrained(tmp_path / "full"))


class TestErrors:
    def test_feature_checkpoint_needs_a_trunk_backbone(self, resnet_file: Path) -> None:
        with pytest.raises(ValueError, match="feature_checkpoint: backbone 'tiny' takes no"):
            _build(feature_checkpoint=str(resnet_file))
        with pytest.raises(ValueError, match="backbone 'clip' takes no .*clip_checkpoint"):
            _build(backbone="clip", clip_name="tiny-convnext", feature_checkpoint="x.pth")

    def test_clip_backbone_needs_a_convnext_clip(self) -> None:
        with pytest.raises(ValueError, match="clip_name: backbone='clip' needs a ConvNeXt CLIP"):
            _build(backbone="clip")  # the tiny preset's CLIP is a ViT
