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


SHEN_WHOLE_MARGIN = (5, 10)  # nii_2_video.py --threshold 0: np.random.randint(5, 10) slices each side


def shen_whole_video(gt: np.ndarray, seed: int = 0) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The video of nii_2_video.py's ``--threshold 0`` setting (the paper's "whole" object): every slice
    holding the object, widened by a random 5..9 slices below and above (``np.random.randint(5, 10)``,
    clipped to the volume), the last slice excluded as in the salient video. The reference draws the
    margins unseeded; here they come from ``seed`` so that a run can be repeated. Returns
    ``((first, last), (margin_below, margin_above))`` or None when the object is absent."""
    areas = gt.reshape(gt.shape[0], -1).sum(axis=1)
    present = np.flatnonzero(areas > 0)
    if present.size == 0:
        return None
    below, above = (int(v) for v in np.random.default_rng(seed).integers(*SHEN_WHOLE_MARGIN, size=2))
    lo = max(0, int(present[0]) - below)
    hi = min(gt.shape[0], int(present[-1]) + above) - 1  # range(min_slice, max_slice): the end excluded
    if hi < lo:
        return None
    return (lo, hi), (below, above)


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


def _run(line: np.ndarray) -> int:
    """How many True values ``line`` starts with (the image edge ends a run, as background does)."""
    stop = np.flatnonzero(~line)
    return int(stop[0]) if stop.size else len(line)


def _centre_in_mask(mask: np.ndarray, y: int, x: int) -> tuple[int, int]:
    """``SliceMasks.__center_point_in_mask``: from a pixel inside the mask, measure the mask's run to the
    left, right, above and below; move to the middle of the row's run if the row holds more of the mask
    than the column, else to the middle of the column's run (the ``(a - b + 1) // 2`` of the reference).
    The reference fails when a run reaches the image edge; here the edge ends the run."""
    left, right = _run(mask[y, :x][::-1]), _run(mask[y, x + 1:])
    above, below = _run(mask[:y, x][::-1]), _run(mask[y + 1:, x])
    if left + right > above + below:
        return y, x + (right - left + 1) // 2
    return y + (below - above + 1) // 2, x


def _move_inside(mask: np.ndarray, y: int, x: int) -> tuple[int, int]:
    """``SliceMasks.__move_point_inside_mask``: from a pixel outside the mask, look left, right, up and
    down; the direction that meets the most mask pixels (first of equals, in that order) gives the new
    point, the mean position of those pixels on its line, which is then centred in the mask.

    Where the reference has no answer (no mask pixel on any of the four lines: it takes a random mask
    pixel; the mean falls between two pieces, outside the mask: its centring assertion fails), the mask
    pixel nearest to the mean position or to the centroid is taken instead, then centred."""
    rays = [(np.flatnonzero(mask[y, :x]), "row"), (np.flatnonzero(mask[y, x + 1:]) + x + 1, "row"),
            (np.flatnonzero(mask[:y, x]), "col"), (np.flatnonzero(mask[y + 1:, x]) + y + 1, "col")]
    best, axis = max(rays, key=lambda r: len(r[0]))  # max keeps the first of equals, as np.argmax
    if len(best):
        ny, nx = (y, int(np.mean(best))) if axis == "row" else (int(np.mean(best)), x)
    else:
        ny, nx = y, x
    if not mask[ny, nx]:
        ys, xs = np.nonzero(mask)
        n = int(np.argmin((ys - ny) ** 2 + (xs - nx) ** 2))
        ny, nx = int(ys[n]), int(xs[n])
    return _centre_in_mask(mask, ny, nx)


def gutierrez_point(part: np.ndarray, label_mask: np.ndarray | None = None) -> tuple[int, int]:
    """``SliceMasks.__find_mask_center``: the int-truncated centre of mass of ``part``, centred in the
    label's mask when it lies inside it, moved inside and centred when not; ``(x, y)``.
    ``label_mask`` is the whole mask of the part's label value (the reference checks and centres on it
    even when the part is one contour of several); default: the part itself."""
    from scipy import ndimage

    label_mask = part if label_mask is None else label_mask
    cy, cx = ndimage.center_of_mass(part)
    y, x = int(cy), int(cx)
    y, x = _centre_in_mask(label_mask, y, x) if label_mask[y, x] else _move_inside(label_mask, y, x)
    return x, y


def gutierrez_points(parts2d: np.ndarray, by_contour: bool = False) -> tuple[list[tuple[int, int]], list[int]]:
    """Gutiérrez et al. (i3uex/sam ``tools/slice_masks.py``): per slice, one positive per part, one negative.

    ``parts2d`` holds one label value per object part (a lung) and 0 elsewhere. Each part gets a
    positive from :func:`gutierrez_point`; the slice always gets a negative at the image centre
    (``__add_image_center``), inside an object or not. ``by_contour`` (the reference's
    ``use_masks_contours``): each filled contour of a value is a part of its own, centred on the value's mask.
    """
    from scipy import ndimage

    points: list[tuple[int, int]] = []
    for value in np.unique(parts2d):
        if value == 0:
            continue
        label_mask = parts2d == value
        if not by_contour:
            points.append(gutierrez_point(label_mask))
            continue
        pieces, n = ndimage.label(label_mask)
        for piece in range(1, n + 1):  # find_contours on the hole-filled mask: one contour per filled piece
            points.append(gutierrez_point(ndimage.binary_fill_holes(pieces == piece), label_mask))
    h, w = parts2d.shape
    return points + [(w // 2, h // 2)], [1] * len(points) + [0]
