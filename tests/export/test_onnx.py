"""ONNX export: ONNX Runtime equals samkit's PyTorch path (and segment_anything's SamOnnxModel).

Each graph is exported once with the exporter's example sizes and then run with other batch,
prompt and point counts, so the dynamic axes are exercised, not just declared. The tiny random
presets run by default; the shipped tiny-synth weights and the box-only graph under `-m slow`
(each export takes 20-60 s on a CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from samkit.backbones.sam import build_sam_backbone  # noqa: E402
from samkit.export import (  # noqa: E402
    export_sam_decoder,
    export_sam_encoder,
    export_ssp_sam_prompt,
    run_onnx,
)
from samkit.systems.ssp_sam import build_ssp_sam  # noqa: E402
from samkit.types import ImageEmbedding, Prompts  # noqa: E402

TOL = 1e-4  # max |ONNX Runtime - PyTorch|, the bound
ORIGINAL = (60, 80)  # an image size that SAM resizes (long side 80 -> 128) and pads
SIZES = [(1, 1, 1), (1, 3, 2), (2, 1, 2), (2, 3, 1)]  # (B, K, N)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _points(b: int, k: int, n: int, side: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(b, k, n, 2, generator=g) * side
    labels = torch.randint(-1, 2, (b, k, n), generator=g).float()
    labels[..., 0] = 1.0  # every prompt has a foreground point
    return coords, labels


def _feeds(emb: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"image_embeddings": emb, "point_coords": coords, "point_labels": labels}


def _boxes(b: int, k: int, side: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(b, k, 2, 2, generator=g).sort(dim=2).values * side
    return corners.reshape(b, k, 4)


@pytest.fixture(scope="module")
def tiny_sam():
    torch.manual_seed(1)
    return build_sam_backbone("tiny")


@pytest.fixture(scope="module")
def decoder(tiny_sam, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_sam_decoder(tiny_sam, tmp_path_factory.mktemp("onnx") / "sam_decoder.onnx")


@pytest.fixture(scope="module")
def box_decoder(tiny_sam, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "sam_decoder_box.onnx"
    return export_sam_decoder(tiny_sam, path, boxes=True, multimask=False, original_size=ORIGINAL)


def _reference(sam, emb, prompts, *, multimask, original_size=None):
    side = sam.img_size
    input_size = sam.preprocess(torch.zeros(1, 3, *original_size))[1] if original_size else None
    embedding = ImageEmbedding(emb, input_size or (side, side), original_size or (side, side))
    with torch.no_grad():
        sparse, dense = sam.embed_prompts(prompts)
        return sam.decode(
            embedding, sparse, dense, multimask=multimask, upsample=original_size is not None
        )


def _check_points_decoder(sam, path: Path, b: int, k: int, n: int) -> None:
    emb = torch.randn(b, sam.prompt_dim, *sam.embedding_size)
    coords, labels = _points(b, k, n, sam.img_size, seed=10 * b + k + n)
    out = run_onnx(path, _feeds(emb, coords, labels))
    ref = _reference(sam, emb, Prompts(points=coords, labels=labels), multimask=True)
    assert sorted(out) == ["iou_scores", "low_res_logits"]
    assert out["low_res_logits"].shape == (b, k, 3, *ref.low_res_logits.shape[-2:])
    assert _max_diff(out["low_res_logits"], ref.low_res_logits) <= TOL
    assert _max_diff(out["iou_scores"], ref.iou_scores) <= TOL


@pytest.mark.parametrize(("b", "k", "n"), SIZES)
def test_decoder_matches_pytorch(tiny_sam, decoder: Path, b: int, k: int, n: int) -> None:
    _check_points_decoder(tiny_sam, decoder, b, k, n)


@pytest.mark.slow
def test_tiny_synth_decoder_matches_pytorch(tmp_path: Path) -> None:
    sam = build_sam_backbone("tiny-synth")  # the shipped pretrained weights
    path = export_sam_decoder(sam, tmp_path / "sam_decoder.onnx")
    for b, k, n in SIZES:
        _check_points_decoder(sam, path, b, k, n)


@pytest.mark.parametrize(("b", "k", "n"), SIZES)
def test_box_decoder_matches_pytorch(tiny_sam, box_decoder: Path, b: int, k: int, n: int) -> None:
    sam = tiny_sam
    emb = torch.randn(b, sam.prompt_dim, *sam.embedding_size)
    coords, labels = _points(b, k, n, sam.img_size, seed=b + k + n)
    boxes = _boxes(b, k, sam.img_size, seed=b * k)
    out = run_onnx(box_decoder, {**_feeds(emb, coords, labels), "boxes": boxes})
    prompts = Prompts(points=coords, labels=labels, boxes=boxes)
    ref = _reference(sam, emb, prompts, multimask=False, original_size=ORIGINAL)
    assert out["masks"].shape == (b, k, 1, *ORIGINAL)
    assert _max_diff(out["low_res_logits"], ref.low_res_logits) <= TOL
    assert _max_diff(out["iou_scores"], ref.iou_scores) <= TOL
    assert ref.logits is not None
    assert _max_diff(out["masks"], ref.logits) <= TOL


@pytest.mark.slow
def test_box_only_decoder_matches_pytorch(tiny_sam, tmp_path: Path) -> None:
    sam = tiny_sam
    path = export_sam_decoder(sam, tmp_path / "boxes.onnx", points=False, boxes=True)
    for b, k in ((1, 1), (2, 3)):
        emb = torch.randn(b, sam.prompt_dim, *sam.embedding_size)
        boxes = _boxes(b, k, sam.img_size, seed=k)
        out = run_onnx(path, {"image_embeddings": emb, "boxes": boxes})
        ref = _reference(sam, emb, Prompts(boxes=boxes), multimask=True)
        assert _max_diff(out["low_res_logits"], ref.low_res_logits) <= TOL
        assert _max_diff(out["iou_scores"], ref.iou_scores) <= TOL


def test_decoder_matches_segment_anything_onnx_model(
    tiny_sam, decoder: Path, box_decoder: Path
) -> None:
    """For one image and one prompt, the graphs give SamOnnxModel's masks (upstream semantics)."""
    from segment_anything.utils.onnx import SamOnnxModel

    sam = tiny_sam
    upstream = SamOnnxModel(sam.to_segment_anything(), return_single_mask=False).eval()
    h, w = sam.embedding_size
    emb = torch.randn(1, sam.prompt_dim, h, w)
    coords, labels = _points(1, 1, 2, sam.img_size, seed=3)
    box = _boxes(1, 1, sam.img_size, seed=4)
    no_mask = (torch.zeros(1, 1, 4 * h, 4 * w), torch.zeros(1))
    size = torch.tensor(ORIGINAL, dtype=torch.float32)

    # points only: upstream expects the caller to append the padding point (label -1)
    up_coords = torch.cat([coords[0], torch.zeros(1, 1, 2)], dim=1)
    up_labels = torch.cat([labels[0], -torch.ones(1, 1)], dim=1)
    _, up_scores, up_low = upstream(emb, up_coords, up_labels, *no_mask, size)
    out = run_onnx(decoder, _feeds(emb, coords, labels))
    assert _max_diff(out["low_res_logits"][0, 0], up_low[0, 1:]) <= TOL
    assert _max_diff(out["iou_scores"][0, 0], up_scores[0, 1:]) <= TOL

    # points and a box: upstream takes the box as two points labelled 2 and 3
    up_coords = torch.cat([coords[0], box.reshape(1, 2, 2)], dim=1)
    up_labels = torch.cat([labels[0], torch.tensor([[2.0, 3.0]])], dim=1)
    up_masks, up_scores, up_low = upstream(emb, up_coords, up_labels, *no_mask, size)
    out = run_onnx(box_decoder, {**_feeds(emb, coords, labels), "boxes": box})
    assert _max_diff(out["low_res_logits"][0, 0], up_low[0, :1]) <= TOL
    assert _max_diff(out["iou_scores"][0, 0], up_scores[0, :1]) <= TOL
    assert _max_diff(out["masks"][0, 0], up_masks[0, :1]) <= TOL


