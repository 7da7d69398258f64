"""Shape validation used at every public entry point.

`check_shape(x, "B D h w", name="features")` checks the number of axes, the fixed sizes
(digits in the pattern), and that a letter used twice names the same size. It returns the
named sizes so a forward can read them instead of unpacking `x.shape` by hand.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

__all__ = ["check_same_device", "check_shape"]


def _fmt(pattern: list[str]) -> str:
    return "(" + ", ".join(pattern) + ")"


def check_shape(
    x: Tensor,
    pattern: str,
    *,
    name: str = "input",
    known: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Validate the shape of a tensor against a pattern of axis names.

    Args:
        x: The tensor to check.
        pattern: Space-separated axis names such as `"B D h w"`. A name made of digits is a fixed
            size (`"B 3 H W"`); `"*"` matches any size and is not returned; `"..."` (first token
            only) matches any number of leading axes.
        name: What the tensor is called in error messages.
        known: Sizes already fixed by other inputs (for example `{"B": 2}`); a mismatch raises.

    Returns:
        A dict from axis name to size for every named (non-digit, non-`*`) axis.

    Raises:
        TypeError: If `x` is not a tensor.
        ValueError: If the number of axes or any size differs, with expected vs got.

    Examples:
        >>> check_shape(torch.zeros(2, 8, 4, 4), "B D h w", name="features")
        {'B': 2, 'D': 8, 'h': 4, 'w': 4}
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    tokens = pattern.split()
    sizes: dict[str, int] = dict(known or {})
    shape = tuple(x.shape)
    expected = _fmt(tokens)
    if tokens and tokens[0] == "...":
        tokens = tokens[1:]
        if len(shape) < len(tokens):
            raise ValueError(
                f"{name}: expected at least {len(tokens)} dims {expected}, "
                f"got shape {shape} with {len(shape)} dims"
            )
        shape = shape[len(shape) - len(tokens) :]
    elif len(shape) != len(tokens):
        raise ValueError(
            f"{name}: expected {len(tokens)} dims {expected}, got shape {tuple(x.shape)} "
            f"with {len(shape)} dims"
        )
    out: dict[str, int] = {}
    for axis, size in zip(tokens, shape, strict=True):
        if axis == "*":
            continue
        if axis.isdigit():
            if size != int(axis):
                raise ValueError(
                    f"{name}: expected shape {expected}, got {tuple(x.shape)} "
                    f"(axis {axis!r} must be {axis}, got {size})"
                )
            continue
        if axis in sizes and sizes[axis] != size:
            raise ValueError(
                f"{name}: expected shape {expected} with {axis}={sizes[axis]}, "
                f"got {tuple(x.shape)} ({axis}={size})"
            )
        sizes[axis] = size
        out[axis] = size
    return out


def check_same_device(*tensors: Tensor | None, names: tuple[str, ...] | None = None) -> None:
    """Raise `ValueError` when the given tensors (`None`s skipped) live on different devices.

    Args:
        *tensors: Tensors to compare; `None` entries are ignored.
        names: Optional names for the error message, one per tensor.

    Raises:
        ValueError: If two tensors are on different devices.
    """
    present = [(i, t) for i, t in enumerate(tensors) if t is not None]
    if not present:
        return
    ref_i, ref = present[0]
    for i, t in present[1:]:
        if t.device != ref.device:
            a = names[ref_i] if names else f"tensor {ref_i}"
            b = names[i] if names else f"tensor {i}"
            raise ValueError(f"{a} is on {ref.device} but {b} is on {t.device}")
