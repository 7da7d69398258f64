"""CLIP ConvNeXt backbone: loading equals open_clip's own loading of the same file.

The file is an open_clip model's state dict (`tiny-convnext`: timm's `test_convnext` image
tower, every weight moved off its initialisation); open_clip loads it with its own
`load_checkpoint`, samkit with `build_clip_convnext`, and stage maps, text embeddings and image
embeddings are compared.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from torch import Tensor, nn

from samkit.backbones._clip_checkpoint import INLINE_CFGS
from samkit.backbones.clip_convnext import ClipConvNeXt, build_clip_convnext


def _open_clip_tiny() -> nn.Module:
    return open_clip.CLIP(**INLINE_CFGS["tiny-convnext"](None))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(11)
    model = _open_clip_tiny()
    with torch.no_grad():
        for p in model.parameters():  # ConvNeXt layer scales start at 1e-6: move everything
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("clip") / "open_clip_tiny_convnext.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def reference(clip_file: Path) -> nn.Module:
    """open_clip's own model, loaded by open_clip from the same file."""
    model = _open_clip_tiny()
    open_clip.load_checkpoint(model, str(clip_file), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def clip(clip_file: Path) -> ClipConvNeXt:
    return build_clip_convnext("tiny-convnext", clip_file)


def _normalised(images: Tensor) -> Tensor:
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def test_stage_maps_equal_open_clip(clip: ClipConvNeXt, reference: nn.Module) -> None:
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        ours = clip(images)
        trunk = reference.visual.trunk
        x = trunk.stem(_normalised(images))
        theirs = []
        for stage in trunk.stages:  # open_clip's trunk, run stage by stage
            x = stage(x)
            theirs.append(x)
    assert [tuple(f.shape[1:]) for f in ours] == [
        (24, 16, 24),
        (32, 8, 12),
        (48, 4, 6),
        (64, 2, 3),
    ]
    for a, b in zip(ours, theirs, strict=True):
        assert (a - b).abs().max() <= 1e-5
    assert clip.channels == [24, 32, 48, 64] and clip.strides == (4, 8, 16, 32)
    random = build_clip_convnext("tiny-convnext")
    with torch.no_grad():
        assert (random(images)[-1] - theirs[-1]).abs().max() > 1e-2  # the file matters


def test_text_embeddings_equal_open_clip(clip: ClipConvNeXt, reference: nn.Module) -> None:
    names = ["cat", "traffic light", "sky"]
    templates = ["a photo of a {}.", "a {} in a scene."]
    tokenizer = open_clip.SimpleTokenizer(context_length=77)
    with torch.no_grad():
        per_template = torch.stack(
            [
                reference.encode_text(tokenizer([t.format(n) for n in names]), normalize=True)
                for t in templates
            ],
            dim=1,
        )
        expected = torch.nn.functional.normalize(per_template.mean(1), dim=-1)
        out = clip.encode_text(names, templates=templates)
    assert out.texts == names
    assert (out.embeddings - expected).abs().max() <= 1e-5
    one = clip.encode_text("traffic light").embeddings  # a str is one class
    assert one.shape == (1, 32)
    with torch.no_grad():
        plain = reference.encode_text(tokenizer(["traffic light"]), normalize=True)
    assert (one - plain).abs().max() <= 1e-5


def test_dense_features_of_one_location_are_clips_image_embedding(
    clip: ClipConvNeXt, reference: nn.Module
) -> None:
    images = torch.rand(3, 3, 32, 32)  # stride 32: one location
    with torch.no_grad():
        dense = clip.dense_features(images)
        expected = reference.encode_image(_normalised(images))
    assert dense.shape == (3, 32, 1, 1)
    assert (dense[:, :, 0, 0] - expected).abs().max() <= 1e-5
    with torch.no_grad():
        bigger = clip.dense_features(torch.rand(1, 3, 64, 96))
    assert bigger.shape == (1, 32, 2, 3)


def test_frozen_and_always_in_eval_mode(clip: ClipConvNeXt) -> None:
    assert not any(p.requires_grad for p in clip.parameters())
    clip.train()
    assert not clip.model.training and clip.trainable_policy == "none"
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(clip(images)[-1], clip(images)[-1])  # drop-path stays off


def test_strict_loading_names_the_file(clip_file: Path, tmp_path: Path) -> None:
    state = torch.load(clip_file, weights_only=True)
    state.pop("visual.trunk.stages.2.blocks.0.conv_dw.weight")
    state["visual.trunk.extra.weight"] = torch.ones(1)
    path = tmp_path / "broken_convnext.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"broken_convnext\.pth does not fit") as info:
        build_clip_convnext("tiny-convnext", path)
    message = str(info.value)
    assert "visual.trunk.stages.2.blocks.0.conv_dw.weight" in message
    assert "visual.trunk.extra.weight" in message
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        build_clip_convnext("tiny-convnext", tmp_path / "nowhere.pth")


def test_only_convnext_towers() -> None:
    with pytest.raises(ValueError, match=r"expected an open_clip ConvNeXt CLIP .*'ViT-B-16'"):
        build_clip_convnext("ViT-B-16")
    with pytest.raises(ValueError, match="unknown CLIP model name"):
        build_clip_convnext("convnext_nonexistent")
    with pytest.raises(ValueError, match="timm ConvNeXt image tower"):
        ClipConvNeXt(model=nn.Linear(2, 2), tokenizer=None)


def test_open_clip_config_by_name() -> None:
    clip = build_clip_convnext("convnext_tiny")  # open_clip's config, random weights
    assert clip.channels == [96, 192, 384, 768] and clip.strides == (4, 8, 16, 32)
    assert clip.embed_dim == 1024
    with torch.no_grad():
        assert clip.dense_features(torch.rand(1, 3, 64, 64)).shape == (1, 1024, 2, 2)
