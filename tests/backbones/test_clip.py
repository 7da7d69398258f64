from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from samkit.backbones._clip_checkpoint import _tiny_cfgs, check_name
from samkit.backbones.clip import ClipBackbone, build_clip_backbone, similarity_map
from samkit.types import ClipDenseOutput, TextEmbedding
from tests.conftest import TOLERANCES

TOL = TOLERANCES[torch.float32]
MODES = ("plain", "value", "surgery")


def _fresh(tiny_clip: ClipBackbone) -> ClipBackbone:
    return copy.deepcopy(tiny_clip)


def _normalised(clip: ClipBackbone, images: Tensor) -> Tensor:
    return (images - clip.pixel_mean) / clip.pixel_std


# ---------------------------------------------------------------- straightforward re-derivations
def _reference_tokens(visual: nn.Module, x: Tensor) -> Tensor:
    """Embed at the native size exactly as open_clip's `VisionTransformer._embeds`: (B, 1+N, C)."""
    x = visual.conv1(x).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    return visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)


def _project(visual: nn.Module, x: Tensor) -> Tensor:
    return visual.ln_post(x) @ visual.proj


def _reference_value(visual: nn.Module, x: Tensor) -> Tensor:
    """CAT-Seg `forward_dense` on the last block (spec sam-mi §2.1), all tokens projected."""
    x = _reference_tokens(visual, x)
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x)
    last = blocks[-1]
    y = last.ln_1(x)
    _, _, w_v = last.attn.in_proj_weight.chunk(3)
    _, _, b_v = last.attn.in_proj_bias.chunk(3)
    v = y @ w_v.T + b_v
    v = v @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
    v = v + x[:, 0:1, :]  # the block input's CLS token, broadcast
    x = v + last.mlp(last.ln_2(v))
    return _project(visual, x)


