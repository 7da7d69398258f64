"""SAM-MI's Text-guided Sparse Point Prompter (TSPP): targets, network, point sampling.

TSPP learns, from the image-text cost maps, a sampling probability for every cell of a `g x g`
grid (`g = 32`), so that SAM is prompted with a few dozen points instead of the dense 1024-point
grid. Training targets follow eq. 3-5 of the paper (Gaussian decay from each ground-truth mask's
skeleton, `P_k = min(ceil(area / g_p), m_p)` expected points per mask); a mask head on the same
features gives the text masks `M^text` used by shallow mask aggregation. Spec `sam-mi.md` §3.2.

Axis legend (einops):
    b - images (B)    t - classes (T)    d - channels (D)    h w - cost grid    g - point grid side
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from scipy.ndimage import distance_transform_edt
from skimage.morphology import skeletonize
from torch import Tensor, nn

from samkit._checks import (
    as_float,
    check_binary,
    check_positive,
    check_probabilities,
    check_shape,
)
from samkit.types import TSPPOutput

__all__ = [
    "TextGuidedSparsePointPrompter",
    "expected_points",
    "grid_points",
    "masks_from_labels",
    "sample_points",
    "tspp_targets",
]


def masks_from_labels(labels: Tensor, num_classes: int, *, ignore_index: int = 255) -> Tensor:
    """One binary mask per class from a semantic label map.

    Args:
        labels: Class ids `(B, H, W)`; `ignore_index` (or any id outside `[0, T)`) is in no mask.
        num_classes: Number of classes `T`.
        ignore_index: The void label.

    Returns:
        Masks `(B, T, H, W)` (bool); classes that are absent give empty masks.

    Raises:
        ValueError: If `num_classes < 1` or `labels` is not `(B, H, W)`.

    Examples:
        >>> masks_from_labels(torch.tensor([[[0, 1], [255, 1]]]), 2)[0, 1]
        tensor([[False,  True],
                [False,  True]])
    """
    check_shape(labels, "B H W", name="labels")
    check_positive(num_classes, name="num_classes")
    classes = torch.arange(num_classes, device=labels.device)
    valid = labels != ignore_index
    return (labels[:, None] == classes[None, :, None, None]) & valid[:, None]


def _to_grid(masks: Tensor, grid: int) -> Tensor:
    """Masks `(B, K, H, W)` -> `(B, K, g, g)` bool: a cell is in a mask when >= half covered."""
    frac = F.adaptive_avg_pool2d(masks.float(), grid)
    return frac >= 0.5


def _skeleton_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every cell to the skeleton of `mask` (2D bool)."""
    skel = skeletonize(mask)
    if not skel.any():  # cannot happen for a non-empty mask; be safe
        skel = mask
    return np.asarray(distance_transform_edt(~skel), dtype=np.float64)


def _water_fill(p: Tensor, weights: Tensor, inside: Tensor, iters: int = 20) -> Tensor:
    """Cap `p` at 1 and hand the excess to uncapped cells in proportion to `weights`."""
    for _ in range(iters):
        excess = (p - 1).clamp_min(0).sum(dim=-1, keepdim=True)
        if not bool((excess > 1e-9).any()):
            break
        p = p.clamp_max(1)
        free = inside & (p < 1)
        w = weights * free
        p = p + excess * w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return p.clamp(0, 1)


