from __future__ import annotations

import dataclasses

import pytest
import torch

from samkit.backbones.sam import build_sam_backbone
from samkit.losses.sam_mi import SAMMILoss
from samkit.systems.sam_mi import SAMMI, SAMMIConfig, build_sam_mi
from samkit.systems.sam_mi_task import SAMMITask
from samkit.types import SAMMIOutput

NAMES = ["circle", "grass", "sky"]


@pytest.fixture(scope="module")
def model() -> SAMMI:
    torch.manual_seed(0)
    return build_sam_mi("tiny", sampling="deterministic").eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


class _DelegatingSam:
    """A SamLike that is not a SamBackbone (nor an nn.Module): it forwards to one."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.img_size, self.mask_threshold = inner.img_size, inner.mask_threshold
        self.calls = 0

    def encode(self, images):  # type: ignore[no-untyped-def]
        return self.inner.encode(images)

    def predict_points(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.inner.predict_points(*args, **kwargs)


class TestSAMMIConfig:
    def test_paper_defaults(self) -> None:
        cfg = SAMMIConfig()
        assert (cfg.clip_name, cfg.clip_size, cfg.sam_variant) == ("ViT-B-16", 384, "vit_h")
        assert (cfg.grid, cfg.g_p, cfg.m_p, cfg.alpha) == (32, 5.0, 10, 0.5)
        assert (cfg.lambda_mse, cfg.lambda_tspp, cfg.clip_lr_multiplier) == (0.5, 0.1, 0.01)
        assert cfg.tspp_lr_multiplier == 0.1 and cfg.tspp_text_grad
        assert (cfg.lr, cfg.clip_finetune, cfg.num_layers, cfg.window_size) == (
            2e-4,
            "attention_qv",
            2,
            12,
        )

    def test_build_from_dict_and_overrides(self) -> None:
        cfg = dataclasses.asdict(SAMMIConfig.tiny())
        m = build_sam_mi(cfg, use_high_injection=False, use_low_injection=False)
        assert m.injection.low is None and m.injection.high is None
        assert m.config.clip_name == "tiny"

    def test_tiny_synth_weights_mse_and_the_task_trains_with_it(self) -> None:
        # the pretrained preset weights L_mse 100 (docs/systems/sam-mi.md: at the paper's 0.5
        # TSPP under-predicts small segments and misses the coverage target); others keep 0.5
        assert SAMMIConfig.tiny_synth().lambda_mse == 100.0
        assert SAMMIConfig.tiny().lambda_mse == SAMMIConfig().lambda_mse == 0.5
        task = SAMMITask(build_sam_mi("tiny", lambda_mse=100.0), class_names=NAMES)
        assert task.criterion.lambda_mse == 100.0

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="unknown SAM-MI preset"):
            build_sam_mi("huge")
        with pytest.raises(ValueError, match="clip_taps"):
            build_sam_mi("tiny", clip_taps=(1,))


class TestSAMMI:
    def test_smoke(self, model: SAMMI, images: torch.Tensor) -> None:
        with torch.no_grad():
            out = model(images, NAMES)
        assert isinstance(out, SAMMIOutput)
        assert out.logits.shape == (2, 3, 32, 32) and torch.isfinite(out.logits).all()
        assert out.tspp is not None and out.tspp.prob.shape == (2, 32, 32)
        n = out.points.shape[1]
        assert out.point_valid.shape == (2, n) and out.sam_masks.shape == (2, n, 32, 32)
        assert out.masks.shape[0] == 2 and out.masks.shape[-2:] == (32, 32)
        assert torch.equal(out.mask_valid, out.masks.flatten(2).any(-1))
        # points are cell centres of the 32 x 32 grid in SAM's 128 px input frame
        pts = out.points[out.point_valid]
        assert ((pts / 4 - 0.5).frac() == 0).all() and (pts < 128).all()

    def test_exception(self, model: SAMMI) -> None:
        with pytest.raises(ValueError, match="images"):
            model(torch.rand(3, 64, 64), NAMES)

    def test_deterministic(self, model: SAMMI, images: torch.Tensor) -> None:
        with torch.no_grad():
            a, b = model(images, NAMES), model(images, NAMES)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.points, b.points)

    def test_class_permutation(self, images: torch.Tensor) -> None:
        # grid prompts: TSPP's own equivariance is tested in tests/modules (its sampled points
        # can flip on near-ties of an untrained, flat probability map)
        torch.manual_seed(0)
        m = build_sam_mi("tiny", prompting="grid", grid=8).eval()
        perm = [2, 0, 1]
        with torch.no_grad():
            a = m(images, NAMES)
            b = m(images, [NAMES[i] for i in perm])
        torch.testing.assert_close(b.logits, a.logits[:, perm], atol=1e-4, rtol=1e-4)
        assert {x.numpy().tobytes() for x in a.masks[0]} == {
            x.numpy().tobytes() for x in b.masks[0]
        }

    def test_grid_prompting_and_no_smagg(self, images: torch.Tensor) -> None:
        m = build_sam_mi("tiny", prompting="grid", use_smagg=False, grid=8).eval()
        assert m.tspp is None and m.smagg is None
        with torch.no_grad():
            out = m(images, NAMES)
        assert out.points.shape == (2, 64, 2) and out.point_valid.all() and out.tspp is None
        assert torch.equal(out.masks, out.sam_masks)

    def test_any_samlike_backend(self, images: torch.Tensor) -> None:
        torch.manual_seed(0)
        sam = _DelegatingSam(build_sam_backbone("tiny"))
        m = build_sam_mi("tiny", sam=sam, sampling="deterministic").eval()
        with torch.no_grad():
            out = m(images[:1], NAMES)
        assert sam.calls == 1 and out.logits.shape == (1, 3, 32, 32)


class TestTwoStageTraining:
    def test_stage_parameter_groups(self) -> None:
        m = build_sam_mi("tiny")
        groups = m.configure_stage(1)
        assert [g["name"] for g in groups] == ["tspp"] and groups[0]["lr"] == m.config.lr
        trainable = {n for n, p in m.named_parameters() if p.requires_grad}
        assert trainable == {f"tspp.{n}" for n, _ in m.tspp.named_parameters()}  # type: ignore[union-attr]

        groups = m.configure_stage(2)
        lrs = {g["name"]: g["lr"] for g in groups}
        assert lrs == {
            "tspp": pytest.approx(m.config.lr * m.config.tspp_lr_multiplier),
            "aggregator": m.config.lr,
            "clip": pytest.approx(m.config.lr * m.config.clip_lr_multiplier),
        }
        trainable = {n for n, p in m.named_parameters() if p.requires_grad}
        assert {n for n in trainable if n.startswith("clip.")} == {
            f"clip.{n}" for n, p in m.clip.named_parameters() if p.requires_grad
        }
        assert not any(n.startswith("sam.") for n in trainable)
        in_groups = {id(p) for g in groups for p in g["params"]}
        assert in_groups == {id(p) for p in m.parameters() if p.requires_grad}
        with pytest.raises(ValueError, match="stage must be"):
            m.configure_stage(3)

    def test_paper_clip_policy_is_qv_only(self) -> None:
        m = build_sam_mi("tiny", clip_finetune="attention_qv", clip_lr_multiplier=0.01)
        groups = m.configure_stage(2)
        clip_names = {n for n, p in m.named_parameters() if p.requires_grad and "clip." in n}
        assert clip_names and all("in_proj_weight.original" in n for n in clip_names)
        assert all(n.endswith(("original0", "original2")) for n in clip_names)  # q and v only
        clip_group = next(g for g in groups if g["name"] == "clip")
        assert clip_group["lr"] == pytest.approx(m.config.lr * 0.01)

    def test_stage2_gradients(self, images: torch.Tensor) -> None:
        torch.manual_seed(0)
        m = build_sam_mi("tiny", sample_seed=1)
        groups = m.configure_stage(2)
        m.train()
        labels = torch.randint(0, 3, (2, 64, 64))
        SAMMILoss()(m(images, NAMES), labels, stage=2).backward()
        for g in groups:
            grads = [p.grad for p in g["params"]]
            if g["name"] == "clip":  # dense value mode skips e.g. the last block's q/k, logit_scale
                assert sum(x is not None for x in grads) > len(grads) // 2
            else:
                assert all(x is not None for x in grads), g["name"]
            assert all(torch.isfinite(x).all() for x in grads if x is not None), g["name"]
        assert all(p.grad is None for p in m.sam.parameters())

    def test_stage1_prompter_only(self, images: torch.Tensor) -> None:
        m = build_sam_mi("tiny")
        m.configure_stage(1)
        labels = torch.randint(0, 3, (2, 64, 64))
        out = m.prompter(images, NAMES)
        SAMMILoss()(out, labels).backward()
        assert all(p.grad is not None for p in m.tspp.parameters())  # type: ignore[union-attr]
        assert all(p.grad is None for p in m.aggregator.parameters())
        assert all(p.grad is None for p in m.clip.parameters())


class TestInputContract:
    """Regression tests of issue #11 item 5 (each failed on f8b78a2)."""

    def test_one_string_is_one_class(self, model: SAMMI, images: torch.Tensor) -> None:
        # before: "cat" was split into the three classes 'c', 'a', 't'
        with torch.no_grad():
            got = model(images, "cat")
            want = model(images, ["cat"])
            tspp = model.prompter(images, "cat")
        assert got.logits.shape[1] == 1 and tspp.mask_logits.shape[1] == 1
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
        assert model.encode_text("cat").shape[0] == 1
        with pytest.raises(ValueError, match=r"^class_names: expected at least one class name"):
            model(images, [])

    def test_uint8_images(self, model: SAMMI) -> None:
        # before: uint8 images were used as 0..255 floats and changed the logits
        images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
        with torch.no_grad():
            got = model(images, ["a", "b"])
            want = model(images.float() / 255, ["a", "b"])
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
        with pytest.raises(ValueError, match=r"^images: expected finite pixel values"):
            model(torch.full((1, 3, 64, 64), float("nan")), ["a"])

    def test_empty_batch(self, model: SAMMI) -> None:
        # before: a reshape error inside SAM's image encoder
        with torch.no_grad():
            out = model(torch.zeros(0, 3, 64, 64), ["a", "b"])
        assert out.logits.shape == (0, 2, 32, 32)
        assert out.points.shape[0] == 0 and out.sam_masks.shape[0] == 0
        assert out.tspp is not None and out.tspp.prob.shape == (0, 32, 32)
