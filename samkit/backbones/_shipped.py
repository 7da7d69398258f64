"""The weights samkit ships inside the package (`tiny-synth` presets), checked by SHA-256.

The files live in `samkit/backbones/weights/` and are read from the installed package, never
from the network. Each is float16 safetensors made by `samkit pretrain` (see
`docs/pretrained.md` for the command and its figures); its SHA-256 is recorded here and
checked on every load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors

__all__: list[str] = []

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# "<kind>/<preset>" -> (file name in WEIGHTS_DIR, SHA-256 of the file)
SHIPPED_PRESETS: dict[str, tuple[str, str]] = {
    "clip/tiny-synth": (
        "clip_tiny-synth.safetensors",
        "b7aaf3b0a49c44f93eb634aa36781e9f6ad38919c8ffd59175d0ac1de0d80151",
    ),
    "sam/tiny-synth": (
        "sam_tiny-synth.safetensors",
        "6eda2f030ed63e7c04104e209014dc54f22b9d8cd2ef263ee095f7fe01e2b1dd",
    ),
}


def shipped_state_dict(key: str, *, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Read and verify a shipped weight file; floating tensors are cast to `dtype`.

    Raises:
        ValueError: If `key` has no shipped weights, or the file's SHA-256 differs from the
            recorded one (a corrupted or replaced file); the message names the file.
        FileNotFoundError: If the file is missing from the installed package.
    """
    if key not in SHIPPED_PRESETS:
        raise ValueError(f"no shipped weights for {key!r}; shipped: {sorted(SHIPPED_PRESETS)}")
    name, expected = SHIPPED_PRESETS[key]
    path = WEIGHTS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: shipped weights for {key!r} are missing from the installed package "
            "(reinstall samkit)"
        )
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise ValueError(
            f"{path}: SHA-256 mismatch for the shipped {key!r} weights: expected {expected}, "
            f"got {got} (the file is corrupted or was replaced; reinstall samkit)"
        )
    state = load_safetensors(data)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
