from __future__ import annotations

import argparse
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from samkit.losses.referring import referring_loss
from samkit.systems.ssp_sam import REFERENCE_QUIRKS, SSPSAM, build_ssp_sam
from samkit.systems.ssp_sam_official import convert_official_state_dict, load_official_ssp_sam

TEXTS = ["the red circle", "all squares", "the leftmost star"]


@pytest.fixture(scope="module")
def model() -> SSPSAM:
    torch.manual_seed(0)
    return build_ssp_sam("tiny").eval()


class TestSSPSAM:
    def test_smoke(self, model: SSPSAM) -> None:
        out = model(torch.rand(2, 3, 128, 128), TEXTS[:2])
        assert out.low_res_logits.shape == (2, 1, 64, 64)
        assert out.iou_scores.shape == (2, 1)
        assert out.boxes.shape == (2, 4) and ((out.boxes > 0) & (out.boxes < 1)).all()
        assert out.has_target.shape == (2,) and out.has_target.dtype == torch.bool
        assert out.prompts.shape == (2, model.config.num_prompts, model.sam.prompt_dim)
        assert out.logits is None

    @pytest.mark.parametrize("size", [(96, 128), (128, 80)])
    def test_original_size_output(self, model: SSPSAM, size: tuple[int, int]) -> None:
        out = model(torch.rand(1, 3, *size), TEXTS[:1], upsample=True)
        assert out.logits is not None and out.logits.shape == (1, 1, *size)

    def test_precomputed_inputs(self, model: SSPSAM) -> None:
        images = torch.rand(2, 3, 128, 128)
        with torch.no_grad():
            full = model(images, TEXTS[1:])
            cached = model(
                None,
                text=model.encode_text(TEXTS[1:]),
                clip_features=model.encode_clip(images),
                sam_embeddings=model.sam.encode(images),
            )
            by_tokens = model(images, tokens=model.tokenize(TEXTS[1:]))
        torch.testing.assert_close(cached.low_res_logits, full.low_res_logits)
        torch.testing.assert_close(by_tokens.boxes, full.boxes)

    def test_batch_independence(self, model: SSPSAM) -> None:
        images = torch.rand(3, 3, 128, 128)
        with torch.no_grad():
            out = model(images, TEXTS)
            for i in range(3):
                alone = model(images[i : i + 1], TEXTS[i : i + 1])
                torch.testing.assert_close(
                    out.low_res_logits[i : i + 1], alone.low_res_logits, atol=1e-4, rtol=1e-4
                )

    def test_exception(self, model: SSPSAM) -> None:
        with pytest.raises(ValueError, match="images are needed"):
            model(None, TEXTS[:1])
        with pytest.raises(ValueError, match="longer than text_length=16"):
            model.tokenize(["the " * 20 + "circle"])
        with pytest.raises(ValueError, match="unknown SSP-SAM preset"):
            build_ssp_sam("huge")
        with pytest.raises(ValueError, match="unknown SSPSAMConfig fields"):
            build_ssp_sam("tiny", num_promts=4)

    def test_device(self, model: SSPSAM, device: torch.device) -> None:
        m = model.to(device)
        out = m(torch.rand(1, 3, 128, 128, device=device), TEXTS[:1])
        assert out.low_res_logits.device.type == device.type
        model.to("cpu")

    def test_freezing_and_grad_flow(self) -> None:
        torch.manual_seed(0)
        m = build_ssp_sam("tiny").train()
        assert not m.clip.model.training and not m.sam.image_encoder.training
        out = m(torch.rand(2, 3, 128, 128), TEXTS[:2])
        target = torch.zeros_like(out.low_res_logits)
        target[0, :, 10:30, 10:30] = 1
        referring_loss(out.low_res_logits, target, out.boxes, torch.rand(2, 4)).total.backward()
        for name, p in m.named_parameters():
            frozen = name.startswith(("clip.", "sam.image_encoder.", "sam.prompt_encoder."))
            # single-mask decoding never uses the IoU head or the 3 multimask hypernetworks
            unused = name.startswith(("sam.mask_decoder.iou_prediction_head.",)) or any(
                f"output_hypernetworks_mlps.{i}." in name for i in (1, 2, 3)
            )
            if frozen:
                assert not p.requires_grad and p.grad is None, name
            elif unused:  # computed then discarded: no or all-zero gradient
                assert p.requires_grad and (p.grad is None or not p.grad.any()), name
            else:
                assert p.grad is not None and p.grad.isfinite().all(), name
        m.zero_grad(set_to_none=True)
        m.set_decoder_frozen(True)
        out = m(torch.rand(1, 3, 128, 128), TEXTS[:1])
        out.low_res_logits.sum().backward()
        assert all(p.grad is None for p in m.sam.mask_decoder.parameters())
        assert m.language.proj.weight.grad is not None

    def test_param_groups(self, model: SSPSAM) -> None:
        groups = model.param_groups()
        assert [g["name"] for g in groups] == ["rest", "vl_transformer", "mask_decoder"]
        assert [g["lr"] for g in groups] == [1e-4, 1e-4, 1e-4]  # tiny preset: decoder lr 1e-4
        ids = [id(p) for g in groups for p in g["params"]]
        assert len(ids) == len(set(ids))
        heads = {id(p) for h in model.heads().values() for p in h.parameters()}
        decoder = {id(p) for p in model.sam.mask_decoder.parameters()}
        assert set(ids) == heads | decoder
        paper = build_ssp_sam("tiny", decoder_lr=1e-5, decoder_freeze_epochs=20)
        assert paper.param_groups()[2]["lr"] == 1e-5
        assert not any(p.requires_grad for p in paper.sam.mask_decoder.parameters())

    def test_trainable_clip_image_tower(self) -> None:
        torch.manual_seed(0)
        m = build_ssp_sam("tiny", clip_trainable="visual", clip_lr=3e-4).train()
        assert m.clip.model.visual.training  # a trainable CLIP follows .train()
        groups = {g["name"]: g for g in m.param_groups()}
        assert groups["clip"]["lr"] == 3e-4
        visual = {id(p) for p in m.clip.model.visual.parameters()}
        assert {id(p) for p in groups["clip"]["params"]} == visual
        out = m(torch.rand(2, 3, 128, 128), TEXTS[:2])
        out.low_res_logits.square().mean().backward()
        assert m.clip.model.visual.conv1.weight.grad is not None
        assert all(p.grad is None for p in m.clip.model.transformer.parameters())  # text tower
        assert all(p.grad is None for p in m.sam.image_encoder.parameters())

    def test_target_head(self) -> None:
        torch.manual_seed(0)
        m = build_ssp_sam("tiny", target_head=True).train()
        out = m(torch.rand(2, 3, 128, 128), TEXTS[:2])
        assert out.target_logits is not None and out.target_logits.shape == (2,)
        assert torch.equal(out.has_target, out.target_logits > 0)
        out.target_logits.sum().backward()
        assert m.prompt_encoder.presence_head.weight.grad is not None

    def test_reference_quirks(self) -> None:
        m = build_ssp_sam("tiny", **REFERENCE_QUIRKS)
        assert m.language.gru_over_padding and m.config.feature_norm == "token"