@pytest.mark.parametrize("preset", ["tiny", pytest.param("tiny-synth", marks=pytest.mark.slow)])
def test_encoder_matches_pytorch(
    preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(2)
    sam = build_sam_backbone(preset)
    size = ORIGINAL if preset == "tiny" else None  # tiny: resizing and padding in the graph
    if preset == "tiny":  # as if over protobuf's 2 GB: the weights go to enc.onnx.data
        monkeypatch.setattr("samkit.export.onnx._PROTOBUF_LIMIT", 0)
    path = export_sam_encoder(sam, tmp_path / "enc.onnx", image_size=size)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == (["enc.onnx", "enc.onnx.data"] if preset == "tiny" else ["enc.onnx"])
    hw = size or (sam.img_size, sam.img_size)
    for b in (1, 3):
        images = torch.rand(b, 3, *hw)
        out = run_onnx(path, {"images": images})["image_embeddings"]
        with torch.no_grad():
            ref = sam.encode(images).embeddings
        assert _max_diff(out, ref) <= TOL


@pytest.mark.parametrize("preset", ["tiny", pytest.param("tiny-synth", marks=pytest.mark.slow)])
def test_ssp_sam_prompt_path_matches_pytorch(preset: str, tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_ssp_sam(preset)
    modes = {name: m.training for name, m in model.named_modules()}
    path = export_ssp_sam_prompt(model, tmp_path / "ssp.onnx")
    # the export restores every submodule's train/eval mode (dropout would otherwise be on)
    assert {name: m.training for name, m in model.named_modules()} == modes
    for exprs in (["the red circle"], ["the red circle", "all squares left of the triangle", "x"]):
        images = torch.rand(len(exprs), 3, 96, 128)
        with torch.no_grad():
            ref = model(images, exprs)
            text = model.encode_text(exprs)
            clip = model.encode_clip(images)
            emb = model.sam.encode(images)
        assert text.token_states is not None and text.padding_mask is not None
        out = run_onnx(
            path,
            {
                "clip_features": clip.features,
                "clip_cls": clip.cls,
                "text_embeddings": text.embeddings,
                "token_states": text.token_states,
                "padding_mask": text.padding_mask,
                "image_embeddings": emb.embeddings,
            },
        )
        for name in ("low_res_logits", "iou_scores", "boxes", "prompts"):
            assert _max_diff(out[name], getattr(ref, name)) <= TOL, name
        assert torch.equal(out["has_target"], ref.has_target)


def test_dynamic_axes_are_named(decoder: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(decoder), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes == {
        "image_embeddings": ["B", 32, 16, 16],
        "point_coords": ["B", "K", "N", 2],
        "point_labels": ["B", "K", "N"],
    }
    assert [o.shape for o in session.get_outputs()] == [["B", "K", 3, 64, 64], ["B", "K", 3]]


def test_missing_onnx_packages_name_the_extra(
    tiny_sam, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(ImportError, match=r'pip install "samkit\[onnx\]"'):
        export_sam_decoder(tiny_sam, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_exceptions(tiny_sam, decoder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"path: expected a file name ending in \.onnx"):
        export_sam_decoder(tiny_sam, tmp_path / "x.bin")
    with pytest.raises(ValueError, match="points=True and/or boxes=True"):
        export_sam_decoder(tiny_sam, tmp_path / "x.onnx", points=False)
    with pytest.raises(ValueError, match=r"image_size: expected \(H, W\)"):
        export_sam_encoder(tiny_sam, tmp_path / "x.onnx", image_size=(0, 4))
    with pytest.raises(ValueError, match="inputs: expected the names"):
        run_onnx(decoder, {"image_embeddings": torch.zeros(1, 32, 16, 16)})