def _reference_surgery_attention(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """CLIP-Surgery `Attention.forward` with weights copied from the block; x is (N, B, C)."""
    attn = block.attn
    x = x.transpose(0, 1)  # (B, N, C)
    b, n, c = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = (c // heads) ** -0.5
    attn_ori = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    k = v
    q = k
    attn_vv = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    x_ori = (attn_ori @ v).transpose(1, 2).reshape(b, n, c)
    x_new = (attn_vv @ v).transpose(1, 2).reshape(b, n, c)
    x_new = F.linear(x_new, attn.out_proj.weight, attn.out_proj.bias)
    x_ori = F.linear(x_ori, attn.out_proj.weight, attn.out_proj.bias)
    return x_new.transpose(0, 1), x_ori.transpose(0, 1)


def _reference_surgery_block(block: nn.Module, x: Tensor | list[Tensor]) -> list[Tensor]:
    """CLIP-Surgery `ResidualAttentionBlock.forward` once surgery is active (LND layout)."""
    if isinstance(x, list):
        x, x_ori = x
        x_res, x_ori_res = _reference_surgery_attention(block, block.ln_1(x_ori))
        x_ori = x_ori + x_ori_res
        x_ori = x_ori + block.mlp(block.ln_2(x_ori))
        x = x + x_res  # skip ffn for the new path
        return [x, x_ori]
    x_res, x_ori_res = _reference_surgery_attention(block, block.ln_1(x))
    x_ori = x + x_ori_res
    x_ori = x_ori + block.mlp(block.ln_2(x_ori))
    x = x + x_res
    return [x, x_ori]


def _reference_surgery(visual: nn.Module, x: Tensor, depth: int) -> Tensor:
    """CLIP-Surgery `VisionTransformer.forward` (spec ssp-sam §2.1), all tokens projected."""
    x = _reference_tokens(visual, x).permute(1, 0, 2)  # NLD -> LND
    blocks = visual.transformer.resblocks
    state: Tensor | list[Tensor] = x
    for i, block in enumerate(blocks):
        if i < len(blocks) - depth:
            assert isinstance(state, Tensor)
            state = block(state.permute(1, 0, 2)).permute(1, 0, 2)
        else:
            state = _reference_surgery_block(block, state)
    assert isinstance(state, list)
    x, x_ori = state
    x = x.clone()
    x[0, :, :] = x_ori[0, :, :]
    return _project(visual, x.permute(1, 0, 2))


def _is_quick(clip: ClipBackbone) -> bool:
    """Whether every MLP of both towers runs QuickGELU (False: every one runs GELU)."""
    acts = [b.mlp.gelu for b in clip.model.visual.transformer.resblocks]
    acts += [b.mlp.gelu for b in clip.model.transformer.resblocks]
    quick = [isinstance(a, open_clip.model.QuickGELU) for a in acts]
    assert all(quick) or not any(quick)
    return quick[0]


def _as_tokens(out: ClipDenseOutput) -> Tensor:
    """(B, 1+N, C_e) from the backbone's output, CLS first."""
    return torch.cat([out.cls[:, None], out.features.flatten(2).transpose(1, 2)], dim=1)


# ---------------------------------------------------------------- tests
class TestBuild:
    def test_smoke(self, tiny_clip: ClipBackbone) -> None:
        assert isinstance(tiny_clip.model, open_clip.CLIP)
        assert (tiny_clip.embed_dim, tiny_clip.vision_width, tiny_clip.text_width) == (32, 64, 32)
        assert (tiny_clip.patch_size, tiny_clip.image_size, tiny_clip.context_length) == (8, 32, 77)
        assert tiny_clip.num_vision_blocks == 4
        assert tiny_clip.trainable_policy == "none"

    def test_frozen_and_eval_by_default(self) -> None:
        clip = build_clip_backbone("tiny")
        assert not any(p.requires_grad for p in clip.parameters())
        assert not clip.training and not clip.model.training
        clip.train()
        assert clip.training and not clip.model.training  # frozen CLIP stays in eval mode
        clip.set_trainable("all")
        clip.train()
        assert clip.model.training

    def test_vit_b_16_builds_offline(self) -> None:
        clip = build_clip_backbone()  # ViT-B-16, random weights, no network
        assert (clip.embed_dim, clip.vision_width, clip.text_width) == (512, 768, 512)
        assert (clip.patch_size, clip.image_size, clip.num_vision_blocks) == (16, 224, 12)
        assert clip.tokenize(["a photo of a cat"]).shape == (1, 77)

    def test_exception(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="would need the network"):
            build_clip_backbone("hf-hub:timm/ViT-B-16-SigLIP")
        with pytest.raises(ValueError, match="would need the network"):
            build_clip_backbone("ViT-B-16", checkpoint="openai")
        with pytest.raises(ValueError, match="would need the network"):
            build_clip_backbone("ViT-B-16-SigLIP")
        with pytest.raises(ValueError, match="unknown CLIP model name"):
            build_clip_backbone("ViT-Q-99")
        with pytest.raises(ValueError, match="built-in architecture name"):
            build_clip_backbone("local-dir:/somewhere")
        with pytest.raises(FileNotFoundError, match="not found"):
            build_clip_backbone("tiny", checkpoint=tmp_path / "missing.pt")
        with pytest.raises(ValueError, match="ViT vision tower"):
            ClipBackbone(model=nn.Linear(2, 2), tokenizer=None)
        vision = open_clip.CLIPVisionCfg(
            image_size=16, patch_size=8, width=32, layers=1, head_width=16, final_ln_after_pool=True
        )
        text = open_clip.CLIPTextCfg(width=32, heads=2, layers=1)
        odd = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
        with pytest.raises(ValueError, match="unsupported image pooling"):
            ClipBackbone(model=odd, tokenizer=None)

    def test_openai_style_names(self) -> None:
        check_name("ViT-B/16")  # OpenAI spelling of an open_clip name
        with pytest.raises(ValueError, match="not a local file; as a pretrained tag"):
            build_clip_backbone("tiny", checkpoint="laion2b_s34b_b88k")


class TestCheckpoints:
    def _check_same(self, a: ClipBackbone, b: ClipBackbone) -> None:
        x = torch.rand(1, 3, 32, 32)
        torch.testing.assert_close(a.dense_features(x), b.dense_features(x), **TOL)
        torch.testing.assert_close(
            a.encode_text(["a cat"]).embeddings, b.encode_text(["a cat"]).embeddings, **TOL
        )

    def test_open_clip_state_dict(self, tiny_clip: ClipBackbone, tmp_path: Path) -> None:
        path = tmp_path / "tiny.pt"
        torch.save(tiny_clip.model.state_dict(), path)
        torch.manual_seed(1)
        loaded = build_clip_backbone("tiny", checkpoint=path)
        self._check_same(tiny_clip, loaded)
        assert not isinstance(
            loaded.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.model.QuickGELU
        )

    def test_wrapped_state_dict_and_safetensors(
        self, tiny_clip: ClipBackbone, tmp_path: Path
    ) -> None:
        from safetensors.torch import save_file

        state = tiny_clip.model.state_dict()
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
        for name in ("w.pt", "w.safetensors"):
            torch.manual_seed(1)
            self._check_same(tiny_clip, build_clip_backbone("tiny", checkpoint=tmp_path / name))

    def test_openai_state_dict_gets_quick_gelu(
        self, tiny_clip: ClipBackbone, tmp_path: Path
    ) -> None:
        state = {k: v.half() for k, v in tiny_clip.model.state_dict().items()}
        state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77))
        torch.save(state, tmp_path / "openai.pt")
        loaded = build_clip_backbone("tiny", checkpoint=tmp_path / "openai.pt")
        block = loaded.model.visual.transformer.resblocks[0]
        assert isinstance(block.mlp.gelu, open_clip.model.QuickGELU)
        assert loaded.model.visual.conv1.weight.dtype == torch.float32
        torch.testing.assert_close(
            loaded.model.visual.conv1.weight, tiny_clip.model.visual.conv1.weight.half().float()
        )

    @pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
    @pytest.mark.filterwarnings("ignore:`torch.jit.trace_method` is deprecated:FutureWarning")
    @pytest.mark.parametrize("quick", [False, True])
    def test_traced_archive_activation_is_read(self, quick: bool, tmp_path: Path) -> None:
        torch.manual_seed(0)
        model = open_clip.CLIP(**_tiny_cfgs(None), quick_gelu=quick).eval()
        inputs = {"encode_image": torch.rand(1, 3, 32, 32)}
        traced = torch.jit.trace_module(model, inputs, check_trace=False)
        traced.save(str(tmp_path / "jit.pt"))
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # the archive says it: no guess
            loaded = build_clip_backbone("tiny", checkpoint=tmp_path / "jit.pt")
        assert _is_quick(loaded) is quick
        self._check_same(ClipBackbone(model=model, tokenizer=loaded.tokenizer), loaded)
        with pytest.warns(UserWarning, match="activations are (Quick)?GELU modules"):
            other = build_clip_backbone(
                "tiny", checkpoint=tmp_path / "jit.pt", quick_gelu=not quick
            )
        assert _is_quick(other) is not quick

    def test_image_size_resizes_pos_embed(self, tiny_clip: ClipBackbone, tmp_path: Path) -> None:
        torch.save(tiny_clip.model.state_dict(), tmp_path / "tiny.pt")
        big = build_clip_backbone("tiny", checkpoint=tmp_path / "tiny.pt", image_size=48)
        assert big.image_size == 48
        assert big.model.visual.positional_embedding.shape == (1 + 6 * 6, 64)

    def test_strict_mismatch(self, tiny_clip: ClipBackbone, tmp_path: Path) -> None:
        state = tiny_clip.model.state_dict()
        state.pop("visual.proj")
        torch.save(state, tmp_path / "broken.pt")
        with pytest.raises(RuntimeError, match="does not fit CLIP architecture"):
            build_clip_backbone("tiny", checkpoint=tmp_path / "broken.pt")


