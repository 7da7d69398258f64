"""Small numpy/Pillow helpers to look at images, masks, points and label maps.

Every function returns a `uint8` numpy array `(H, W, 3)`, so results can be saved with
`save_image`, shown with matplotlib, or tiled with `make_grid`. Inputs may be torch tensors on
any device (`(3, H, W)` float in `[0, 1]`, as elsewhere in samkit) or numpy arrays (`(H, W, 3)`
uint8, or float in `[0, 1]`); tensors are copied to the CPU here. Nothing here is
differentiable: these are for looking at results.
"""

# axis legend
# m - masks, `M` in docstrings
# n - points, `N`
# h w c - image rows, columns and colour channels (HWC, as image files store them)

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from einops import rearrange
from torch import Tensor

__all__ = [
    "PALETTE",
    "POINT_COLORS",
    "annotate",
    "colorize_labels",
    "draw_points",
    "make_grid",
    "overlay_masks",
    "save_image",
    "to_uint8",
]

Color = tuple[int, int, int]


def _palette(n: int) -> np.ndarray:
    # golden-ratio hue steps give well separated, deterministic colours
    out = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = (0.75, 0.95) if i % 2 == 0 else (0.55, 0.80)
        out.append(colorsys.hsv_to_rgb(hue, sat, val))
    return np.round(np.asarray(out) * 255).astype(np.uint8)


PALETTE: np.ndarray = _palette(256)
"""`(256, 3)` uint8 colours used when none are given (distinct and deterministic)."""