# --------------------------------------------------------------------------------------------
# Official checkpoint: an independent re-derivation of the reference forward (spec §1.2, §2),
# written with the reference's module types and key names.


class TestInputContract:
    """Regression tests of issue #11 item 5 (each failed on f8b78a2)."""

    def test_uint8_images(self, model: SSPSAM) -> None:
        # before: uint8 images were used as 0..255 floats and changed the prediction
        images = torch.randint(0, 256, (2, 3, 96, 128), dtype=torch.uint8)
        with torch.no_grad():
            got = model(images, TEXTS[:2])
            want = model(images.float() / 255, TEXTS[:2])
        torch.testing.assert_close(got.low_res_logits, want.low_res_logits, rtol=0, atol=0)
        with pytest.raises(ValueError, match=r"^images: expected float values in \[0, 1\]"):
            model(images.float(), TEXTS[:2])

    def test_one_string_is_one_expression(self, model: SSPSAM) -> None:
        # before: "the red circle" was split into 14 one-character expressions
        images = torch.rand(1, 3, 128, 128)
        with torch.no_grad():
            got = model(images, TEXTS[0])
            want = model(images, [TEXTS[0]])
        torch.testing.assert_close(got.low_res_logits, want.low_res_logits, rtol=0, atol=0)
        with pytest.raises(
            ValueError, match=r"^expressions: expected one per image \(B=1\), got 2"
        ):
            model(images, TEXTS[:2])

    def test_empty_batch(self, model: SSPSAM) -> None:
        # before: a reshape error inside SAM's image encoder
        with torch.no_grad():
            out = model(torch.zeros(0, 3, 96, 128), [], upsample=True)
        assert out.low_res_logits.shape == (0, 1, 64, 64) and out.iou_scores.shape == (0, 1)
        assert out.boxes.shape == (0, 4) and out.has_target.shape == (0,)
        assert out.prompts.shape == (0, model.config.num_prompts, model.sam.prompt_dim)
        assert out.logits is not None and out.logits.shape == (0, 1, 96, 128)


