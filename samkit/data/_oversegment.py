"""Geodesic Voronoi splitting of masks into connected parts (private helper of `oversegment`)."""

# axis legend
# h w - image pixels
# a - pixels of one mask (its area)

from __future__ import annotations

import numpy as np


def split_segment(
    rng: np.random.Generator, mask: np.ndarray, *, max_parts: int, min_part_area: int
) -> list[np.ndarray]:
    """Geodesic Voronoi split of one mask; every part is 4-connected."""
    # imported here: scipy and scikit-image cost ~0.4 s, and only scene generation needs them
    from scipy import ndimage
    from skimage.segmentation import watershed

    area = int(mask.sum())
    if area == 0:
        return []
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = mask[y0:y1, x0:x1]
    pieces, n_pieces = ndimage.label(crop)  # 4-connectivity by default
    k = int(rng.integers(1, max_parts + 1))
    k = max(1, min(k, area // max(1, min_part_area)))
    coords = np.stack([ys - y0, xs - x0], axis=1)
    piece_of = pieces[coords[:, 0], coords[:, 1]]
    # one seed inside every connected piece, then randomised farthest-point sampling
    seeds = [int(rng.choice(np.flatnonzero(piece_of == p))) for p in range(1, n_pieces + 1)]
    d = np.min(((coords[:, None] - coords[seeds][None]) ** 2).sum(-1), axis=1)
    while len(seeds) < k and d.max() > 0:
        far = np.flatnonzero(d >= 0.5 * d.max())
        seeds.append(int(far[rng.integers(len(far))]))
        d = np.minimum(d, ((coords - coords[seeds[-1]]) ** 2).sum(-1))
    markers = np.zeros(crop.shape, dtype=np.int64)
    for i, idx in enumerate(seeds):
        markers[coords[idx, 0], coords[idx, 1]] = i + 1
    cells = watershed(np.zeros(crop.shape), markers=markers, mask=crop, connectivity=1)
    out = []
    for label in range(1, len(seeds) + 1):
        part = np.zeros(mask.shape, dtype=bool)
        part[y0:y1, x0:x1] = cells == label
        if part.any():
            out.append(part)
    return out
