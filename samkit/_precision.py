"""Compute precision of the systems and the engine: fp32, or bf16 autocast.

`"fp32"` adds nothing (an enclosing `torch.autocast`, e.g. the engine's, still applies);
`"bf16"` runs the wrapped code under `torch.autocast(device_type, dtype=torch.bfloat16)` on the
device of its inputs (CPU and CUDA), so matmuls and convolutions run in bfloat16 while autocast
keeps its fp32 ops (softmax, layer norm, losses, ...) in float32. The weights stay float32.

float16 is not offered: SAM's ViT gives garbage in float16 unless every LayerNorm stays in
float32 (segment-anything issues #540, #696), and bfloat16 has float32's exponent range.
"""

from __future__ import annotations

import dataclasses
import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal, TypeVar, get_args

import torch
from torch import Tensor

__all__ = [
    "PRECISIONS",
    "Precision",
    "autocast",
    "check_precision",
    "cpu_supports_bf16",
    "to_float32",
]

Precision = Literal["fp32", "bf16"]
"""Compute precision: `"fp32"` (default) or `"bf16"` (bfloat16 autocast)."""

PRECISIONS: tuple[str, ...] = get_args(Precision)

_LOW = (torch.bfloat16, torch.float16)
_warned_slow_cpu = False

T = TypeVar("T")


def check_precision(value: object, *, name: str = "precision") -> Precision:
    """Return `value` if it is a known precision, else raise a `ValueError` naming `name`.

    Examples:
        >>> check_precision("bf16")
        'bf16'
    """
    if not isinstance(value, str) or value not in PRECISIONS:
        raise ValueError(f"{name}: expected one of {list(PRECISIONS)}, got {value!r}")
    return value  # type: ignore[return-value]


def autocast(precision: Precision, device: torch.device | str) -> AbstractContextManager[Any]:
    """The autocast context of `precision` on `device` (a no-op context for `"fp32"`).

    Args:
        precision: `"fp32"` or `"bf16"`.
        device: Where the computation runs; its type picks the autocast backend.

    Raises:
        ValueError: For an unknown precision.

    Examples:
        >>> with autocast("bf16", "cpu"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    check_precision(precision)
    if precision == "fp32":
        return nullcontext()
    kind = torch.device(device).type
    if kind == "cpu":
        _warn_if_cpu_lacks_bf16()
    return torch.autocast(device_type=kind, dtype=torch.bfloat16)


def cpu_supports_bf16() -> bool | None:
    """Whether oneDNN has bfloat16 kernels for this CPU (AVX-512 or AMX); None if unknown."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def _warn_if_cpu_lacks_bf16() -> None:
    """Warn once per process when bf16 runs on a CPU without bfloat16 kernels (it is slower)."""
    global _warned_slow_cpu
    if _warned_slow_cpu or cpu_supports_bf16() is not False:
        return
    _warned_slow_cpu = True
    warnings.warn(
        "bf16 on a CPU without bfloat16 kernels (oneDNN reports none: no AVX-512 or AMX): it "
        "runs several times slower than fp32 here (about 10x measured on an AVX2 CPU, see "
        "docs/performance/precision.md); use precision='fp32' on this machine",
        UserWarning,
        stacklevel=3,
    )


def to_float32(obj: T) -> T:
    """Cast every bfloat16 / float16 tensor in `obj` to float32; other values are kept.

    `obj` may be a tensor, a dataclass (fields are mapped, nested dataclasses too), or a list,
    tuple or dict of those. Bool, integer, float32 and float64 tensors are returned unchanged,
    so a float64 model's outputs stay float64. The cast is differentiable.

    Examples:
        >>> to_float32([torch.ones(1, dtype=torch.bfloat16), torch.ones(1, dtype=torch.bool)])
        [tensor([1.]), tensor([True])]
    """
    if isinstance(obj, Tensor):
        return obj.float() if obj.dtype in _LOW else obj  # type: ignore[return-value]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: to_float32(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init
        }
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    if isinstance(obj, list):
        return [to_float32(v) for v in obj]  # type: ignore[return-value]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_float32(v) for v in obj)  # type: ignore[return-value]
    if isinstance(obj, dict):
        return {k: to_float32(v) for k, v in obj.items()}  # type: ignore[return-value]
    return obj