class _MLP(nn.Module):
    def __init__(self, i: int, h: int, o: int, n: int) -> None:
        super().__init__()
        dims = [i] + [h] * (n - 1)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [o], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class _PhraseAttention(nn.Module):
    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(input_dim, 1)

    def forward(self, context, embedded, mask):  # models/text_model.py::PhraseAttention
        scores = self.fc(context).squeeze(2)
        attn = F.softmax(scores, dim=1) * mask.float()
        attn = attn / attn.sum(1).view(attn.size(0), 1).expand(attn.size(0), attn.size(1))
        return attn, torch.bmm(attn.unsqueeze(1), embedded)


class _EncoderLayer(nn.Module):  # DETR TransformerEncoderLayer, forward_post, seq-first
    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=0.0)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, src, mask, pos):
        q = k = src + pos
        src = self.norm1(src + self.self_attn(q, k, value=src, key_padding_mask=mask)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class _Encoder(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_EncoderLayer(d, heads, ff) for _ in range(depth))


class _VLTransformer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, depth: int) -> None:
        super().__init__()
        self.encoder = _Encoder(d, heads, ff, depth)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, pos):
        for layer in self.encoder.layers:
            src = layer(src, mask, pos)
        return src


class _ReferenceSSPSAM(nn.Module):
    def __init__(self, *, c_v, c_t, dim, d, q, n, heads, depth, ff, sam) -> None:
        super().__init__()
        self.q = q
        self.text_proj = nn.GRU(dim, dim, 1, bias=True, batch_first=True, bidirectional=True)
        self.clip_proj = nn.Linear(c_t, dim)
        self.phrase_attn = _PhraseAttention(2 * dim)
        self.clip_img_proj = _MLP(c_v, dim, dim, 3)
        self.img2text_attn = nn.MultiheadAttention(dim, 4, dropout=0.1)
        self.imgtext_proj = _MLP(dim, dim, dim, 1)
        self.img_proj = _MLP(dim, dim, dim, 1)
        self.tf_scale = nn.Parameter(torch.tensor([1.0]))
        self.tf_sigma = nn.Parameter(torch.tensor([0.5]))
        self.norm_img = nn.LayerNorm(dim)
        self.mlp = nn.Linear(dim, d)
        self.reg_token = nn.Embedding(1, d)
        self.prompt_token = nn.Embedding(q, d)
        self.vl_pos_embed = nn.Embedding(1 + q + n, d)
        self.vl_transformer = _VLTransformer(d, heads, ff, depth)
        self.norm = nn.LayerNorm(d)
        self.bbox_embed = _MLP(d, d, 4, 3)
        self.img2img_attn = nn.MultiheadAttention(d, heads)  # dead module of the release
        self.norm_text_cond_img = nn.LayerNorm(d)
        self.sam = sam

    def forward(self, feats, t_cls, words, text, sam_emb):
        b = feats.shape[0]
        feats = feats / feats.norm(dim=1, keepdim=True)  # token axis (spec §8.2)
        sim = (feats @ t_cls[..., None])[:, 1:, 0]
        lo, hi = sim.min(1, keepdim=True)[0], sim.max(1, keepdim=True)[0]
        sim = (sim - lo) / (hi - lo)
        pad = text == 0
        e = self.clip_proj(words)
        h = self.text_proj(e)[0]
        _, y = self.phrase_attn(h, e, ~pad)
        y = y.squeeze(1)  # explicit: (B, dim)
        iq = self.clip_img_proj(feats[:, 1:] * sim[..., None])
        att = self.img2text_attn(
            iq.permute(1, 0, 2), e.permute(1, 0, 2), e.permute(1, 0, 2), key_padding_mask=pad
        )[0]
        t = self.imgtext_proj(att).permute(1, 0, 2)
        u = self.img_proj(iq)
        c = (F.normalize(u, p=2, dim=-1) * F.normalize(t, p=2, dim=-1)).sum(-1, keepdim=True)
        score = self.tf_scale * torch.exp(-((1 - c).pow(2)) / (2 * self.tf_sigma**2))
        v = self.norm_img(iq) * score
        x = self.mlp((torch.tanh(v) * torch.tanh(y[:, None])).permute(1, 0, 2))
        src = torch.cat(
            [
                self.reg_token.weight[:, None].repeat(1, b, 1),
                self.prompt_token.weight[:, None].repeat(1, b, 1),
                x,
            ]
        )
        pos = self.vl_pos_embed.weight[:, None].repeat(1, b, 1)
        mask = torch.zeros(b, src.shape[0], dtype=torch.bool)
        hs = self.norm(self.vl_transformer(src, mask, pos))
        box = self.bbox_embed(hs[0]).sigmoid()[:, None]
        ssp = hs[1 : 1 + self.q].permute(1, 0, 2)
        low, frames = [], []
        size = self.sam.image_encoder.img_size
        for i in range(b):  # SamVisualPrompt.forward: one sample at a time
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=None, masks=None)
            sparse = torch.cat([sparse, ssp[i : i + 1]], dim=1)
            m, _ = self.sam.mask_decoder(
                image_embeddings=sam_emb[i : i + 1],
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            low.append(m)
            up = F.interpolate(m, (size, size), mode="bilinear", align_corners=False)
            frames.append(F.interpolate(up, (size // 2, size // 2), mode="bilinear"))
        return box, torch.cat(low), torch.cat(frames)


def _reference_checkpoint(tmp_path, seed: int = 1):
    torch.manual_seed(0)
    m = build_ssp_sam("tiny", text_length=None, **REFERENCE_QUIRKS)
    torch.manual_seed(seed)
    sam = nn.Module()
    sam.image_encoder = m.sam.image_encoder
    sam.prompt_encoder = m.sam.prompt_encoder
    sam.mask_decoder = copy.deepcopy(m.sam.mask_decoder)  # "fine-tuned": perturbed weights
    with torch.no_grad():
        for p in sam.mask_decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = m.config
    ref = _ReferenceSSPSAM(
        c_v=m.clip.embed_dim,
        c_t=m.clip.text_width,
        dim=cfg.adapter_dim,
        d=m.sam.prompt_dim,
        q=cfg.num_prompts,
        n=m.prompt_encoder.num_tokens,
        heads=cfg.num_heads,
        depth=cfg.depth,
        ff=cfg.mlp_dim,
        sam=sam,
    ).eval()
    with torch.no_grad():
        ref.tf_scale.fill_(1.4)
        ref.tf_sigma.fill_(0.3)
    state = dict(ref.state_dict())
    state["encoder.visual.proj"] = torch.zeros(3)  # CLIP keys are ignored
    state["img2img_attn.pos_x"] = torch.zeros(29, 128)
    path = tmp_path / "checkpoint_best_miou.pth"
    ckpt = {"model": state, "epoch": 3, "args": argparse.Namespace(lr=1e-4)}
    torch.save(ckpt, path)
    return ref, m, path


def _reference_inputs(m: SSPSAM, images, texts):
    with torch.no_grad():
        dense = m.encode_clip(images)
        feats = torch.cat([dense.cls[:, None], dense.features.flatten(2).transpose(1, 2)], 1)
        tokens = m.tokenize(texts)
        text = m.clip.encode_tokens(tokens)
        return feats, text.embeddings, text.token_states, tokens, m.sam.encode(images)


@pytest.mark.parametrize("batch", [1, 2])
def test_official_checkpoint_reproduces_reference(tmp_path, batch: int) -> None:
    ref, base, path = _reference_checkpoint(tmp_path)
    torch.manual_seed(0)  # same random CLIP and SAM encoder as `base`
    loaded = load_official_ssp_sam(path, config="tiny", text_length=None)
    assert loaded.config.feature_norm == "token" and loaded.language.gru_over_padding
    images = torch.rand(batch, 3, 128, 128)
    texts = TEXTS[:batch]
    feats, t_cls, words, tokens, emb = _reference_inputs(loaded, images, texts)
    with torch.no_grad():
        box, low, frame = ref(feats, t_cls, words, tokens, emb.embeddings)
        out = loaded(images, texts)
    torch.testing.assert_close(out.boxes, box[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.low_res_logits, low, atol=1e-4, rtol=1e-4)
    size = loaded.sam.img_size
    up = F.interpolate(out.low_res_logits, (size, size), mode="bilinear", align_corners=False)
    mine = F.interpolate(up, (size // 2, size // 2), mode="bilinear")
    torch.testing.assert_close(mine, frame, atol=1e-4, rtol=1e-4)
    # the loaded weights matter: the freshly built model disagrees
    with torch.no_grad():
        assert not torch.allclose(base(images, texts).low_res_logits, low, atol=1e-2)


def test_official_checkpoint_errors(tmp_path) -> None:
    ref, _, path = _reference_checkpoint(tmp_path)
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = torch.load(path, weights_only=True)["model"]
    with pytest.raises(ValueError, match=r"unknown keys .*'decoder.extra'"):
        convert_official_state_dict({**state, "decoder.extra": torch.zeros(1)})
    missing = {k: v for k, v in state.items() if not k.startswith("sam.mask_decoder.")}
    torch.save({"model": missing}, tmp_path / "stripped.pth")
    with pytest.raises(ValueError, match="lacks .* keys: \\['sam.mask_decoder"):
        load_official_ssp_sam(tmp_path / "stripped.pth", config="tiny", text_length=None)
    with pytest.raises(FileNotFoundError):
        load_official_ssp_sam(tmp_path / "nope.pth", config="tiny")
