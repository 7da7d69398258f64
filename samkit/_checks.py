"""The input contract checked at every public entry point.

`check_shape(x, "B D h w", name="features")` checks the number of axes, the fixed sizes
(digits in the pattern), and that a letter used twice names the same size. It returns the
named sizes so a forward can read them instead of unpacking `x.shape` by hand.

The other helpers turn what users pass into what the modules compute on, or raise a `ValueError`
(`TypeError` for a wrong type) that names the argument, what was expected and what was given:

* `as_image`: uint8 images (what `torchvision.io.read_image` and PIL give) become float in
  `[0, 1]`; float images must lie in `[0, 1]` (up to `IMAGE_RANGE_TOLERANCE`) and be finite; any
  float dtype is computed in the module's dtype (float32 unless the module was cast).
* `as_float`: other real-valued inputs (features, logits, coordinates) in the module's dtype.
* `check_binary`, `check_probabilities`: masks that must be binary, values that must lie in
  `[0, 1]`.
* `as_class_names`: one `str` is one class; a sequence must hold at least one `str`.
* `check_positive`: sizes and counts that must be `>= 1`.
* `check_unit_interval`: thresholds and weights that must lie in `[0, 1]`.
* `resolve_image_sizes`: the true sizes of images padded into one batch.

Checks that read tensor values (range, binary, probabilities) are skipped while
`torch.compile` traces, so the checked entry points compile with `fullgraph=True`; the eager call
checks them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "IMAGE_RANGE_TOLERANCE",
    "as_class_names",
    "as_float",
    "as_image",
    "check_binary",
    "check_positive",
    "check_probabilities",
    "check_same_device",
    "check_shape",
    "check_unit_interval",
    "resolve_image_sizes",
]

IMAGE_RANGE_TOLERANCE = 1e-3
"""How far a float image may stray outside `[0, 1]` (resampling and rounding) before it is an
error; values within the tolerance are clamped."""


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


def _range_of(x: Tensor) -> tuple[float, float]:
    """`(min, max)` of a non-empty tensor with one device sync; NaN when any element is NaN."""
    lo, hi = torch.aminmax(x.detach().reshape(-1))
    both = torch.stack([lo, hi]).double().tolist()
    return float(both[0]), float(both[1])


def as_image(
    images: Tensor,
    *,
    name: str = "images",
    pattern: str = "B 3 H W",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Validate RGB images and return them as float in `[0, 1]` in the compute dtype.

    The image contract of samkit: `uint8` images (`torchvision.io.read_image`, PIL via
    `pil_to_tensor`) are divided by 255; float images (any float dtype) must be finite and lie in
    `[0, 1]`, where values up to `IMAGE_RANGE_TOLERANCE` outside are clamped. Other dtypes
    (bool, signed integers) are an error, since their range is ambiguous.

    Args:
        images: The images, e.g. `(B, 3, H, W)`.
        name: What the argument is called in error messages.
        pattern: The `check_shape` pattern the images must match.
        dtype: The floating dtype to compute in (default float32; pass the module's parameter
            dtype for a module cast with `.double()` / `.half()`).

    Returns:
        The images as `dtype` in `[0, 1]` (the input itself when nothing needed to change).

    Raises:
        TypeError: If `images` is not a tensor or has a dtype other than uint8 / floating.
        ValueError: On a shape mismatch, non-finite pixels or values outside `[0, 1]`.

    Examples:
        >>> as_image(torch.tensor([0, 255], dtype=torch.uint8).expand(1, 3, 1, 2))[0, 0]
        tensor([[0., 1.]])
        >>> as_image(torch.full((1, 3, 2, 2), 255.0))
        Traceback (most recent call last):
        ...
        ValueError: images: expected float values in [0, 1] ...
    """
    check_shape(images, pattern, name=name)
    target = dtype or torch.float32
    if images.dtype == torch.uint8:
        return images.to(target) / 255.0
    if not images.is_floating_point():
        raise TypeError(
            f"{name}: expected uint8 (0..255) or floating (0..1) images, got dtype {images.dtype}"
        )
    if images.numel() > 0 and not torch.compiler.is_compiling():
        lo, hi = _range_of(images)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name}: expected finite pixel values, got NaN or Inf")
        tol = IMAGE_RANGE_TOLERANCE
        if lo < -tol or hi > 1.0 + tol:
            raise ValueError(
                f"{name}: expected float values in [0, 1] (samkit normalises images itself; "
                f"pass uint8 for 0..255 data), got values in [{lo:.4g}, {hi:.4g}]"
            )
        if lo < 0.0 or hi > 1.0:
            images = images.clamp(0.0, 1.0)
    return images.to(target)


def as_float(x: Tensor, *, name: str, dtype: torch.dtype | None = None) -> Tensor:
    """Return a real-valued input in the compute dtype (float32 unless given).

    Float64 / float16 / bfloat16 are cast, so the result is the float32 one to the input's
    precision. Under `torch.autocast`, pass `dtype` only where the module should follow autocast.

    Args:
        x: The tensor.
        name: What the argument is called in error messages.
        dtype: The floating dtype to compute in (default float32).

    Returns:
        `x` as `dtype`.

    Raises:
        TypeError: If `x` is not a tensor or not floating point.

    Examples:
        >>> as_float(torch.ones(2, dtype=torch.float64), name="x").dtype
        torch.float32
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    return x.to(dtype or torch.float32)


def check_binary(x: Tensor, *, name: str) -> Tensor:
    """Check that a mask is binary and return it as bool.

    Args:
        x: A bool tensor, or a numeric tensor holding only 0 and 1.
        name: What the argument is called in error messages.

    Returns:
        `x` as a bool tensor.

    Raises:
        TypeError: If `x` is not a tensor.
        ValueError: If `x` holds a value other than 0 and 1.

    Examples:
        >>> check_binary(torch.tensor([0.0, 1.0]), name="masks")
        tensor([False,  True])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.bool:
        return x
    if x.numel() > 0 and not torch.compiler.is_compiling():
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            example = float(x[bad].reshape(-1)[0])
            raise ValueError(
                f"{name}: expected a binary mask (bool, or only 0 and 1), got value {example:g}"
            )
    return x != 0


