"""Shared fixtures: devices, dtypes, seeded RNG, tiny backbones, hypothesis profiles.

Devices: `cpu`, plus `cuda` when available. Override with `SAMKIT_TEST_DEVICES=cpu,cuda`.
Every test that takes the `device` fixture runs unchanged on each device.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev",
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def _devices() -> list[str]:
    env = os.environ.get("SAMKIT_TEST_DEVICES")
    if env:
        return [d.strip() for d in env.split(",") if d.strip()]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


DEVICES = _devices()


def _dtypes() -> list[torch.dtype]:
    out = [torch.float32]
    if "cuda" in DEVICES:
        out.append(torch.bfloat16)
    return out


@pytest.fixture(scope="session", params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every available test device (session-scoped so hypothesis tests can use it)."""
    dev = torch.device(request.param)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return dev


@pytest.fixture(scope="session", params=_dtypes(), ids=lambda d: str(d).split(".")[-1])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """float32 everywhere, plus bfloat16 where CUDA is present."""
    return request.param


# Tolerances per dtype for torch.testing.assert_close.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-7},
    torch.float32: {"atol": 1e-5, "rtol": 1e-4},
    torch.bfloat16: {"atol": 5e-2, "rtol": 5e-2},
    torch.float16: {"atol": 1e-2, "rtol": 1e-2},
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Seed torch before every test."""
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `cuda`-marked tests when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_sam():  # type: ignore[no-untyped-def]
    """The `tiny` random-weight SAM backbone, in eval mode, on the CPU."""
    from samkit.backbones.sam import build_sam_backbone

    torch.manual_seed(0)
    return build_sam_backbone("tiny").eval()


@pytest.fixture(scope="session")
def tiny_clip():  # type: ignore[no-untyped-def]
    """The `tiny` random-weight CLIP backbone, in eval mode, on the CPU."""
    from samkit.backbones.clip import build_clip_backbone

    torch.manual_seed(0)
    return build_clip_backbone("tiny").eval()
