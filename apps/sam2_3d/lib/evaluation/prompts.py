"""Where each protocol puts its prompts, computed from the ground truth alone (no model involved).

Coordinates follow the engine: slice ``k`` of a ``[K, J, I]`` array, frame pixel ``(x, y) = (i, j)``.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt


def z_range(gt: np.ndarray) -> tuple[int, int]:
    """First and last slice holding the object (inclusive)."""
    ks = np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1))
    if ks.size == 0:
        raise ValueError("the object is absent from this volume")
    return int(ks[0]), int(ks[-1])


def central_slice(gt: np.ndarray) -> int:
    """The middle of the object's z-range; if that slice is empty (a gap), the nearest non-empty one."""
    lo, hi = z_range(gt)
    mid = (lo + hi) // 2
    present = np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1))
    return int(present[np.argmin(np.abs(present - mid))])


def bounding_box(mask2d: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` with inclusive pixel indices of the mask's extremes (MedSAM2's convention)."""
    ys, xs = np.nonzero(mask2d)
    if xs.size == 0:
        raise ValueError("empty mask has no bounding box")
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def deepest_point(region: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the maximum Euclidean distance transform inside ``region``.

    The image border counts as outside, so a region cut by the border gets its click inside it, not
    on the edge. Ties go to the first pixel in row-major order, which keeps runs reproducible.
    """
    if not region.any():
        raise ValueError("empty region")
    dist = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def next_click(gt2d: np.ndarray, pred2d: np.ndarray) -> tuple[tuple[int, int], int, str] | None:
    """The simulated user's next click (SAM_2_Medical_3D): ``((x, y), label, region)`` or None if perfect.

    The larger of the false-negative / false-positive regions (by pixel count) is corrected with a
    positive / negative click at its deepest point.
    """
    fn = gt2d & ~pred2d
    fp = pred2d & ~gt2d
    if not fn.any() and not fp.any():
        return None
    if fn.sum() >= fp.sum():
        return deepest_point(fn), 1, "false_negative"
    return deepest_point(fp), 0, "false_positive"


def slice2d_points(gt2d: np.ndarray, n_positive: int, seed: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Gutiérrez et al.'s per-slice prompt: positives inside the mask, a negative at the bbox centre.

    The first positive is the mask's deepest point, the others are drawn uniformly from the mask with
    a seeded generator. The negative is only added when the bbox centre is background: for convex
    objects the centre lies inside the mask and a negative there would contradict the ground truth
    (the protocol was designed for the two lungs, whose bbox centre is the mediastinum).
    """
    points = [deepest_point(gt2d)]
    ys, xs = np.nonzero(gt2d)
    if n_positive > 1 and xs.size > 1:
        rng = np.random.default_rng(seed)
        order = rng.permutation(xs.size)
        for idx in order:
            p = (int(xs[idx]), int(ys[idx]))
            if p not in points:
                points.append(p)
            if len(points) >= n_positive:
                break
    labels = [1] * len(points)
    x0, y0, x1, y1 = bounding_box(gt2d)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    if not gt2d[cy, cx]:
        points.append((cx, cy))
        labels.append(0)
    return points, labels
