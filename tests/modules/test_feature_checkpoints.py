"""Pretrained trunks of SAM-CP's feature pyramids: torchvision ResNets and timm models.

Each file is written by the upstream package's own model (random weights, BatchNorm statistics
and affine parameters randomised so that loading them matters), loaded through samkit, and the
trunk's stage outputs are compared with the upstream model's own forward on the same input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn

from samkit.modules.feature_pyramid import BackboneFPN, ResNetFPN, TimmFPN, TinyFeaturePyramid

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _random_resnet(depth: int) -> nn.Module:
    """A torchvision ResNet with random weights and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(depth)
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
            m.num_batches_tracked.fill_(7)
    return model.eval()


def _torchvision_stages(model: nn.Module, images: Tensor) -> list[Tensor]:
    """torchvision's own forward up to each of the 4 stages (ImageNet-normalised input)."""
    x = (images - IMAGENET_MEAN.to(images)) / IMAGENET_STD.to(images)
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        out.append(x)
    return out


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resnet") / "resnet18.pth"
    torch.save(_random_resnet(18).state_dict(), path)
    return path


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_trunk_equals_torchvision(depth: int, tmp_path: Path) -> None:
    ref = _random_resnet(depth)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(ref.state_dict(), path)  # fc.* and num_batches_tracked included, as released
    net = ResNetFPN(depth=depth, out_channels=16, checkpoint=path).eval()
    images = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    # float64: float32 differs by the rounding of the folded FrozenBatchNorm2d (~1e-6 relative)
    with torch.no_grad():
        ours = net.double().trunk_features(images)
        theirs = _torchvision_stages(ref.double(), images)
    assert [f.shape for f in ours] == [f.shape for f in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert (a - b).abs().max() <= 1e-5
    # the random-init trunk is far from it: the comparison sees the loaded weights
    fresh = ResNetFPN(depth=depth, out_channels=16).double().eval()
    with torch.no_grad():
        assert (fresh.trunk_features(images)[-1] - theirs[-1]).abs().max() > 1e-2


def test_resnet_frozen_batchnorm_buffers_are_loaded(resnet18_file: Path) -> None:
    state = torch.load(resnet18_file, weights_only=True)
    net = ResNetFPN(depth=18, checkpoint=resnet18_file)
    bn = net.stages[1][0].bn2
    assert isinstance(bn, torchvision.ops.FrozenBatchNorm2d)
    for name in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(getattr(bn, name), state[f"layer2.0.bn2.{name}"])
    torch.testing.assert_close(net.stem[1].running_var, state["bn1.running_var"])


def test_resnet_loading_keeps_the_fpn_and_the_freezing(resnet18_file: Path) -> None:
    torch.manual_seed(3)
    plain = ResNetFPN(depth=18, out_channels=16)
    torch.manual_seed(3)
    loaded = ResNetFPN(depth=18, out_channels=16, checkpoint=resnet18_file)
    fpn = loaded.fpn.state_dict()
    for name, a in plain.fpn.state_dict().items():
        assert torch.equal(a, fpn[name]), name
    assert not torch.equal(plain.stem[0].weight, loaded.stem[0].weight)
    trainable = {n.split(".")[1] for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {"1", "2", "3", "inner_blocks", "layer_blocks"}  # stem, stage 0 frozen


def test_resnet_without_head_and_counters_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ref = _random_resnet(18)
    state = {
        k: v
        for k, v in ref.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "trunk.safetensors"
    save_file(state, path)
    net = ResNetFPN(depth=18, checkpoint=path).eval()
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            net.trunk_features(images)[-1], _torchvision_stages(ref, images)[-1]
        )


def test_resnet_training_checkpoint_with_state_dict_key(tmp_path: Path) -> None:
    ref = _random_resnet(18)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, path)
    net = ResNetFPN(depth=18, checkpoint=path)
    assert torch.equal(net.stem[0].weight, ref.conv1.weight)


def _edited(path: Path, tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    state = torch.load(path, weights_only=True)
    edit(state)
    out = tmp_path / "edited_resnet.pth"
    torch.save(state, out)
    return out


class TestResNetStrictness:
    def test_missing_key(self, resnet18_file: Path, tmp_path: Path) -> None:
        path = _edited(resnet18_file, tmp_path, lambda s: s.pop("layer3.1.bn1.running_var"))
        with pytest.raises(
            ValueError,
            match=r"edited_resnet\.pth: does not fit a torchvision ResNet-18 trunk: missing keys "
            r"\(1\): layer3\.1\.bn1\.running_var$",
        ):
            ResNetFPN(depth=18, checkpoint=path)

    def test_unexpected_key(self, resnet18_file: Path, tmp_path: Path) -> None:
        path = _edited(
            resnet18_file, tmp_path, lambda s: s.update({"layer2.0.conv9.weight": torch.ones(1)})
        )
        with pytest.raises(
            ValueError, match=r"edited_resnet\.pth: .*unexpected keys \(1\): layer2\.0\.conv9"
        ):
            ResNetFPN(depth=18, checkpoint=path)

    def test_shape_mismatch_and_wrong_depth(self, resnet18_file: Path) -> None:
        with pytest.raises(ValueError, match=r"resnet18\.pth: .*ResNet-50 .*missing keys"):
            ResNetFPN(depth=50, checkpoint=resnet18_file)
        with pytest.raises(ValueError, match=r"resnet18\.pth: .*ResNet-34 .*missing keys"):
            ResNetFPN(depth=34, checkpoint=resnet18_file)  # same shapes, more blocks

    def test_shape_mismatch(self, resnet18_file: Path, tmp_path: Path) -> None:
        path = _edited(
            resnet18_file, tmp_path, lambda s: s.update({"conv1.weight": torch.ones(64, 3, 3, 3)})
        )
        with pytest.raises(
            ValueError,
            match=r"shape mismatches \(1\): conv1\.weight: file \(64, 3, 3, 3\), model "
            r"\(64, 3, 7, 7\)",
        ):
            ResNetFPN(depth=18, checkpoint=path)

    def test_unreadable_and_missing_files(self, tmp_path: Path) -> None:
        bad = tmp_path / "garbage.pth"
        bad.write_bytes(b"not a checkpoint")
        with pytest.raises(ValueError, match=r"garbage\.pth: not a readable torchvision ResNet"):
            ResNetFPN(depth=18, checkpoint=bad)
        with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
            ResNetFPN(depth=18, checkpoint=tmp_path / "nowhere.pth")
        torch.save([torch.ones(1)], tmp_path / "list.pth")
        with pytest.raises(ValueError, match=r"list\.pth: .*expected a state dict"):
            ResNetFPN(depth=18, checkpoint=tmp_path / "list.pth")

    def test_bad_depth(self) -> None:
        with pytest.raises(ValueError, match="depth: expected 18, 34, 50, 101 or 152, got 42"):
            ResNetFPN(depth=42)


def _random_timm(name: str) -> nn.Module:
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():
        for p in model.parameters():  # ConvNeXt's layer scales start at 1e-6: move everything
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_timm_trunk_equals_timm(tmp_path: Path) -> None:
    ref = _random_timm("test_convnext")
    path = tmp_path / "test_convnext.pth"
    torch.save(ref.state_dict(), path)
    net = TimmFPN(model_name="test_convnext", out_channels=16, checkpoint=path).eval()
    images = torch.rand(2, 3, 64, 64)
    cfg = ref.pretrained_cfg  # timm's own normalisation of this model (0.5, 0.5, 0.5)
    x = (images - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        ours = net.trunk_features(images)
        theirs = ref.forward_intermediates(x, intermediates_only=True)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs, strict=True):
        assert (a - b).abs().max() <= 1e-5
    assert len(net(images)) == 4


def test_timm_strictness(tmp_path: Path) -> None:
    ref = _random_timm("test_convnext")
    state = ref.state_dict()
    headless = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
    torch.save(headless, tmp_path / "headless.pth")
    TimmFPN(model_name="test_convnext", checkpoint=tmp_path / "headless.pth")  # head optional
    state.pop("stages.1.blocks.0.conv_dw.weight")
    state["stages.9.weight"] = torch.ones(2)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(
        ValueError,
        match=r"broken\.pth: does not fit timm model 'test_convnext': missing keys \(1\): "
        r"stages\.1\.blocks\.0\.conv_dw\.weight; unexpected keys \(1\): stages\.9\.weight",
    ):
        TimmFPN(model_name="test_convnext", checkpoint=tmp_path / "broken.pth")


class TestBackboneFPN:
    def test_levels_follow_the_backbone(self) -> None:
        trunk = TinyFeaturePyramid(dim=8).eval()
        net = BackboneFPN(backbone=trunk, channels=[8] * 4, strides=trunk.strides, out_channels=4)
        images = torch.rand(2, 3, 64, 32)
        feats = net(images)
        assert [tuple(f.shape) for f in feats] == [
            (2, 4, 16, 8),
            (2, 4, 8, 4),
            (2, 4, 4, 2),
            (2, 4, 2, 1),
        ]
        assert net.strides == (4, 8, 16, 32)
        # the FPN's coarsest level is its 3x3 conv over the 1x1 lateral of the coarsest map
        top = net.fpn.layer_blocks[3](net.fpn.inner_blocks[3](trunk(images)[3]))
        torch.testing.assert_close(feats[3], top)

    def test_exception(self) -> None:
        trunk = TinyFeaturePyramid(dim=8)
        with pytest.raises(ValueError, match="channels, strides: expected one of each"):
            BackboneFPN(backbone=trunk, channels=[8] * 4, strides=(4, 8))
        net = BackboneFPN(backbone=trunk, channels=[8] * 3, strides=(4, 8, 16))
        with pytest.raises(ValueError, match="backbone: expected 3 levels, got 4"):
            net(torch.rand(1, 3, 64, 64))
        with pytest.raises(ValueError, match="images"):
            net(torch.rand(3, 64, 64))