def tspp_targets(
    gt_masks: Tensor,
    *,
    grid: int = 32,
    g_p: float = 5.0,
    m_p: int = 10,
    return_per_mask: bool = False,
) -> Tensor:
    """Target sampling probabilities on a `grid x grid` grid (SAM-MI eq. 3-5).

    Each mask is resized to the grid (a cell belongs to it when at least half covered). For mask
    `k`: `d` is the distance of each cell to the mask's skeleton (`skimage` skeleton, `scipy`
    exact distance transform), `sigma_k = max_{M_k} d / 3`, `P_k = min(ceil(area_k / g_p), m_p)`
    with the area in grid cells, and `p = exp(-d^2 / 2 sigma_k^2) * P_k / sum_{M_k} exp(...)`
    inside the mask, 0 outside. A mask that is its own skeleton (`sigma_k = 0`) gets uniform
    weights. Probabilities above 1 (tiny masks) are capped and the excess is redistributed inside
    the mask, so every mask's targets still sum to `P_k`. Skeletons and distance transforms are
    computed per mask in NumPy (grids are tiny); everything else is vectorised over masks.

    Args:
        gt_masks: Ground-truth masks `(B, K, H, W)` (bool or {0, 1}); masks should not overlap
            (one per class present). Empty masks contribute nothing.
        grid: Grid side `g` (`d_h = d_w`).
        g_p: Grid cells per expected point.
        m_p: Cap on the expected points per mask.
        return_per_mask: Return `(B, K, g, g)` per mask instead of the summed map.

    Returns:
        Targets `(B, g, g)` in `[0, 1]` (or `(B, K, g, g)` with `return_per_mask`), float32.

    Raises:
        ValueError: If `gt_masks` is not `(B, K, H, W)` or not binary, `grid < 1`, `g_p <= 0` or
            `m_p < 0`.

    Examples:
        >>> m = torch.zeros(1, 1, 64, 64, dtype=torch.bool); m[0, 0, 8:40, 8:40] = True
        >>> t = tspp_targets(m, grid=16)
        >>> round(float(t.sum()), 4), float(t[0, 0, 0])  # 64 cells -> ceil(64 / 5) capped at 10
        (10.0, 0.0)
    """
    s = check_shape(gt_masks, "B K H W", name="gt_masks")
    gt_masks = check_binary(gt_masks, name="gt_masks")
    check_positive(grid, name="grid")
    if g_p <= 0:
        raise ValueError(f"g_p: expected a number > 0, got {g_p}")
    if m_p < 0:
        raise ValueError(f"m_p: expected a number >= 0, got {m_p}")
    cells = _to_grid(gt_masks, grid)  # (B, K, g, g)
    flat = rearrange(cells, "b k h w -> (b k) (h w)")
    area = flat.sum(dim=-1)
    dist = torch.zeros(flat.shape, dtype=torch.float64)
    cells_np = flat.reshape(-1, grid, grid).cpu().numpy()
    for i in torch.nonzero(area > 0).flatten().tolist():
        dist[i] = torch.from_numpy(_skeleton_distance(cells_np[i]).reshape(-1))
    dist = dist.to(gt_masks.device)
    inside = flat
    sigma = torch.where(inside, dist, torch.zeros_like(dist)).amax(dim=-1, keepdim=True) / 3
    weights = torch.exp(-(dist**2) / (2 * sigma.clamp_min(1e-12) ** 2)) * inside
    p_k = torch.clamp(torch.ceil(area.double() / g_p), max=m_p)[:, None]
    p = weights * p_k / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    p = _water_fill(p, weights, inside)
    p = rearrange(p.float(), "(b k) (h w) -> b k h w", b=s["B"], k=s["K"], h=grid, w=grid)
    return p if return_per_mask else p.sum(dim=1).clamp_max(1)