POINT_COLORS: dict[int, Color] = {1: (0, 255, 0), 0: (255, 0, 0)}
"""Default colour of a point by label: 1 foreground (green), 0 background (red)."""


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def to_uint8(image: Tensor | np.ndarray) -> np.ndarray:
    """Convert an image to a uint8 `(H, W, 3)` array.

    Args:
        image: A `(3, H, W)` or `(1, H, W)` tensor, or an `(H, W, 3)` array, either float in
            `[0, 1]` (clipped) or uint8; or an `(H, W)` map (float `[0, 1]`, uint8 or bool),
            shown in grey.

    Returns:
        `(H, W, 3)` uint8 array (a new array; the input is never modified).

    Raises:
        ValueError: If the layout is not one of the above.

    Examples:
        >>> to_uint8(torch.ones(3, 4, 5)).shape
        (4, 5, 3)
    """
    is_tensor = isinstance(image, Tensor)
    arr = _numpy(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.ndim == 3 and is_tensor and arr.shape[0] in (1, 3):
        arr = rearrange(arr, "c h w -> h w c")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(
            f"image: expected (3, H, W) tensor, (H, W, 3) array or (H, W) map, got {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return arr.copy()
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    return np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def overlay_masks(
    image: Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    *,
    alpha: float = 0.5,
    colors: Sequence[Color] | np.ndarray | None = None,
) -> np.ndarray:
    """Blend coloured masks over an image.

    Masks are blended one after the other, so where masks overlap the later one shows most.
    Pixels covered by no mask keep exactly the colour of `to_uint8(image)`.

    Args:
        image: `(3, H, W)` float image in `[0, 1]` (or anything `to_uint8` accepts).
        masks: `(M, H, W)` bool masks (or `(H, W)` for one mask); non-bool values count as
            foreground where `> 0` (so thresholded logits work).
        alpha: Opacity of the mask colour, in `[0, 1]`.
        colors: `M` RGB uint8 colours; defaults to `PALETTE`.

    Returns:
        `(H, W, 3)` uint8 array.

    Raises:
        ValueError: If the masks do not match the image size, or `alpha` is out of range.

    Examples:
        >>> out = overlay_masks(torch.zeros(3, 4, 4), torch.eye(4, dtype=torch.bool)[None],
        ...                     alpha=1.0, colors=[(255, 0, 0)])
        >>> out[0, 0].tolist(), out[0, 1].tolist()
        ([255, 0, 0], [0, 0, 0])
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    base = to_uint8(image)
    m = _numpy(masks)
    m = m[None] if m.ndim == 2 else m
    if m.ndim != 3 or m.shape[1:] != base.shape[:2]:
        raise ValueError(f"masks: expected (M, {base.shape[0]}, {base.shape[1]}), got {m.shape}")
    m = m.astype(bool) if m.dtype == np.bool_ else m > 0
    palette = PALETTE if colors is None else np.asarray(colors, dtype=np.float64)
    if colors is not None and len(palette) < len(m):
        raise ValueError(f"colors: expected {len(m)} colours, got {len(palette)}")
    out = base.astype(np.float64)
    for i, mask in enumerate(m):
        color = np.asarray(palette[i % len(palette)], dtype=np.float64)
        out[mask] = (1.0 - alpha) * out[mask] + alpha * color
    out = np.round(out).astype(np.uint8)
    out[~m.any(0)] = base[~m.any(0)]
    return out


def draw_points(
    image: Tensor | np.ndarray,
    points: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | None = None,
    *,
    radius: int = 2,
    colors: Sequence[Color] | None = None,
) -> np.ndarray:
    """Draw points as filled discs.

    Args:
        image: `(3, H, W)` float image in `[0, 1]` (or anything `to_uint8` accepts).
        points: `(N, 2)` `(x, y)` pixel coordinates in the image frame.
        labels: Optional `(N,)` SAM point labels; 1 (foreground) is drawn green, 0 (background)
            red, and -1 (padding) is skipped. Without labels every point is foreground.
        radius: Disc radius in pixels (0 draws single pixels).
        colors: Optional `N` RGB colours overriding the label colours.

    Returns:
        `(H, W, 3)` uint8 array.

    Raises:
        ValueError: If `points` is not `(N, 2)` or `labels` is not `(N,)`.

    Examples:
        >>> out = draw_points(torch.zeros(3, 8, 8), torch.tensor([[2.0, 5.0]]), radius=0)
        >>> out[5, 2].tolist(), int(out.sum())
        ([0, 255, 0], 255)
    """
    out = to_uint8(image)
    pts = _numpy(points).astype(np.float64)
    if pts.ndim != 2 or pts.shape[-1] != 2:
        raise ValueError(f"points: expected (N, 2), got {pts.shape}")
    lab = np.ones(len(pts), dtype=np.int64) if labels is None else _numpy(labels).astype(np.int64)
    if lab.shape != (len(pts),):
        raise ValueError(f"labels: expected ({len(pts)},), got {lab.shape}")
    h, w = out.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    for i, ((x, y), label) in enumerate(zip(pts, lab, strict=True)):
        if label < 0:
            continue
        color = colors[i] if colors is not None else POINT_COLORS.get(int(label), (255, 255, 0))
        disc = (xx - np.floor(x)) ** 2 + (yy - np.floor(y)) ** 2 <= radius**2
        out[disc] = color
    return out


def colorize_labels(
    labels: Tensor | np.ndarray, *, palette: np.ndarray | Sequence[Color] | None = None
) -> np.ndarray:
    """Map an integer label map (semantic or panoptic ids) to colours.

    Args:
        labels: `(H, W)` non-negative integer ids.
        palette: `(P, 3)` uint8 colours; id `i` gets `palette[i % P]`. Defaults to `PALETTE`.

    Returns:
        `(H, W, 3)` uint8 array.

    Raises:
        ValueError: If `labels` is not `(H, W)` or holds negative ids.

    Examples:
        >>> colorize_labels(torch.tensor([[0, 1]]), palette=[(1, 2, 3), (4, 5, 6)]).tolist()
        [[[1, 2, 3], [4, 5, 6]]]
    """
    lab = _numpy(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels: expected (H, W), got {lab.shape}")
    if lab.size and lab.min() < 0:
        raise ValueError(f"labels: expected non-negative ids, got minimum {lab.min()}")
    pal = PALETTE if palette is None else np.asarray(palette, dtype=np.uint8)
    return pal[lab.astype(np.int64) % len(pal)]


def make_grid(
    images: Sequence[np.ndarray | Tensor], ncols: int = 4, *, pad: int = 2, fill: int = 255
) -> np.ndarray:
    """Tile images into a grid, row by row.

    Args:
        images: Images of any sizes (anything `to_uint8` accepts); each sits in the top-left of
            a cell as large as the largest image.
        ncols: Cells per row.
        pad: Border in pixels around and between cells.
        fill: Grey level of the border and of unused cell space.

    Returns:
        `(rows * (Hc + pad) + pad, cols * (Wc + pad) + pad, 3)` uint8 array, where `Hc, Wc` is
        the cell size and `cols = min(ncols, len(images))`.

    Raises:
        ValueError: If `images` is empty or `ncols < 1`.

    Examples:
        >>> make_grid([torch.zeros(3, 4, 4)] * 3, ncols=2, pad=1).shape
        (11, 11, 3)
    """
    if not images or ncols < 1:
        raise ValueError(
            f"make_grid: expected >= 1 image and ncols >= 1, got {len(images)}, {ncols}"
        )
    tiles = [to_uint8(im) for im in images]
    hc = max(t.shape[0] for t in tiles)
    wc = max(t.shape[1] for t in tiles)
    cols = min(ncols, len(tiles))
    rows = -(-len(tiles) // cols)
    out = np.full((rows * (hc + pad) + pad, cols * (wc + pad) + pad, 3), fill, dtype=np.uint8)
    for i, t in enumerate(tiles):
        y = pad + (i // cols) * (hc + pad)
        x = pad + (i % cols) * (wc + pad)
        out[y : y + t.shape[0], x : x + t.shape[1]] = t
    return out


def annotate(
    image: np.ndarray | Tensor,
    *,
    title: str = "",
    legend: Sequence[tuple[str, Color]] = (),
    font_size: int = 12,
) -> np.ndarray:
    """Add a title bar above an image and a colour legend to its right.

    Args:
        image: Anything `to_uint8` accepts (e.g. the output of `overlay_masks`).
        title: Text of the title bar (omitted when empty); long titles are cut with "...".
        legend: `(name, colour)` entries, one row each: a swatch of the colour and the name.
        font_size: Text height in pixels (Pillow's bundled font).

    Returns:
        `(H', W', 3)` uint8 array with the image at its original size inside, white elsewhere.

    Raises:
        ValueError: If `font_size < 4`.

    Examples:
        >>> out = annotate(torch.zeros(3, 32, 32), title="2 segments",
        ...                legend=[("cat", (255, 0, 0)), ("sky", (0, 0, 255))])
        >>> out.shape[0] > 32 and out.shape[1] > 32
        True
    """
    from PIL import Image, ImageDraw, ImageFont

    if font_size < 4:
        raise ValueError(f"font_size: expected >= 4, got {font_size}")
    base = to_uint8(image)
    h, w = base.shape[:2]
    font = ImageFont.load_default(size=font_size)
    line = font_size + 6
    swatch = font_size
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_w = 0
    if legend:
        widest = max(measure.textlength(name, font=font) for name, _ in legend)
        legend_w = int(swatch + 18 + widest)
    title_h = line + 4 if title else 0
    canvas_w = max(w + legend_w, 1)
    canvas_h = max(h, len(legend) * line + 8) + title_h
    canvas = Image.new("RGB", (canvas_w, canvas_h), (255, 255, 255))
    canvas.paste(Image.fromarray(base), (0, title_h))
    draw = ImageDraw.Draw(canvas)
    if title:
        text = title
        while len(text) > 3 and measure.textlength(text, font=font) > canvas_w - 8:
            text = text[:-4] + "..."
        draw.text((4, 3), text, fill=(0, 0, 0), font=font)
    for i, (name, color) in enumerate(legend):
        x, y = w + 6, title_h + 4 + i * line
        draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(int(c) for c in color))
        draw.text((x + swatch + 6, y), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8)


def save_image(array: np.ndarray | Tensor, path: str | Path) -> None:
    """Save an image with Pillow (format from the file extension, e.g. `.png`), atomically.

    The file is written under a temporary name in the same folder and renamed into place, so a
    reader (or a crash) never sees half an image.

    Args:
        array: Anything `to_uint8` accepts (an `(H, W, 3)` uint8 array, a `(3, H, W)` tensor).
        path: Destination file; parent folders are created.
    """
    from PIL import Image

    from samkit._io import write_pil_image

    target = Path(path)
    fmt = Image.registered_extensions().get(target.suffix.lower())
    if fmt is None:
        raise ValueError(f"path: no image format for the extension of {target}")
    write_pil_image(target, Image.fromarray(to_uint8(array)), fmt)