def check_probabilities(x: Tensor, *, name: str) -> Tensor:
    """Check that values are probabilities: finite and in `[0, 1]`.

    Args:
        x: A floating tensor.
        name: What the argument is called in error messages.

    Returns:
        `x` unchanged.

    Raises:
        TypeError: If `x` is not a floating tensor.
        ValueError: If a value is NaN or outside `[0, 1]`.

    Examples:
        >>> check_probabilities(torch.tensor([1.5]), name="probs")
        Traceback (most recent call last):
        ...
        ValueError: probs: expected probabilities in [0, 1], got values in [1.5, 1.5]
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected floating probabilities, got dtype {x.dtype}")
    if x.numel() > 0 and not torch.compiler.is_compiling():
        lo, hi = _range_of(x)
        if math.isnan(lo) or math.isnan(hi) or lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name}: expected probabilities in [0, 1], got values in [{lo:.4g}, {hi:.4g}]"
            )
    return x


def as_class_names(
    names: str | Sequence[str], *, name: str = "class_names", allow_empty: bool = False
) -> list[str]:
    """Return class names as a list; a single `str` is one class, not its characters.

    Args:
        names: One class name, or a sequence of them (also texts, e.g. one expression per image).
        name: What the argument is called in error messages.
        allow_empty: Accept an empty sequence (for per-image texts of an empty batch).

    Returns:
        The names as a list, non-empty unless `allow_empty`.

    Raises:
        TypeError: If `names` is neither a `str` nor a sequence of `str`.
        ValueError: If no name is given (T=0) and `allow_empty` is False.

    Examples:
        >>> as_class_names("cat")
        ['cat']
    """
    if isinstance(names, str):
        return [names]
    if not isinstance(names, Sequence):
        raise TypeError(f"{name}: expected a str or a sequence of str, got {type(names).__name__}")
    out = list(names)
    bad = [n for n in out if not isinstance(n, str)]
    if bad:
        raise TypeError(
            f"{name}: expected a sequence of str, got an element of type {type(bad[0]).__name__}"
        )
    if not out and not allow_empty:
        raise ValueError(f"{name}: expected at least one class name (T >= 1), got none")
    return out


def check_positive(value: int, *, name: str) -> int:
    """Check that a size or count is an int `>= 1`.

    Args:
        value: The value.
        name: What the argument is called in error messages.

    Returns:
        `value`.

    Raises:
        TypeError: If `value` is not an int.
        ValueError: If `value < 1`.

    Examples:
        >>> check_positive(0, name="grid_size")
        Traceback (most recent call last):
        ...
        ValueError: grid_size: expected an int >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value}")
    return value


def check_unit_interval(value: float, *, name: str) -> float:
    """Check that a threshold or weight is a real number in `[0, 1]`.

    Args:
        value: The value.
        name: What the argument is called in error messages.

    Returns:
        `value` as a `float`.

    Raises:
        TypeError: If `value` is not a real number.
        ValueError: If `value` is NaN or outside `[0, 1]`.

    Examples:
        >>> check_unit_interval(1.5, name="threshold")
        Traceback (most recent call last):
        ...
        ValueError: threshold: expected a number in [0, 1], got 1.5
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected a number in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:  # False for NaN too
        raise ValueError(f"{name}: expected a number in [0, 1], got {value}")
    return float(value)


def resolve_image_sizes(
    images: Tensor, image_sizes: Sequence[tuple[int, int]] | None
) -> list[tuple[int, int]]:
    """The true `(h, w)` of each image of a padded batch `(B, 3, H, W)`; default all `(H, W)`.

    Images of different sizes travel in one batch padded bottom/right to the canvas `(H, W)`;
    `image_sizes` gives each image's own size.

    Args:
        images: The padded batch.
        image_sizes: `B` sizes `(h, w)` with `1 <= h <= H`, `1 <= w <= W`, or `None`.

    Returns:
        A list of `B` `(h, w)` int tuples.

    Raises:
        ValueError: If `image_sizes` has the wrong length or a size outside the canvas.

    Examples:
        >>> resolve_image_sizes(torch.zeros(2, 3, 8, 6), [(8, 6), (5, 4)])
        [(8, 6), (5, 4)]
    """
    b, (h, w) = images.shape[0], images.shape[-2:]
    if image_sizes is None:
        return [(int(h), int(w))] * b
    sizes = [tuple(int(v) for v in hw) for hw in image_sizes]
    if len(sizes) != b:
        raise ValueError(f"image_sizes: expected {b} (h, w) pairs, got {len(sizes)}")
    for i, hw in enumerate(sizes):
        if len(hw) != 2 or not (1 <= hw[0] <= h and 1 <= hw[1] <= w):
            raise ValueError(
                f"image_sizes[{i}]: expected (h, w) with 1 <= h <= {h} and 1 <= w <= {w} "
                f"(the padded canvas), got {tuple(image_sizes[i])}"
            )
    return [(hw[0], hw[1]) for hw in sizes]