def grid_points(
    grid: int, input_size: tuple[int, int], *, device: torch.device | None = None
) -> Tensor:
    """Centres of a `grid x grid` grid in SAM's input frame, row-major (`build_point_grid`).

    Args:
        grid: Grid side `g`.
        input_size: `(h_in, w_in)`: the resized image inside SAM's padded square.
        device: Device of the result.

    Returns:
        Points `(g * g, 2)` as `(x, y)` pixels; cell `(i, j)` is row `i * g + j`.

    Raises:
        ValueError: If `grid < 1`.

    Examples:
        >>> grid_points(2, (100, 200))
        tensor([[ 50.,  25.],
                [150.,  25.],
                [ 50.,  75.],
                [150.,  75.]])
    """
    check_positive(grid, name="grid")
    centres = (torch.arange(grid, dtype=torch.float32, device=device) + 0.5) / grid
    ys, xs = torch.meshgrid(centres * input_size[0], centres * input_size[1], indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def sample_points(
    prob: Tensor,
    input_size: tuple[int, int],
    *,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
    threshold: float = 0.5,
    min_peak: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Draw point prompts from a sampling-probability grid.

    Stochastic mode draws every cell independently (Bernoulli with its probability; seed with
    `generator`). Deterministic mode keeps cells with `p >= threshold` plus 3x3 local maxima with
    `p >= min_peak`. Points are the cell centres in SAM's input frame. Images get different
    numbers of points, so the result is padded to the largest count.

    Args:
        prob: Probabilities `(B, g, g)` in `[0, 1]`.
        input_size: `(h_in, w_in)` of the resized image inside SAM's padded square.
        generator: Random generator for the Bernoulli draws (on `prob`'s device).
        deterministic: Use the threshold + local-maximum rule instead of sampling.
        threshold: Deterministic keep threshold.
        min_peak: Minimum probability of a kept local maximum.

    Returns:
        `points (B, N, 2)` as `(x, y)` in SAM's input frame and `valid (B, N)` (bool), in
        row-major cell order; `N` is the largest count in the batch (0 if nothing was drawn or
        `B = 0`).

    Raises:
        ValueError: If `prob` is not `(B, g, g)` or holds values outside `[0, 1]` (or NaN).

    Examples:
        >>> prob = torch.zeros(2, 4, 4); prob[0, 1, 2] = 1.0; prob[1, 3, 0] = prob[1, 0, 0] = 1.0
        >>> pts, valid = sample_points(prob, (64, 64))
        >>> pts[0, 0].tolist(), valid.tolist()
        ([40.0, 24.0], [[True, False], [True, True]])
    """
    s = check_shape(prob, "B g g", name="prob")
    check_probabilities(prob, name="prob")
    p = prob.detach()
    if deterministic:
        peaks = F.max_pool2d(p[:, None], 3, stride=1, padding=1)[:, 0] == p
        keep = (p >= threshold) | (peaks & (p >= min_peak))
    else:
        keep = torch.bernoulli(p.float(), generator=generator).bool()
    keep = keep.flatten(1)
    centres = grid_points(s["g"], input_size, device=prob.device)
    n = int(keep.sum(dim=1).max()) if keep.numel() else 0
    # stable sort puts kept cells first, in row-major order
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :n]
    valid = torch.gather(keep, 1, order)
    points = centres[order] * valid[..., None]
    return points, valid


class TextGuidedSparsePointPrompter(nn.Module):
    """TSPP network: cost maps -> MLP + attention block -> probability head and mask head.

    The cost volume is detached by default (no gradient reaches CLIP). A per-pixel MLP
    (`1 -> D -> D`, with a
    depth-wise 3x3 conv for spatial context) embeds every class's cost; an attention block mixes
    classes at every location (multi-head self-attention over `T`) and locations within each class
    (a second depth-wise conv), giving `S_en`. Two linear heads follow: the mask head scores each
    (class, location) for `M^text` (argmax over classes); the probability head scores each
    (class, grid cell) on the `g x g` grid (bilinear resampling of `S_en`), and the per-cell
    probability is the sigmoid of the maximum over classes (`reduction="max"`, the documented
    default for the paper's open point) or of the mean (`"mean"`). Permuting the classes permutes
    the mask logits and leaves the probability map unchanged.

    Examples:
        >>> tspp = TextGuidedSparsePointPrompter(dim=16, num_heads=2, grid=8)
        >>> out = tspp(torch.randn(2, 3, 6, 6))
        >>> out.prob.shape, out.mask_logits.shape, out.text_masks.dtype
        (torch.Size([2, 8, 8]), torch.Size([2, 3, 6, 6]), torch.bool)
    """

    def __init__(
        self,
        *,
        dim: int = 64,
        num_heads: int = 4,
        grid: int = 32,
        reduction: Literal["max", "mean"] = "max",
        detach_input: bool = True,
        normalize_input: bool = False,
        max_chunk_elems: int = 1 << 23,
    ) -> None:
        """Create the prompter.

        Args:
            dim: Hidden width `D` of `S_en`.
            num_heads: Heads of the class attention.
            grid: Point-grid side `g`.
            reduction: How class scores reduce to one probability per cell.
            detach_input: Detach the cost volume. The paper stops the gradient towards CLIP's
                *visual* encoder only; a caller that detaches the visual features itself (so the
                text encoder still learns from `L_tspp`) passes False.
            normalize_input: Standardise the cost volume per image (over classes and pixels)
                before the MLP (robust to cost offset/scale drift, but it scales the gradient
                that reaches the text encoder by `1 / std`; off by default).
            max_chunk_elems: Largest intermediate, in elements, that one chunk of the forward
                creates (default 8M, 32 MB in float32). The per-class layers run over chunks of
                classes and the class attention over chunks of locations, so peak memory stays
                near the size of `S_en` however many classes there are; results do not depend
                on it.
        """
        super().__init__()
        check_positive(max_chunk_elems, name="max_chunk_elems")
        self.max_chunk_elems = max_chunk_elems
        self.detach_input, self.normalize_input = detach_input, normalize_input
        check_positive(grid, name="grid")
        if reduction not in ("max", "mean"):
            raise ValueError(f"reduction must be 'max' or 'mean', got {reduction!r}")
        self.grid, self.reduction = grid, reduction
        self.mlp = nn.Sequential(
            nn.Conv2d(1, dim, 1),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1),
        )
        self.norm = nn.LayerNorm(dim)
        self.class_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.spatial = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.prob_head = nn.Linear(dim, 1)
        self.mask_head = nn.Linear(dim, 1)

    def forward(self, cost: Tensor) -> TSPPOutput:
        """Score grid cells and classes.

        Args:
            cost: Cost volume `(B, T, h, w)` (detached inside when `detach_input`), any float
                dtype (computed in the prompter's dtype). `B = 0` gives empty outputs.

        Returns:
            `TSPPOutput` with `prob (B, g, g)`, `prob_logits (B, T, g, g)`,
            `mask_logits (B, T, h, w)` and `text_masks (B, T, h, w)`.

        Raises:
            ValueError: If `cost` is not `(B, T, h, w)` or has no class (`T = 0`).
        """
        s = check_shape(cost, "B T h w", name="cost")
        if s["T"] < 1:
            raise ValueError(
                f"cost: expected at least one class (T >= 1), got shape {tuple(cost.shape)}"
            )
        cost = as_float(cost, name="cost", dtype=self.prob_head.weight.dtype)
        cost = cost.detach() if self.detach_input else cost
        if self.normalize_input:  # per-image standardisation: robust to cost offset/scale drift
            mean = cost.mean(dim=(1, 2, 3), keepdim=True)
            cost = (cost - mean) / cost.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-4)
        b, t, h, w = s["B"], s["T"], s["h"], s["w"]
        d, g = self.prob_head.in_features, self.grid
        # per-class layers on chunks of classes (each chunk's intermediates are a few x its size)
        classes = max(1, self.max_chunk_elems // (d * max(h * w, g * g)))
        flat = rearrange(cost, "b t h w -> (b t) 1 h w")
        x = flat.new_empty((b * t, d, h, w))
        for i in range(0, b * t, classes):
            x[i : i + classes] = self.mlp(flat[i : i + classes])
        # class attention at every location, on chunks of locations: one location holds up to
        # heads x T x T attention weights, all (B h w) locations at once would hold that many times
        tok = rearrange(x, "(b t) d h w -> (b h w) t d", b=b, t=t).contiguous()
        del x
        locs = max(1, self.max_chunk_elems // (self.class_attn.num_heads * t * t + 8 * t * d))
        mixed = torch.empty_like(tok)
        for i in range(0, tok.shape[0], locs):
            mixed[i : i + locs] = tok[i : i + locs] + self._attend(tok[i : i + locs])
        del tok
        x = rearrange(mixed, "(b h w) t d -> (b t) d h w", b=b, h=h, w=w)
        del mixed
        mask_logits = x.new_empty((b * t, h, w))
        prob_logits = x.new_empty((b * t, g, g))
        for i in range(0, b * t, classes):
            c = x[i : i + classes].contiguous()
            c = c + self.spatial(c)  # S_en, (chunk, D, h, w)
            feat = rearrange(c, "n d h w -> n h w d")
            mask_logits[i : i + classes] = self.mask_head(feat)[..., 0]
            # the linear head commutes with bilinear resampling (its weights sum to one), so
            # resample the one-channel scores rather than the D-channel features
            score = self.prob_head(feat)[..., 0]
            prob_logits[i : i + classes] = F.interpolate(
                score[:, None], size=(g, g), mode="bilinear", align_corners=False
            )[:, 0]
        mask_logits = rearrange(mask_logits, "(b t) h w -> b t h w", b=b, t=t)
        prob_logits = rearrange(prob_logits, "(b t) h w -> b t h w", b=b, t=t)
        reduced = prob_logits.amax(dim=1) if self.reduction == "max" else prob_logits.mean(dim=1)
        text_masks = F.one_hot(mask_logits.argmax(dim=1), t).permute(0, 3, 1, 2).bool()
        return TSPPOutput(
            prob=reduced.sigmoid(),
            prob_logits=prob_logits,
            mask_logits=mask_logits,
            text_masks=text_masks,
        )

    def _attend(self, tok: Tensor) -> Tensor:
        """Pre-norm multi-head self-attention over the classes of each location `(L, T, D)`."""
        attn = self.class_attn
        z = self.norm(tok)
        # nn.MultiheadAttention's own computation (packed in-projection, scaled dot product,
        # out-projection), called through `scaled_dot_product_attention`, which avoids
        # materialising the attention weights where the backend allows
        qkv = F.linear(z, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = rearrange(qkv, "l t (three n e) -> three l n t e", three=3, n=attn.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return attn.out_proj(rearrange(out, "l n t e -> l t (n e)"))


def expected_points(prob: Tensor) -> Tensor:
    """Expected number of sampled points per image, `E(N_p) = sum p` (eq. 2).

    Args:
        prob: Probabilities `(B, g, g)`.

    Returns:
        `(B,)`.

    Raises:
        ValueError: If `prob` is not `(B, g, g)` or holds values outside `[0, 1]`.

    Examples:
        >>> expected_points(torch.full((1, 4, 4), 0.5))
        tensor([8.])
    """
    check_shape(prob, "B g g", name="prob")
    check_probabilities(prob, name="prob")
    dtype = torch.float64 if prob.dtype == torch.float64 else torch.float32
    return prob.flatten(1).to(dtype).sum(dim=1)
