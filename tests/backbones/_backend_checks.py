"""Checks shared by the tests of the optional SAM backends (SAM 2, HQ-SAM, MobileSAM,
EfficientViT-SAM): comparisons with upstream predictors, gradients, the three systems."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor, nn

from samkit.backbones.sam import build_sam_backbone
from samkit.types import MaskPrediction, Prompts

TOL = 1e-5
"""Tolerance of the equivalence checks with upstream predictors (float32)."""


def max_diff(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference of two tensors (gradients detached)."""
    return float((a.detach() - b.detach()).abs().max())


def set_resized_image(predictor: Any, image: Tensor, side: int) -> Any:
    """Give a segment_anything-style predictor `image (1, 3, H, W)` in `[0, 1]`, resized to long
    side `side` with torch's antialiased bilinear resize (as samkit), not its PIL resize."""
    size = ResizeLongestSide.get_preprocess_shape(image.shape[-2], image.shape[-1], side)
    resized = F.interpolate(image * 255, size, mode="bilinear", align_corners=False, antialias=True)
    predictor.set_torch_image(resized, tuple(image.shape[-2:]))
    return predictor


def assert_matches_predictor(
    pred: MaskPrediction,
    ref: tuple[Tensor, Tensor, Tensor],
    i: int,
    name: str,
    *,
    relative: bool = False,
) -> None:
    """Image `i` of samkit's prediction equals a predictor's `predict_torch(...,
    return_logits=True)` output `(logits, iou, low_res_logits)` to `TOL`; with `relative`, to
    `TOL` times the reference's largest magnitude where that exceeds 1 (float32 rounding of
    large logits)."""
    assert pred.logits is not None
    for key, a, b in (
        ("logits", pred.logits[i], ref[0]),
        ("iou", pred.iou_scores[i], ref[1]),
        ("low_res", pred.low_res_logits[i], ref[2]),
    ):
        diff = max_diff(a, b)
        tol = TOL * max(1.0, float(b.abs().max())) if relative else TOL
        assert diff <= tol, f"{name} {key}: max |diff| {diff:.2e} > {tol:.2e}"


def assert_prompt_cases_match(
    sam: Any,
    embedding: Any,
    predictor: Any,
    points: Tensor,
    labels: Tensor,
    box: Tensor,
    *,
    relative: bool = False,
) -> None:
    """On one image, samkit's `predict` equals `predictor.predict_torch` for a point, two
    points, a box and a point + box, each with and without multimask output.

    Args:
        sam: The samkit backbone.
        embedding: Its `encode` output for the image set in `predictor`.
        predictor: An upstream predictor with that image set.
        points: Two points `(1, 1, 2, 2)` in the input frame.
        labels: Their labels `(1, 1, 2)`.
        box: A box `(1, 1, 4)` in the input frame.
        relative: Tolerance relative to the logits' magnitude (`assert_matches_predictor`).
    """
    one = (points[:, :, :1], labels[:, :, :1])
    cases = {
        "point": (*one, None),
        "two points": (points, labels, None),
        "box": (None, None, box),
        "point + box": (*one, box),
    }
    for name, (p, lab, b) in cases.items():
        for multi in (False, True):
            ref = predictor.predict_torch(
                None if p is None else p[0],
                None if lab is None else lab[0],
                None if b is None else b[0],
                multimask_output=multi,
                return_logits=True,
            )
            pred = sam.predict(embedding, Prompts(points=p, labels=lab, boxes=b), multimask=multi)
            name_m = f"{name}, multimask={multi}"
            assert_matches_predictor(pred, ref, 0, name_m, relative=relative)


def upstream_tiny_vit(cls: Any, spec: Any) -> nn.Module:
    """A reference TinyViT (`cls`, segment_anything_hq's or a subclass) with the arguments of
    MobileSAM's `build_sam_vit_t` for the stage sizes of a `MobileSamVariantSpec`."""
    return cls(  # type: ignore[no-any-return]
        img_size=1024,
        in_chans=3,
        num_classes=1000,
        embed_dims=list(spec.embed_dims),
        depths=list(spec.depths),
        num_heads=list(spec.num_heads),
        window_sizes=list(spec.window_sizes),
        mlp_ratio=spec.mlp_ratio,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


def perturb_batchnorm_statistics(module: nn.Module) -> None:
    """Give every BatchNorm non-trivial running statistics, so that loading them matters."""
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)