# ---------------------------------------------------------------- faithful loading (QuickGELU)
# A small architecture that open_clip's own OpenAI loader can rebuild from a state dict
# (`build_model_from_openai_state_dict` infers 64-wide heads), registered as an open_clip config.
SMALL = "samkit-test-ViT-64"
SMALL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


@pytest.fixture(scope="module")
def small_config() -> Iterator[str]:
    from open_clip import factory

    factory._MODEL_CONFIGS[SMALL] = SMALL_CFG
    factory._MODEL_CONFIGS[f"{SMALL}-quickgelu"] = {**SMALL_CFG, "quick_gelu": True}
    yield SMALL
    factory._MODEL_CONFIGS.pop(SMALL, None)
    factory._MODEL_CONFIGS.pop(f"{SMALL}-quickgelu", None)


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random trained-looking weights: LayerNorm scales near 1, everything else spread out."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            norm = ".ln_" in name or name.startswith("ln_")
            if norm and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise * (0.1 if p.ndim > 1 else 0.3))
    return model.eval()


@pytest.fixture(scope="module")
def clip_files(small_config: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same random weights in every file format samkit reads, OpenAI's and open_clip's."""
    from open_clip.model import build_model_from_openai_state_dict

    out = tmp_path_factory.mktemp("clip_files")
    source = _randomise(open_clip.create_model(small_config, force_quick_gelu=True), 0)
    # What OpenAI released: QuickGELU, mixed half precision (open_clip rebuilds it the same way)
    openai = build_model_from_openai_state_dict(dict(source.state_dict()))
    # OpenAI's TorchScript archive: a trace, with its extra entries and no `attn_mask` buffer
    traced = copy.deepcopy(openai)
    mask = traced._buffers.pop("attn_mask")
    traced.attn_mask = mask
    for key, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        traced.__dict__.pop(key, None)
        traced.register_buffer(key, torch.tensor(value))
    image, text = torch.rand(1, 3, 32, 32).half(), torch.zeros(1, 77, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs = {"encode_image": image, "encode_text": text}
        script = torch.jit.trace_module(traced, inputs, check_trace=False)
        script.save(str(out / "ViT-openai.pt"))
        jit_state = torch.jit.load(str(out / "ViT-openai.pt")).state_dict()
    torch.save(dict(jit_state), out / "openai_extra_keys.pt")
    torch.save(openai.state_dict(), out / "openai_state_dict.pt")
    torch.save(copy.deepcopy(openai).float().state_dict(), out / "openai_float32.pt")
    laion = _randomise(open_clip.create_model(small_config), 1)  # trained in float32, GELU
    torch.save(laion.state_dict(), out / "laion.pt")
    torch.save(copy.deepcopy(laion).half().state_dict(), out / "laion_half.pt")
    bf16 = copy.deepcopy(laion)
    open_clip.model.convert_weights_to_lp(bf16, dtype=torch.bfloat16)  # precision="bf16"
    torch.save(bf16.state_dict(), out / "laion_bf16.pt")
    return {p.stem: p for p in out.iterdir()}


def _reference(name: str, path: Path) -> nn.Module:
    """open_clip's own loading of a file."""
    from open_clip.openai import load_openai_model

    if path.stem in ("ViT-openai", "openai_extra_keys"):  # create_model cannot read these
        return load_openai_model(str(path), device="cpu")
    if path.stem.startswith("openai"):
        return open_clip.create_model(name, pretrained=str(path), force_quick_gelu=True)
    return open_clip.create_model(name, pretrained=str(path))


def _assert_same_features(ref_model: nn.Module, clip: ClipBackbone, atol: float = 1e-6) -> None:
    """Image, text and dense features of samkit's backbone equal those of open_clip's model."""
    ref = ClipBackbone(model=ref_model, tokenizer=clip.tokenizer)
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    texts = ["a photo of a cat", "two dogs"]
    tol = {"atol": atol, "rtol": 0.0}
    normalised = _normalised(clip, images)
    torch.testing.assert_close(
        clip.encode_image(images), ref_model.encode_image(normalised, normalize=True), **tol
    )
    torch.testing.assert_close(
        clip.encode_text(texts).embeddings,
        ref_model.encode_text(clip.tokenize(texts), normalize=True),
        **tol,
    )
    for mode in MODES:
        mine = clip.encode_dense(images, mode=mode, intermediates=(0,))
        theirs = ref.encode_dense(images, mode=mode, intermediates=(0,))
        torch.testing.assert_close(mine.features, theirs.features, **tol)
        torch.testing.assert_close(mine.intermediates[0], theirs.intermediates[0], **tol)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
class TestQuickGelu:
    """`quick_gelu=None` reads the activation from the file; see docs/backbones/clip.md."""

    @pytest.mark.parametrize(
        ("stem", "quick", "warns"),
        [
            ("ViT-openai", True, None),  # OpenAI's TorchScript archive: its QuickGELU modules
            ("openai_extra_keys", True, None),  # OpenAI's extra entries
            ("openai_state_dict", True, "mixed precision OpenAI released"),  # no extra entries
            ("openai_float32", True, "mixed precision OpenAI released"),  # upcast to float32
            ("laion", False, None),  # open_clip-trained (float32): GELU, as the config says
        ],
    )
    def test_matches_open_clip(
        self, clip_files: dict[str, Path], stem: str, quick: bool, warns: str | None
    ) -> None:
        path = clip_files[stem]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            clip = build_clip_backbone(SMALL, checkpoint=path)
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        if warns is None:
            assert not messages
        else:
            assert len(messages) == 1 and warns in messages[0] and str(path) in messages[0]
        assert _is_quick(clip) is quick
        _assert_same_features(_reference(SMALL, path), clip)

    @pytest.mark.parametrize("stem", ["ViT-openai", "openai_state_dict"])
    def test_gelu_would_differ(self, clip_files: dict[str, Path], stem: str) -> None:
        """The check above can see the difference: GELU on OpenAI's weights is off by > 1e-3."""
        path = clip_files[stem]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # tested in test_explicit_choice_wins
            gelu = build_clip_backbone(SMALL, checkpoint=path, quick_gelu=False)
        assert not _is_quick(gelu)
        with pytest.raises(AssertionError):
            _assert_same_features(_reference(SMALL, path), gelu, atol=1e-3)

    def test_explicit_choice_wins(self, clip_files: dict[str, Path]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            forced = build_clip_backbone(SMALL, checkpoint=clip_files["laion"], quick_gelu=True)
            confirmed = build_clip_backbone(
                SMALL, checkpoint=clip_files["openai_state_dict"], quick_gelu=True
            )
        assert _is_quick(forced) and _is_quick(confirmed)
        with pytest.warns(UserWarning, match="quick_gelu=False gives GELU, but it carries"):
            build_clip_backbone(SMALL, checkpoint=clip_files["openai_extra_keys"], quick_gelu=False)

    @pytest.mark.parametrize(
        ("stem", "values"), [("laion_half", "float16"), ("laion_bf16", "bfloat16")]
    )
    def test_low_precision_everywhere_is_ambiguous(
        self, clip_files: dict[str, Path], stem: str, values: str
    ) -> None:
        with pytest.warns(UserWarning, match=f"cannot tell whether .* {values} values"):
            clip = build_clip_backbone(SMALL, checkpoint=clip_files[stem])
        assert not _is_quick(clip)

    def test_quickgelu_config_and_off_switch(self, clip_files: dict[str, Path]) -> None:
        quick_name = f"{SMALL}-quickgelu"  # like open_clip's `*-quickgelu` configs
        assert _is_quick(build_clip_backbone(quick_name))
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # the name is an explicit choice
            assert _is_quick(build_clip_backbone(quick_name, checkpoint=clip_files["laion"]))
        assert not _is_quick(build_clip_backbone(quick_name, quick_gelu=False))
        assert _is_quick(build_clip_backbone("tiny", quick_gelu=True))
        assert not _is_quick(build_clip_backbone("tiny"))


class TestDense:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("size", [(32, 32), (48, 64), (24, 40), (20, 36)])
    def test_shape(self, tiny_clip: ClipBackbone, mode: str, size: tuple[int, int]) -> None:
        out = tiny_clip.encode_dense(torch.rand(2, 3, *size), mode=mode, intermediates=(1, -1))
        h, w = size[0] // 8, size[1] // 8
        assert out.features.shape == (2, 32, h, w)
        assert out.cls.shape == (2, 32)
        assert [t.shape for t in out.intermediates] == [(2, 64, h, w)] * 2
        assert tiny_clip.dense_features(torch.rand(1, 3, *size), mode=mode).shape == (1, 32, h, w)

    def test_plain_equals_open_clip_tokens(self, tiny_clip: ClipBackbone) -> None:
        images = torch.rand(2, 3, 32, 32)
        visual = copy.deepcopy(tiny_clip.model.visual)
        visual.output_tokens = True
        pooled, tokens = visual(_normalised(tiny_clip, images))
        out = tiny_clip.encode_dense(images)
        torch.testing.assert_close(
            out.features.flatten(2).transpose(1, 2), tokens @ visual.proj, **TOL
        )
        torch.testing.assert_close(out.cls, pooled, **TOL)
        torch.testing.assert_close(tiny_clip(images), out.features, rtol=0, atol=0)
        torch.testing.assert_close(
            tiny_clip.encode_image(images),
            tiny_clip.model.encode_image(_normalised(tiny_clip, images), normalize=True),
            **TOL,
        )

    def test_plain_at_other_size_equals_bicubic_pos_embed(self, tiny_clip: ClipBackbone) -> None:
        images = torch.rand(1, 3, 48, 40)
        visual = copy.deepcopy(tiny_clip.model.visual)
        pos = visual.positional_embedding.data
        grid = pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(6, 5), mode="bicubic", align_corners=False)
        visual.positional_embedding.data = torch.cat([pos[:1], grid.flatten(2).transpose(1, 2)[0]])
        visual.output_tokens = True
        _, tokens = visual(_normalised(tiny_clip, images))
        out = tiny_clip.dense_features(images)
        torch.testing.assert_close(out.flatten(2).transpose(1, 2), tokens @ visual.proj, **TOL)

    def test_intermediates_equal_forward_intermediates(self, tiny_clip: ClipBackbone) -> None:
        images = torch.rand(2, 3, 32, 32)
        ref = tiny_clip.model.visual.forward_intermediates(
            _normalised(tiny_clip, images), indices=[0, 2, 3], intermediates_only=True
        )["image_intermediates"]
        for mode in MODES:
            out = tiny_clip.encode_dense(images, mode=mode, intermediates=(0, -2, 3))
            for got, want in zip(out.intermediates, ref, strict=True):
                torch.testing.assert_close(got, want, **TOL)

    def test_value_matches_rederivation(self, tiny_clip: ClipBackbone) -> None:
        images = torch.rand(2, 3, 32, 32)
        ref = _reference_value(tiny_clip.model.visual, _normalised(tiny_clip, images))
        out = tiny_clip.encode_dense(images, mode="value")
        torch.testing.assert_close(_as_tokens(out), ref, **TOL)

    @pytest.mark.parametrize("depth", [1, 2, 4])
    def test_surgery_matches_reference(self, tiny_clip: ClipBackbone, depth: int) -> None:
        images = torch.rand(2, 3, 32, 32)
        ref = _reference_surgery(tiny_clip.model.visual, _normalised(tiny_clip, images), depth)
        out = tiny_clip.encode_dense(images, mode="surgery", surgery_depth=depth)
        torch.testing.assert_close(_as_tokens(out), ref, **TOL)

    def test_surgery_depth_clamped_and_cls_is_global(self, tiny_clip: ClipBackbone) -> None:
        images = torch.rand(2, 3, 32, 32)
        six = tiny_clip.encode_dense(images, mode="surgery")  # default 6 > 4 blocks
        four = tiny_clip.encode_dense(images, mode="surgery", surgery_depth=4)
        torch.testing.assert_close(six.features, four.features, **TOL)
        plain = tiny_clip.encode_dense(images)
        torch.testing.assert_close(six.cls, plain.cls, **TOL)
        assert not torch.allclose(six.features, plain.features, atol=1e-3)

    def test_model_not_mutated(self, tiny_clip: ClipBackbone) -> None:
        clip = _fresh(tiny_clip)
        before = {k: v.clone() for k, v in clip.state_dict().items()}
        kinds = [type(m) for m in clip.modules()]
        images = torch.rand(1, 3, 40, 32)
        plain = clip.dense_features(images)
        for mode in ("value", "surgery", "plain"):
            clip.dense_features(images, mode=mode)
        assert [type(m) for m in clip.modules()] == kinds
        for k, v in clip.state_dict().items():
            assert torch.equal(v, before[k]), k
        torch.testing.assert_close(clip.dense_features(images), plain, rtol=0, atol=0)

    def test_exception(self, tiny_clip: ClipBackbone) -> None:
        with pytest.raises(ValueError, match=r"images: expected 4 dims \(B, 3, H, W\)"):
            tiny_clip.dense_features(torch.rand(3, 32, 32))
        with pytest.raises(ValueError, match="axis '3' must be 3"):
            tiny_clip.dense_features(torch.rand(1, 4, 32, 32))
        with pytest.raises(ValueError, match="patch size 8"):
            tiny_clip.dense_features(torch.rand(1, 3, 4, 32))
        with pytest.raises(ValueError, match="unknown dense mode 'dino'"):
            tiny_clip.dense_features(torch.rand(1, 3, 32, 32), mode="dino")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="surgery_depth must be >= 1"):
            tiny_clip.encode_dense(torch.rand(1, 3, 32, 32), mode="surgery", surgery_depth=0)
        with pytest.raises(ValueError, match="index 4 out of range for 4 vision blocks"):
            tiny_clip.encode_dense(torch.rand(1, 3, 32, 32), intermediates=(4,))

    def test_device_dtype(
        self, tiny_clip: ClipBackbone, device: torch.device, dtype: torch.dtype
    ) -> None:
        clip = _fresh(tiny_clip).to(device=device, dtype=dtype)
        images = torch.rand(2, 3, 32, 24, device=device)
        for mode in MODES:
            out = clip.encode_dense(images, mode=mode, intermediates=(1,))
            for t in (out.features, out.cls, *out.intermediates):
                assert t.device.type == device.type and t.dtype == dtype
                assert torch.isfinite(t).all()
        ref = _fresh(tiny_clip).to(device).encode_dense(images, mode="surgery").features
        tol = TOLERANCES[dtype]
        torch.testing.assert_close(
            clip.dense_features(images, mode="surgery").float(),
            ref,
            atol=tol["atol"] * 10,
            rtol=tol["rtol"] * 10,
        )
        text = clip.encode_text(["a cat"], return_tokens=True)
        assert text.embeddings.device.type == device.type and text.embeddings.dtype == dtype
        assert text.tokens is not None and text.tokens.device.type == device.type

    def test_gradcheck(self, tiny_clip: ClipBackbone) -> None:
        clip = _fresh(tiny_clip).double()
        images = torch.rand(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
        for mode in ("value", "surgery"):
            assert torch.autograd.gradcheck(
                lambda x, m=mode: clip.dense_features(x, mode=m), (images,), fast_mode=True
            )

    @pytest.mark.parametrize("mode", ["value", "surgery"])  # surgery also runs the plain blocks
    def test_compile(self, tiny_clip: ClipBackbone, mode: str) -> None:
        images = torch.rand(2, 3, 32, 40)
        fn = torch.compile(
            lambda x: tiny_clip.encode_dense(x, mode=mode, intermediates=(1,)).features,
            backend="eager",
            fullgraph=True,
        )
        torch.testing.assert_close(fn(images), tiny_clip.dense_features(images, mode=mode), **TOL)

    @given(data=st.data())
    def test_batch_independence(self, tiny_clip: ClipBackbone, data: st.DataObject) -> None:
        b = data.draw(st.integers(1, 3))
        h = data.draw(st.integers(2, 5)) * 8
        w = data.draw(st.integers(2, 5)) * 8
        mode = data.draw(st.sampled_from(MODES))
        torch.manual_seed(data.draw(st.integers(0, 2**16)))
        images = torch.rand(b, 3, h, w)
        out = tiny_clip.encode_dense(images, mode=mode)
        for i in range(b):
            alone = tiny_clip.encode_dense(images[i : i + 1], mode=mode)
            torch.testing.assert_close(out.features[i : i + 1], alone.features, **TOL)
            torch.testing.assert_close(out.cls[i : i + 1], alone.cls, **TOL)


class TestInputContract:
    """The image / text contract of `samkit._checks` at every public encoder."""

    @staticmethod
    def _encoders(clip: ClipBackbone) -> dict[str, Callable[[Tensor], Tensor]]:
        return {
            "encode_image": clip.encode_image,
            "dense_features": lambda x: clip.dense_features(x, mode="surgery"),
            "forward": clip,
            "encode_dense": lambda x: clip.encode_dense(x, mode="value", intermediates=(1,)).cls,
            "intermediates": lambda x: clip.encode_dense(x, intermediates=(1,)).intermediates[0],
        }

    def test_uint8_is_scaled(self, tiny_clip: ClipBackbone) -> None:
        images = torch.randint(0, 256, (2, 3, 32, 40), dtype=torch.uint8)
        for name, fn in self._encoders(tiny_clip).items():
            out = fn(images)
            assert out.dtype == torch.float32, name
            torch.testing.assert_close(out, fn(images.float() / 255), rtol=0, atol=0, msg=name)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
    def test_other_float_dtypes_give_float32_result(
        self, tiny_clip: ClipBackbone, dtype: torch.dtype
    ) -> None:
        images = torch.rand(2, 3, 32, 32).to(dtype)
        for name, fn in self._encoders(tiny_clip).items():
            out = fn(images)
            assert out.dtype == torch.float32, name
            torch.testing.assert_close(out, fn(images.float()), msg=name)

    @pytest.mark.parametrize(
        ("value", "match"),
        [
            (255.0, r"images: expected float values in \[0, 1\]"),
            (-0.5, r"images: expected float values in \[0, 1\]"),
            (float("nan"), "images: expected finite"),
            (float("inf"), "images: expected finite"),
        ],
    )
    def test_bad_values_raise(self, tiny_clip: ClipBackbone, value: float, match: str) -> None:
        images = torch.rand(1, 3, 32, 32)
        images[0, 1, 3, 4] = value
        for fn in self._encoders(tiny_clip).values():
            with pytest.raises(ValueError, match=match):
                fn(images)
        with pytest.raises(TypeError, match="images: expected uint8"):
            tiny_clip.encode_image(torch.zeros(1, 3, 32, 32, dtype=torch.int32))

    def test_rounding_outside_unit_range_is_clamped(self, tiny_clip: ClipBackbone) -> None:
        images = torch.rand(1, 3, 32, 32)
        nudged = images.clone()
        nudged[..., 0, 0], nudged[..., 0, 1] = 1.0005, -0.0005
        images[..., 0, 0], images[..., 0, 1] = 1.0, 0.0
        torch.testing.assert_close(tiny_clip.encode_image(nudged), tiny_clip.encode_image(images))

    @pytest.mark.parametrize("mode", MODES)
    def test_empty_batch(self, tiny_clip: ClipBackbone, mode: str) -> None:
        images = torch.rand(0, 3, 48, 64)
        out = tiny_clip.encode_dense(images, mode=mode, intermediates=(0, -1))
        assert out.features.shape == (0, 32, 6, 8) and out.cls.shape == (0, 32)
        assert [t.shape for t in out.intermediates] == [(0, 64, 6, 8)] * 2
        assert tiny_clip.dense_features(images, mode=mode).shape == (0, 32, 6, 8)
        assert tiny_clip.encode_image(images).shape == (0, 32)
        assert tiny_clip.encode_image(images.to(torch.uint8)).dtype == torch.float32
        with pytest.raises(ValueError, match="patch size 8"):
            tiny_clip.encode_image(torch.rand(0, 3, 4, 32))

    def test_text_str_is_one_text(self, tiny_clip: ClipBackbone) -> None:
        one = tiny_clip.encode_text("a cat", templates=["a photo of {}."], return_tokens=True)
        listed = tiny_clip.encode_text(["a cat"], templates=["a photo of {}."])
        assert one.texts == ["a cat"] and one.embeddings.shape == (1, 32)
        assert one.token_states is not None and one.token_states.shape[0] == 1
        torch.testing.assert_close(one.embeddings, listed.embeddings, rtol=0, atol=0)
        with pytest.raises(ValueError, match="texts: expected at least one"):
            tiny_clip.encode_text(())
        with pytest.raises(TypeError, match="texts: expected a sequence of str"):
            tiny_clip.encode_text(["cat", 3])  # type: ignore[list-item]


class TestText:
    def test_matches_open_clip_encode_text(self, tiny_clip: ClipBackbone) -> None:
        texts = ["a photo of a cat.", "sky", "the red car on the left!"]
        got = tiny_clip.encode_text(texts)
        want = tiny_clip.model.encode_text(open_clip.tokenize(texts), normalize=True)
        torch.testing.assert_close(got.embeddings, want, **TOL)
        assert got.texts == texts and got.token_states is None and got.padding_mask is None

    def test_template_ensemble(self, tiny_clip: ClipBackbone) -> None:
        names, templates = ["cat", "dog"], ["a photo of a {}.", "a {} in the scene", "{}"]
        got = tiny_clip.encode_text(names, templates=templates)
        rows = []
        for name in names:
            emb = tiny_clip.model.encode_text(
                open_clip.tokenize([t.format(name) for t in templates]), normalize=True
            )
            rows.append(F.normalize(emb.mean(0), dim=-1))
        torch.testing.assert_close(got.embeddings, torch.stack(rows), **TOL)
        torch.testing.assert_close(got.embeddings.norm(dim=-1), torch.ones(2), **TOL)

    def test_unique_texts_encoded_once(
        self, tiny_clip: ClipBackbone, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        clip = _fresh(tiny_clip)
        seen: list[int] = []
        original = clip.encode_tokens

        def spy(tokens: Tensor, *, texts: list[str] | None = None) -> TextEmbedding:
            seen.append(int(tokens.shape[0]))
            assert texts == ["a cat", "cat", "a dog", "dog"]
            return original(tokens, texts=texts)

        monkeypatch.setattr(clip, "encode_tokens", spy)
        out = clip.encode_text(["cat", "dog", "cat"], templates=["a {}", "{}"])
        assert seen == [4]  # one batch of the unique strings "a cat", "cat", "a dog", "dog"
        torch.testing.assert_close(out.embeddings[0], out.embeddings[2], **TOL)

    def test_token_states_and_padding(self, tiny_clip: ClipBackbone) -> None:
        out = tiny_clip.encode_text(
            ["The X!$ Car", "sky"], templates=["{}."], lowercase=True, return_tokens=True
        )
        assert out.texts == ["The X!$ Car", "sky"]
        assert (
            out.token_states is not None and out.padding_mask is not None and out.tokens is not None
        )
        assert out.token_states.shape == (2, 77, 32) and out.padding_mask.shape == (2, 77)
        expected = open_clip.tokenize(["the x!$ car.", "sky."])
        assert torch.equal(out.tokens, expected)
        # "!" inside a word is BPE id 0, like padding: the mask must come from the EOT position
        eot = expected.argmax(dim=-1)
        assert (out.tokens[0, 1 : eot[0]] == 0).any()
        assert torch.equal(out.padding_mask, torch.arange(77)[None] > eot[:, None])
        m = tiny_clip.model
        x = m.token_embedding(expected) + m.positional_embedding
        states = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
        torch.testing.assert_close(out.token_states, states, **TOL)
        pooled = F.normalize(states[torch.arange(2), eot] @ m.text_projection, dim=-1)
        torch.testing.assert_close(out.embeddings, pooled, **TOL)

    def test_batch_size_chunks_agree(self, tiny_clip: ClipBackbone) -> None:
        names = ["cat", "dog", "sky", "road", "tree"]
        whole = tiny_clip.encode_text(names, templates=["a {}."], return_tokens=True)
        chunked = tiny_clip.encode_text(
            names, templates=["a {}."], return_tokens=True, batch_size=2
        )
        torch.testing.assert_close(chunked.embeddings, whole.embeddings, **TOL)
        torch.testing.assert_close(chunked.token_states, whole.token_states, **TOL)
        assert chunked.tokens is not None and whole.tokens is not None
        assert torch.equal(chunked.tokens, whole.tokens)

    def test_encode_tokens(self, tiny_clip: ClipBackbone) -> None:
        tokens = tiny_clip.tokenize(["a cat", "two dogs"])
        out = tiny_clip.encode_tokens(tokens[:, :12])
        assert out.texts == ["a cat", "two dogs"]
        assert out.token_states is not None and out.token_states.shape == (2, 12, 32)
        full = tiny_clip.encode_tokens(tokens)
        torch.testing.assert_close(
            out.embeddings, full.embeddings, **TOL
        )  # causal: padding is inert

    @given(data=st.data())
    def test_permutation_equivariance(self, tiny_clip: ClipBackbone, data: st.DataObject) -> None:
        words = ["cat", "dog", "sky", "road", "tree", "person"]
        names = data.draw(st.lists(st.sampled_from(words), min_size=1, max_size=5))
        perm = data.draw(st.permutations(range(len(names))))
        a = tiny_clip.encode_text(names, templates=["a {}.", "{}"]).embeddings
        b = tiny_clip.encode_text([names[i] for i in perm], templates=["a {}.", "{}"]).embeddings
        torch.testing.assert_close(b, a[list(perm)], **TOL)

    def test_exception(self, tiny_clip: ClipBackbone) -> None:
        with pytest.raises(ValueError, match="texts: expected at least one"):
            tiny_clip.encode_text([])
        with pytest.raises(ValueError, match="templates: expected at least one template"):
            tiny_clip.encode_text(["cat"], templates=[])
        with pytest.raises(ValueError, match="needs a '\\{\\}' slot"):
            tiny_clip.encode_text(["cat"], templates=["a photo"])
        with pytest.raises(ValueError, match="at most one template"):
            tiny_clip.encode_text(["cat"], templates=["{}", "a {}"], return_tokens=True)
        with pytest.raises(ValueError, match="expected L <= 77"):
            tiny_clip.encode_tokens(torch.zeros(1, 80, dtype=torch.long))
        with pytest.raises(ValueError, match=r"tokens: expected 2 dims"):
            tiny_clip.encode_tokens(torch.zeros(77, dtype=torch.long))
        with pytest.raises(ValueError, match="texts: expected 2 strings, got 1"):
            tiny_clip.encode_tokens(tiny_clip.tokenize(["a", "b"]), texts=["a"])
        with pytest.raises(ValueError, match="batch_size must be >= 1"):
            tiny_clip.encode_text(["cat"], batch_size=0)


class TestTrainable:
    def _qv_names(self, clip: ClipBackbone) -> set[str]:
        names = set()
        for prefix in ("model.visual.transformer", "model.transformer"):
            tower = clip.get_submodule(prefix)
            for i in range(len(tower.resblocks)):
                base = f"{prefix}.resblocks.{i}.attn.parametrizations.in_proj_weight"
                names |= {f"{base}.original0", f"{base}.original2"}
        return names

    def _loss(self, clip: ClipBackbone, mode: str = "value") -> Tensor:
        torch.manual_seed(3)
        feats = clip.dense_features(torch.rand(2, 3, 32, 32), mode=mode)
        text = clip.encode_text(["cat", "dog"]).embeddings
        return torch.einsum("bchw,tc->bthw", feats, text).square().mean()

    def test_attention_qv_exact_parameters(self, tiny_clip: ClipBackbone) -> None:
        clip = _fresh(tiny_clip)
        names = clip.set_trainable("attention_qv")
        assert set(names) == self._qv_names(clip) and len(names) == 2 * (4 + 2)
        self._loss(clip, "plain").backward()  # (value/surgery leave the last q unused)
        for name, p in clip.named_parameters():
            if name in names:
                assert (
                    p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                ), name
            else:
                assert p.grad is None, name

    def test_policy_none_and_all(self, tiny_clip: ClipBackbone) -> None:
        clip = _fresh(tiny_clip)
        assert clip.set_trainable("none") == []
        images = torch.rand(1, 3, 32, 32, requires_grad=True)
        clip.dense_features(images, mode="surgery").sum().backward()
        assert images.grad is not None and all(p.grad is None for p in clip.parameters())
        names = clip.set_trainable("all")
        assert len(names) == len(list(clip.parameters()))
        self._loss(clip, "plain").backward()
        unused = {"model.logit_scale"}
        for name, p in clip.named_parameters():
            assert (p.grad is None) == (name in unused), name

    def test_policy_visual(self, tiny_clip: ClipBackbone) -> None:
        clip = _fresh(tiny_clip)
        names = clip.set_trainable("visual")
        visual = {n for n, _ in clip.named_parameters() if n.startswith("model.visual.")}
        assert set(names) == visual
        clip.train()
        assert clip.model.visual.training
        self._loss(clip, "surgery").backward()
        for name, p in clip.named_parameters():
            if name in names:
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
            else:  # the text tower stays frozen
                assert p.grad is None, name
        grad = clip.model.visual.conv1.weight.grad
        assert grad is not None and grad.abs().sum() > 0

    def test_optimizer_step_changes_only_q_and_v(self, tiny_clip: ClipBackbone) -> None:
        clip = _fresh(tiny_clip)
        clip.set_trainable("attention_qv")
        clip.train()
        before = {k: v.clone() for k, v in clip.state_dict().items()}
        opt = torch.optim.AdamW(clip.param_groups(1.0, lr_multiplier=0.01), weight_decay=0.1)
        self._loss(clip).backward()
        opt.step()
        changed = {k for k, v in clip.state_dict().items() if not torch.equal(v, before[k])}
        assert changed == self._qv_names(clip)
        clip.set_trainable("none")  # folds q/k/v back into one open_clip parameter
        assert set(clip.state_dict()) == set(tiny_clip.state_dict())
        w_new = clip.model.visual.transformer.resblocks[0].attn.in_proj_weight
        w_old = tiny_clip.model.visual.transformer.resblocks[0].attn.in_proj_weight
        q_new, k_new, v_new = w_new.chunk(3)
        q_old, k_old, v_old = w_old.chunk(3)
        assert torch.equal(k_new, k_old)
        assert not torch.equal(q_new, q_old) and not torch.equal(v_new, v_old)

    def test_qv_finetuning_learns(self, tiny_clip: ClipBackbone) -> None:
        clip = _fresh(tiny_clip)
        clip.set_trainable("attention_qv")
        clip.train()
        images = torch.rand(2, 3, 32, 32)
        k_before = clip.model.transformer.resblocks[0].attn.in_proj_weight.detach().chunk(3)[1]
        opt = torch.optim.Adam(clip.param_groups(1.0, lr_multiplier=1e-2))

        def loss_fn() -> Tensor:  # pull every patch of the value-mode map towards "cat"
            feats = F.normalize(clip.dense_features(images, mode="value"), dim=1)
            text = clip.encode_text(["cat", "dog"]).embeddings
            logits = torch.einsum("bchw,tc->bthw", feats, text) / 0.07
            return F.cross_entropy(logits, torch.zeros(2, 4, 4, dtype=torch.long))

        first = loss_fn().item()
        for _ in range(15):
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
        assert loss_fn().item() < 0.5 * first
        k_after = clip.model.transformer.resblocks[0].attn.in_proj_weight.detach().chunk(3)[1]
        assert torch.equal(k_before, k_after)

    def test_split_preserves_outputs(self, tiny_clip: ClipBackbone) -> None:
        clip = _fresh(tiny_clip)
        images = torch.rand(1, 3, 32, 32)
        want = [tiny_clip.dense_features(images, mode=m) for m in MODES]
        want_text = tiny_clip.encode_text(["a cat"]).embeddings
        clip.set_trainable("attention_qv")
        with torch.no_grad():
            for m, w in zip(MODES, want, strict=True):
                torch.testing.assert_close(clip.dense_features(images, mode=m), w, **TOL)
            torch.testing.assert_close(clip.encode_text(["a cat"]).embeddings, want_text, **TOL)

    def test_param_groups(self, tiny_clip: ClipBackbone) -> None:
        clip = _fresh(tiny_clip)
        assert clip.param_groups(2e-4) == []
        clip.set_trainable("attention_qv")
        (group,) = clip.param_groups(2e-4)
        assert group["lr"] == pytest.approx(2e-6) and len(group["params"]) == 12

    def test_exception(self, tiny_clip: ClipBackbone) -> None:
        with pytest.raises(ValueError, match="unknown trainable policy 'lora'"):
            _fresh(tiny_clip).set_trainable("lora")  # type: ignore[arg-type]


class TestSimilarityMap:
    def test_hand_computed(self) -> None:
        features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
        text = torch.tensor([[2.0, 1.0]])
        # dot products 2, 1, 3 -> min-max (0.5, 0, 1)
        torch.testing.assert_close(similarity_map(features, text), torch.tensor([[0.5, 0.0, 1.0]]))

    def test_matches_reference_and_is_finite(self) -> None:
        features, text = torch.randn(3, 10, 8), torch.randn(3, 8)
        sm = features @ text[..., None]  # CLIP-Surgery get_similarity_map on (B, N, 1)
        sm = (sm - sm.min(1, keepdim=True)[0]) / (
            sm.max(1, keepdim=True)[0] - sm.min(1, keepdim=True)[0]
        )
        torch.testing.assert_close(similarity_map(features, text), sm[..., 0], **TOL)
        flat = similarity_map(torch.ones(1, 4, 2), torch.ones(1, 2))
        assert torch.equal(flat, torch.zeros(1, 4))

    def test_gradcheck(self) -> None:
        features = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
        text = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(similarity_map, (features, text), fast_mode=True)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"text: expected shape \(B, C\) with C=8"):
            similarity_map(torch.randn(2, 5, 8), torch.randn(2, 4))
        with pytest.raises(ValueError, match=r"features: expected 3 dims"):
            similarity_map(torch.randn(5, 8), torch.randn(2, 8))
