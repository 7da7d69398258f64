"""The shipped `tiny-synth` weights: offline, checksummed, strict, and actually good."""

from __future__ import annotations

import hashlib
import socket

import pytest
import torch

from samkit.backbones import _shipped
from samkit.backbones.clip import build_clip_backbone, open_clip_state
from samkit.backbones.sam import build_sam_backbone


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_every_shipped_file_matches_its_recorded_checksum_and_fits_the_budget() -> None:
    assert set(_shipped.SHIPPED_PRESETS) == {"sam/tiny-synth", "clip/tiny-synth"}
    total = 0
    for name, sha in _shipped.SHIPPED_PRESETS.values():
        data = (_shipped.WEIGHTS_DIR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
        total += len(data)
    assert total <= 20 * 1024 * 1024


def test_shipped_presets_load_offline_and_differ_from_random(no_network: None) -> None:
    sam = build_sam_backbone("tiny-synth")
    state = _shipped.shipped_state_dict("sam/tiny-synth")
    for k, v in sam.state_dict().items():
        assert torch.equal(v, state[k].to(v.dtype)), k
    torch.manual_seed(0)
    random = build_sam_backbone("tiny-synth", pretrained=False)
    w = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert not torch.equal(random.state_dict()[w], sam.state_dict()[w])
    clip = build_clip_backbone("tiny-synth")
    clip_state = open_clip_state(_shipped.shipped_state_dict("clip/tiny-synth"))
    assert torch.equal(clip.model.visual.conv1.weight, clip_state["visual.conv1.weight"])
    # An explicit checkpoint wins over the shipped weights.
    assert (
        build_clip_backbone("tiny-synth", pretrained=False)
        .model.visual.conv1.weight.ne(clip_state["visual.conv1.weight"])
        .any()
    )


def test_a_corrupted_shipped_file_is_a_clear_error(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, sha = _shipped.SHIPPED_PRESETS["sam/tiny-synth"]
    data = bytearray((_shipped.WEIGHTS_DIR / name).read_bytes())
    data[-1] ^= 1
    (tmp_path / name).write_bytes(bytes(data))
    monkeypatch.setattr(_shipped, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"sam_tiny-synth.*SHA-256 mismatch"):
        build_sam_backbone("tiny-synth")
    (tmp_path / name).unlink()
    with pytest.raises(FileNotFoundError, match="missing from the installed package"):
        build_sam_backbone("tiny-synth")
    # Random-weight and explicit-checkpoint builds never read the shipped file.
    build_sam_backbone("tiny-synth", pretrained=False)
    build_sam_backbone("tiny")


@torch.no_grad()
def test_shipped_sam_segments_held_out_scenes() -> None:
    """A quick regression check of the documented figures (on 12 scenes, loose bounds)."""
    from samkit.data.scenes import HELDOUT_FAMILY, generate_family_scene
    from samkit.pretrain.quality import prompt_quality

    sam = build_sam_backbone("tiny-synth")
    sums = {"point_best": 0.0, "box": 0.0}
    n = 0
    for i in range(12):
        scene = generate_family_scene(("synthetic", "polygons")[i % 2], 10**9 + i)
        q = prompt_quality(sam, scene.image, scene.masks[scene.is_thing])
        for k in sums:
            sums[k] += float(q[k].sum())
        n += int(scene.is_thing.sum())
    assert sums["point_best"] / n > 0.7 and sums["box"] / n > 0.7
    held = generate_family_scene(HELDOUT_FAMILY, 10**9)
    assert float(prompt_quality(sam, held.image, held.masks[held.is_thing])["box"].mean()) > 0.5


@torch.no_grad()
def test_shipped_clip_names_objects_zero_shot() -> None:
    from samkit.data.scenes import generate_object_crop
    from samkit.pretrain.clip import SEEN_COMBOS, TEMPLATES, _vocabulary

    clip = build_clip_backbone("tiny-synth")
    names, _ = _vocabulary()
    text = clip.encode_text(names, templates=list(TEMPLATES)).embeddings
    crops = [
        generate_object_crop(10**9 + i, allowed=SEEN_COMBOS, stuff_fraction=0.0) for i in range(40)
    ]
    pred = (clip.encode_image(torch.stack([c.image for c in crops])) @ text.T).argmax(-1)
    hits = sum(names[int(p)] == c.name for p, c in zip(pred, crops, strict=True))
    assert hits / len(crops) > 0.8