def hide_package(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make `package` (and every submodule already imported) fail to import."""
    for name in list(sys.modules):
        if name == package or name.startswith(package + "."):
            monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, package, None)  # type: ignore[arg-type]


def assert_missing_package_names_extra(
    monkeypatch: pytest.MonkeyPatch, package: str, variant: str, extra: str
) -> None:
    """Building `variant` without `package` raises an ImportError naming `samkit[extra]`."""
    hide_package(monkeypatch, package)
    with pytest.raises(ImportError, match=rf'pip install "samkit\[{extra}\]"'):
        build_sam_backbone(variant)


def assert_checkpoint_mismatch_refused(variant: str, folder: Path) -> None:
    """Building `variant` from a checkpoint with an extra key fails naming the file and the
    key; from a missing file, naming the file."""
    sd = build_sam_backbone(variant).state_dict()
    sd["image_encoder.extra"] = torch.zeros(1)
    path = folder / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(RuntimeError, match=r"bad\.pt.*unexpected keys.*image_encoder\.extra"):
        build_sam_backbone(variant, path)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        build_sam_backbone(variant, folder / "missing.pt")


def decoder_gradients(sam: nn.Module, *, skip: tuple[str, ...] = ()) -> dict[str, bool]:
    """Backpropagate a loss through encode + predict; which decoder parameters got a gradient.

    The loss uses single- and multi-mask logits and IoU predictions of a box + point prompt, so
    every mask token and the IoU head take part. Returns `{name: has finite non-zero grad}` for
    the decoder parameters not starting with a prefix in `skip`.
    """
    sam.train()
    sam.zero_grad()
    images = torch.rand(2, 3, 40, 56)
    emb = sam.encode(images)  # type: ignore[operator]
    prompts = Prompts(
        points=torch.tensor([[[[30.0, 20.0]]], [[[10.0, 50.0]]]]),
        labels=torch.ones(2, 1, 1),
        boxes=torch.tensor([[[5.0, 5.0, 60.0, 40.0]], [[0.0, 10.0, 50.0, 60.0]]]),
    )
    loss = torch.zeros(())
    for multimask in (False, True):
        pred = sam.predict(emb, prompts, multimask=multimask, upsample=False)  # type: ignore[operator]
        loss = loss + pred.low_res_logits.sigmoid().mean() + pred.iou_scores.mean()
    loss.backward()
    out = {}
    for name, p in sam.mask_decoder.named_parameters():  # type: ignore[union-attr]
        if name.startswith(skip):
            continue
        g = p.grad
        out[name] = g is not None and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0)
    sam.eval()
    return out


def assert_decoder_gets_gradients(sam: nn.Module, *, skip: tuple[str, ...] = ()) -> None:
    """Every decoder parameter (but those under `skip`) gets a finite non-zero gradient."""
    got = decoder_gradients(sam, skip=skip)
    missing = [n for n, ok in got.items() if not ok]
    assert not missing, missing


def run_ssp_sam(variant: str, folder: Path) -> None:
    """SSP-SAM's tiny preset builds and decodes with `variant` as its SAM, and its
    `save_pretrained` / `from_pretrained` round trip rebuilds the same backend."""
    from samkit.systems.ssp_sam import SSPSAM, build_ssp_sam

    model = build_ssp_sam("tiny", sam_variant=variant).eval()
    sam = model.sam
    images = torch.rand(2, 3, 64, 80)
    texts = ["the red circle", "all squares"]
    out = model(images, texts, upsample=True)
    grid = 4 * sam.embedding_size[0]
    assert out.low_res_logits.shape == (2, 1, grid, grid)
    assert out.logits is not None and out.logits.shape == (2, 1, 64, 80)
    assert torch.isfinite(out.low_res_logits).all()
    assert any(p.requires_grad for p in sam.mask_decoder.parameters())
    assert not any(p.requires_grad for p in sam.image_encoder.parameters())
    model.save_pretrained(folder)
    loaded = SSPSAM.from_pretrained(folder).eval()
    assert type(loaded.sam) is type(sam)
    again = loaded(images, texts, upsample=True)
    assert torch.equal(again.low_res_logits, out.low_res_logits)


def run_sam_cp(variant: str) -> None:
    """SAM-CP's tiny preset builds its proposer on `variant` and predicts panoptic maps."""
    from samkit.systems.sam_cp import build_sam_cp

    model = build_sam_cp("tiny", sam_variant=variant, points_per_side=3).eval()
    results = model.predict(torch.rand(1, 3, 48, 64))
    assert len(results) == 1 and results[0].panoptic.shape == (48, 64)


def run_sam_mi(variant: str, **overrides: object) -> None:
    """SAM-MI's tiny preset builds on `variant` and segments a batch."""
    from samkit.systems.sam_mi import build_sam_mi

    model = build_sam_mi("tiny", sam_variant=variant, **overrides).eval()
    out = model(torch.rand(2, 3, 64, 64), ["cat", "dog", "sky"])
    assert out.logits.shape[:2] == (2, 3)
    assert torch.isfinite(out.logits).all()


class SystemsChecks:
    """SSP-SAM, SAM-CP and SAM-MI build and run on a backend; subclass as `TestSystems` and set
    `variant` (and `sam_mi_overrides` for a slow decoder)."""

    variant: ClassVar[str]
    sam_mi_overrides: ClassVar[dict[str, object]] = {}

    def test_ssp_sam(self, tmp_path: Path) -> None:
        run_ssp_sam(self.variant, tmp_path)

    def test_sam_cp(self) -> None:
        run_sam_cp(self.variant)

    def test_sam_mi(self) -> None:
        run_sam_mi(self.variant, **self.sam_mi_overrides)
