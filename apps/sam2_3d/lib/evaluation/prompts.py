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


# --- Gutiérrez et al., released code (i3uex/sam v1.1.4, README: --apply_windowing --use_bounding_box) ---------


def _move_inside_released(mask: np.ndarray, y: int, x: int) -> tuple[int, int]:
    """v1.1.4 ``ImageSlice.__move_point_inside_mask``: as :func:`_move_inside`, but the new point is the
    **middle element** of the longest run of mask pixels along the row/column (``segment[len // 2]``),
    not their mean. No mask pixel on the four lines: the reference draws a random mask pixel; here the
    mask pixel nearest to the point (deterministic), then centred."""
    rays = [(np.flatnonzero(mask[y, :x]), "row"), (np.flatnonzero(mask[y, x + 1:]) + x + 1, "row"),
            (np.flatnonzero(mask[:y, x]), "col"), (np.flatnonzero(mask[y + 1:, x]) + y + 1, "col")]
    best, axis = max(rays, key=lambda r: len(r[0]))  # np.argmax: the first of equals
    if len(best):
        middle = int(best[len(best) // 2])
        ny, nx = (y, middle) if axis == "row" else (middle, x)
    else:
        ys, xs = np.nonzero(mask)
        n = int(np.argmin((ys - y) ** 2 + (xs - x) ** 2))
        ny, nx = int(ys[n]), int(xs[n])
    return _centre_in_mask(mask, ny, nx)


def gutierrez_released(parts2d: np.ndarray) -> tuple[list[tuple[int, int]], list[int], tuple[int, int, int, int]]:
    """v1.1.4 ``ImageSlice`` with ``use_bounding_box`` (and ``use_masks_contours`` off, as the README runs it):
    one positive per label value (its centre of mass, centred inside the value's mask, or moved inside by
    :func:`_move_inside_released`), then a negative at the centre of the box around **all** masks
    (``regionprops`` bbox, max exclusive: ``r0 + (r1 - r0) // 2``), and that box (``get_box``: x0, y0, x1, y1
    with the exclusive max) sent to SAM with the points. Returns ``(points (x, y), labels, box)``."""
    from scipy import ndimage

    points: list[tuple[int, int]] = []
    for value in np.unique(parts2d):
        if value == 0:
            continue
        label_mask = parts2d == value
        cy, cx = ndimage.center_of_mass(label_mask)
        y, x = int(cy), int(cx)
        y, x = _centre_in_mask(label_mask, y, x) if label_mask[y, x] else _move_inside_released(label_mask, y, x)
        points.append((x, y))
    ys, xs = np.nonzero(parts2d)
    r0, c0, r1, c1 = int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1
    negative = (c0 + (c1 - c0) // 2, r0 + (r1 - r0) // 2)
    return points + [negative], [1] * len(points) + [0], (c0, r0, c1, r1)


# --- CVPR 2025 "Foundation Models for Interactive 3D Biomedical Image Segmentation" ------------------------
# JunMa11/CVPR-MedSegFMCompetition: get_boxes.py (the initial 3D box) and CVPR25_iter_eval.py (the clicks).


def cvpr25_box(gt: np.ndarray, rng: np.random.Generator | None = None) -> dict:
    """``mask3D_to_bbox``: the object's z-range, ``z_mid`` = the middle of the slices holding it
    (``z_indices[len // 2]``), and ``mask2D_to_bbox`` on that slice: the 2D box widened by a random
    ``bbox_shift`` of 0..5 px scaled by the slice size / 256 (``np.random.randint(0, 6)``), clipped to
    the slice. The challenge drew the shift from a global seed in a process pool; here from ``rng``
    (None: no shift)."""
    zs = np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1))
    if zs.size == 0:
        raise ValueError("the object is absent from this volume")
    z_mid = int(zs[len(zs) // 2])
    ys, xs = np.nonzero(gt[z_mid])
    h, w = gt.shape[1:]
    shift = int(rng.integers(0, 6)) if rng is not None else 0
    sx, sy = int(shift * w / 256), int(shift * h / 256)
    box = (max(0, int(xs.min()) - sx), max(0, int(ys.min()) - sy), min(w - 1, int(xs.max()) + sx),
           min(h - 1, int(ys.max()) + sy))
    return {"z_min": int(zs[0]), "z_max": int(zs[-1]), "z_mid": z_mid, "box": list(box), "shift": shift}


def _cvpr25_edt(component: np.ndarray) -> np.ndarray:
    """``compute_edt``: the EDT (voxel units, no spacing) of the component cropped to its bounding box and
    zero-padded by 25 % of the crop (at least 1 voxel), so the volume's edge counts as outside."""
    coords = np.argwhere(component)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    crop = component[tuple(slice(a, b) for a, b in zip(lo, hi))]
    pad = np.maximum((np.asarray(crop.shape) * 0.25).astype(int), 1)
    dist = distance_transform_edt(np.pad(crop, [(p, p) for p in pad]))
    out = np.zeros(component.shape, dtype=dist.dtype)
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = dist[tuple(slice(p, p + s) for p, s in zip(pad, crop.shape))]
    return out


def cvpr25_click(gt: np.ndarray, pred: np.ndarray) -> tuple[tuple[int, int, int], int, int] | None:
    """The challenge's refinement click: ``((k, j, i), label, component size)`` or None when perfect.

    The error (``segs != gts``) is split into 26-connected components; the largest (first of equals, as
    ``np.argmax`` of the bincount) gets its EDT (:func:`_cvpr25_edt`); among the voxels at its maximum one
    is drawn uniformly with ``np.random.seed(42)`` re-seeded at every click (``sample_coord``); a voxel of
    the ground truth is a foreground click, else a background one."""
    from scipy import ndimage

    error = gt.astype(bool) != pred.astype(bool)
    if not error.any():
        return None
    comps, _ = ndimage.label(error, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    largest = comps == int(np.argmax(sizes))
    edt = _cvpr25_edt(largest) * largest
    if not edt.any():
        edt = largest.astype(float)
    candidates = np.argwhere(edt == edt.max())
    k, j, i = (int(v) for v in candidates[np.random.RandomState(42).choice(len(candidates))])
    return (k, j, i), int(bool(gt[k, j, i])), int(largest.sum())


# --- MedSAM2 RECIST (medsam2_infer_CT_lesion_npz_recist.py) ------------------------------------------------


def long_axis_marker(mask2d: np.ndarray) -> np.ndarray:
    """A RECIST-like marker drawn from a mask (the stand-in when a case has no marker): the line between
    the two mask pixels farthest apart (the maximum Feret diameter; first pair of equals), as a uint8
    image with 1 on the line. A radiologist's long axis is measured on the lesion the same way."""
    from scipy.spatial import ConvexHull
    from skimage.draw import line

    ys, xs = np.nonzero(mask2d)
    if ys.size == 0:
        raise ValueError("empty mask has no long axis")
    pts = np.stack([ys, xs], axis=1)
    if len(pts) >= 3:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # all pixels on one line: the hull is degenerate, every pixel is a candidate
            pass
    d = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    a, b = np.unravel_index(int(np.argmax(d)), d.shape)
    marker = np.zeros(mask2d.shape, dtype=np.uint8)
    rr, cc = line(int(pts[a, 0]), int(pts[a, 1]), int(pts[b, 0]), int(pts[b, 1]))
    marker[rr, cc] = 1
    return marker


def recist_box(marker2d: np.ndarray, shift: int = 0) -> tuple[int, int, int, int]:
    """``get_diameter_bbox``: the first and last marker pixels in row-major order are the ends, the box is
    the square centred on their midpoint (``astype(int)``) with half side ``int(length / 2)``, widened by
    ``shift`` and clipped to the slice: ``(x0, y0, x1, y1)``."""
    h, w = marker2d.shape
    ys, xs = np.nonzero(marker2d)
    if ys.size == 0:
        raise ValueError("empty RECIST marker")
    coords = np.stack([xs, ys], axis=1)
    p1, p2 = coords[0], coords[-1]
    cx, cy = ((p1 + p2) / 2).astype(int)
    half = int(np.linalg.norm(p1 - p2) / 2)
    return (max(0, int(cx) - half - shift), max(0, int(cy) - half - shift),
            min(w - 1, int(cx) + half + shift), min(h - 1, int(cy) + half + shift))
