"""Unreadable checkpoint files fail clearly: the file is named with the kind that was expected.

Every loader of the library (SAM, CLIP, the SSP-SAM release, the engine's training checkpoints
that the examples' `--resume` reads) goes through `samkit._io.read_checkpoint`; each is fed
empty, garbage and truncated `.pth` / `.pt` / `.safetensors` files here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from samkit._io import read_checkpoint
from samkit.backbones.clip import build_clip_backbone
from samkit.backbones.sam import build_sam_backbone
from samkit.engine.checkpoint import load_checkpoint
from samkit.proposals import load_patches
from samkit.systems.ssp_sam import SSPSAM, build_ssp_sam
from samkit.systems.ssp_sam_official import load_official_ssp_sam

Loader = Callable[[Path], Any]


@pytest.fixture(scope="module")
def ssp_sam() -> SSPSAM:
    torch.manual_seed(0)
    return build_ssp_sam("tiny")


def _small_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return model, opt


LOADERS: dict[str, tuple[str, str]] = {
    # id: (kind named in the error, file name)
    "sam-pth": ("SAM checkpoint", "sam_vit_b.pth"),
    "sam-safetensors": ("SAM checkpoint", "sam.safetensors"),
    "clip-pt": ("CLIP checkpoint", "ViT-B-16.pt"),
    "clip-safetensors": ("CLIP checkpoint", "clip.safetensors"),
    "ssp-sam-official": ("SSP-SAM official checkpoint", "checkpoint_best_miou.pth"),
    # the examples' `--resume` (and any engine run's) reads the engine's checkpoints
    "engine-checkpoint": ("samkit training checkpoint", "step_000000003.pt"),
    "patches": ("samkit patches file", "patches.safetensors"),
}


def loader_for(case: str, ssp_sam: SSPSAM) -> Loader:
    """The function that reads the file of a `LOADERS` case."""
    if case.startswith("sam-") and case.split("-")[1] in ("pth", "safetensors"):
        return lambda p: build_sam_backbone("tiny", checkpoint=p)
    if case.startswith("clip"):
        return lambda p: build_clip_backbone("tiny", checkpoint=p)
    if case == "ssp-sam-official":
        return lambda p: load_official_ssp_sam(p, config="tiny")
    if case == "patches":
        return load_patches
    assert case == "engine-checkpoint", case
    return load_checkpoint


def _valid_bytes(path: Path) -> bytes:
    """A valid file of the same format (a small dict of tensors), to truncate."""
    state = {f"w{i}": torch.randn(64, 64) for i in range(4)}
    tmp = path.with_name("valid" + path.suffix)
    if path.suffix == ".safetensors":
        save_file(state, str(tmp))
    else:
        torch.save(state, tmp)
    return tmp.read_bytes()


CORRUPTIONS: dict[str, Callable[[Path], bytes]] = {
    "empty": lambda p: b"",
    "garbage": lambda p: b"this is not a checkpoint\n" * 40,
    "truncated": lambda p: _valid_bytes(p)[: len(_valid_bytes(p)) // 2],
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("case", sorted(LOADERS))
def test_unreadable_file_names_file_and_kind(
    case: str, corruption: str, tmp_path: Path, ssp_sam: SSPSAM
) -> None:
    kind, name = LOADERS[case]
    path = tmp_path / name
    path.write_bytes(CORRUPTIONS[corruption](path))
    with pytest.raises(ValueError) as info:
        loader_for(case, ssp_sam)(path)
    message = str(info.value)
    assert str(path) in message and f"not a readable {kind}" in message, message
    assert "weights_only=False" not in message
    assert info.value.__cause__ is not None  # the reader's own error is chained
    if corruption == "empty":
        assert "empty" in message


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_readable_file_of_wrong_content(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"x{suffix}"
    if suffix == ".pt":
        torch.save([torch.zeros(1)], path)
        with pytest.raises(ValueError, match=r"x\.pt: not a readable SAM checkpoint: .* got list"):
            build_sam_backbone("tiny", checkpoint=path)
        with pytest.raises(ValueError, match=r"x\.pt: not a readable CLIP checkpoint: .*list"):
            build_clip_backbone("tiny", checkpoint=path)
    else:
        save_file({"w": torch.zeros(1)}, str(path))
        with pytest.raises(RuntimeError, match="does not fit CLIP architecture"):
            build_clip_backbone("tiny", checkpoint=path)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_archive_where_a_state_dict_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pth"
    torch.jit.script(nn.Linear(2, 2)).save(str(path))
    with pytest.raises(ValueError, match="not a readable SAM checkpoint: it is a TorchScript"):
        build_sam_backbone("tiny", checkpoint=path)
    assert isinstance(read_checkpoint(path, kind="x", torchscript=True), torch.jit.ScriptModule)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="resume state not found: .*nope.pt"):
        read_checkpoint(tmp_path / "nope.pt", kind="resume state")


def test_write_atomic_gives_the_permissions_of_a_normal_new_file(tmp_path: Path) -> None:
    """Regression: files were left owner-only (mkstemp's 0o600), unreadable to other users."""
    import os

    from samkit._io import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.bin").read_bytes() == b"x"
