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


# --- The papers' reference rules -----------------------------------------------------------------
# Each function below follows one reference script line by line; docs/evaluation.md cites them.

SHEN_SALIENT_PIXELS = 256  # nii_2_video.py --threshold default
SHEN_MIN_CENTRAL_PIXELS = 100  # segment_any_image_with_clicks.py: `if gt.sum() <= 100: skip`
SHEN_MIN_DISTANCE = 1.42  # find_largest_enclosed_point: start value and "no click" sentinel


def shen_video(gt: np.ndarray, threshold: int = SHEN_SALIENT_PIXELS) -> tuple[int, int] | None:
    """The slices SAM_2_Medical_3D turns into a video: ``(first, last)`` inclusive, or None.

    nii_2_video.py keeps ``range(min_slice, max_slice)`` of the slices with more than ``threshold``
    foreground pixels: from the first to the last such slice, the last one excluded (a Python range
    end), and every slice in between whatever its area. One salient slice gives an empty video.
    """
    areas = gt.reshape(gt.shape[0], -1).sum(axis=1)
    salient = np.flatnonzero(areas > threshold)
    if salient.size == 0 or salient[-1] - 1 < salient[0]:
        return None
    return int(salient[0]), int(salient[-1]) - 1


def shen_central(video: tuple[int, int]) -> int:
    """``frame_idx = len(frame_names) // 2`` of the video, as a slice index of the volume."""
    lo, hi = video
    return lo + (hi - lo + 1) // 2


def largest_enclosed_point(region: np.ndarray) -> tuple[float, tuple[int, int] | None]:
    """SAM_2_Medical_3D's ``find_largest_enclosed_point``: ``(max distance, (x, y) or None)``.

    The region is zero-padded by one pixel (the border counts as outside) and split into
    4-connected components (``ndimage.label``'s default); the component whose Euclidean distance
    transform has the largest maximum wins (strictly larger: ties keep the earlier component), the
    click goes to its first maximum in row-major order. Nothing thicker than 1.42 px (i.e. no pixel
    whose 3x3 neighbourhood is all inside): no click.
    """
    from scipy import ndimage

    padded = np.pad(region.astype(bool), 1)
    components, n = ndimage.label(padded)
    best, where = SHEN_MIN_DISTANCE, None
    for i in range(1, n + 1):
        dist = distance_transform_edt(components == i)
        top = float(dist.max())
        if top > best:
            best = top
            where = np.unravel_index(int(np.argmax(dist)), dist.shape)
    if where is None:
        return SHEN_MIN_DISTANCE, None
    return best, (int(where[1]) - 1, int(where[0]) - 1)


def shen_click(gt2d: np.ndarray, pred2d: np.ndarray) -> tuple[tuple[int, int], int, str, float] | None:
    """``perform_iteration``: the next click, ``((x, y), label, region, distance)``, or None.

    False negatives win ties (``max_dis_1 >= max_dis_2``); the region compared is the one with the
    larger distance-transform maximum, not the larger pixel count, so a thin strip loses to a blob.
    """
    gt2d, pred2d = gt2d.astype(bool), pred2d.astype(bool)
    d_fn, at_fn = largest_enclosed_point(gt2d & ~pred2d)
    d_fp, at_fp = largest_enclosed_point(~gt2d & pred2d)
    if d_fn >= d_fp:
        return None if at_fn is None else (at_fn, 1, "false_negative", d_fn)
    return at_fp, 0, "false_positive", d_fp


def largest_slice(gt: np.ndarray) -> int:
    """The slice with the largest object area (first of equals): the key slice when none is given."""
    areas = gt.reshape(gt.shape[0], -1).sum(axis=1)
    if not areas.any():
        raise ValueError("the object is absent from this volume")
    return int(np.argmax(areas))


def _inside(mask: np.ndarray, y: int, x: int) -> tuple[int, int]:
    """The mask pixel nearest to ``(y, x)`` (itself when inside): a centroid outside a crescent moves in."""
    if mask[y, x]:
        return y, x
    ys, xs = np.nonzero(mask)
    n = int(np.argmin((ys - y) ** 2 + (xs - x) ** 2))
    return int(ys[n]), int(xs[n])


def gutierrez_points(parts2d: np.ndarray) -> tuple[list[tuple[int, int]], list[int]]:
    """Gutiérrez et al. (i3uex/sam ``tools/slice_masks.py``): per slice, one positive per part, one negative.

    ``parts2d`` holds one id per object part (a lung) and 0 elsewhere. Each part gets a positive at
    its centre of mass (moved to the nearest part pixel when it falls outside, e.g. a crescent), and
    the slice always gets a negative at the image centre (``__add_image_center``), inside or not.
    """
    from scipy import ndimage

    points: list[tuple[int, int]] = []
    for value in np.unique(parts2d):
        if value == 0:
            continue
        part = parts2d == value
        cy, cx = ndimage.center_of_mass(part)
        y, x = _inside(part, int(cy), int(cx))
        points.append((x, y))
    h, w = parts2d.shape
    return points + [(w // 2, h // 2)], [1] * len(points) + [0]
