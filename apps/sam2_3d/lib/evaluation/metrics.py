"""Dice, IoU and normalised surface Dice (NSD) with MONAI's functions, over three scopes.

* ``volume``: every evaluated slice, as one 3D volume;
* ``zrange``: only the object's first..last slices (what SAM_2_Medical_3D scores after cropping);
* ``salient``: only slices with more than ``SALIENT_PIXELS`` ground-truth pixels (the papers' "salient
  area"); Dice and IoU pool their voxels, NSD is the mean of the 2D per-slice NSDs (a stack of
  non-adjacent slices has no meaningful 3D surface).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou, compute_surface_dice

SALIENT_PIXELS = 256


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]  # [B=1, C=1, ...]


def _f(x: torch.Tensor) -> float | None:
    v = float(x.flatten()[0])
    return None if math.isnan(v) else v


def overlap(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Dice and IoU of two binary arrays (any dimension); both empty counts as a perfect 1.0."""
    p, g = _t(pred), _t(gt)
    return {
        "dice": _f(compute_dice(p, g, include_background=True, ignore_empty=False)),
        "iou": _f(compute_iou(p, g, include_background=True, ignore_empty=False)),
    }


def nsd(pred: np.ndarray, gt: np.ndarray, spacing, tolerance_mm: float) -> float | None:
    """MONAI's surface Dice at ``tolerance_mm``; None when either surface is empty (undefined)."""
    if not pred.any() and not gt.any():
        return 1.0
    if not pred.any() or not gt.any():
        return 0.0
    return _f(
        compute_surface_dice(
            _t(pred), _t(gt), class_thresholds=[float(tolerance_mm)], include_background=True,
            spacing=[float(s) for s in spacing],
        )
    )


def per_slice_dice(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    """2D Dice of every slice ``k`` (both empty: 1.0)."""
    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[:, None]
    g = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32))[:, None]
    return [float(v) for v in compute_dice(p, g, include_background=True, ignore_empty=False).flatten()]


def evaluate(pred: np.ndarray, gt: np.ndarray, spacing_kji, tolerance_mm: float) -> dict:
    """All metrics of one binary prediction ``[K, J, I]`` against its ground truth."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    areas = gt.reshape(gt.shape[0], -1).sum(axis=1)
    present = np.flatnonzero(areas)
    lo, hi = (int(present[0]), int(present[-1])) if present.size else (0, gt.shape[0] - 1)
    salient = np.flatnonzero(areas > SALIENT_PIXELS)
    out = {
        "volume": {**overlap(pred, gt), "nsd": nsd(pred, gt, spacing_kji, tolerance_mm)},
        "zrange": {
            **overlap(pred[lo : hi + 1], gt[lo : hi + 1]),
            "nsd": nsd(pred[lo : hi + 1], gt[lo : hi + 1], spacing_kji, tolerance_mm),
        },
    }
    if salient.size:
        slice_nsd = [nsd(pred[k], gt[k], spacing_kji[1:], tolerance_mm) for k in salient]
        out["salient"] = {**overlap(pred[salient], gt[salient]), "nsd": float(np.mean(slice_nsd)),
                          "slices": int(salient.size)}
    else:
        out["salient"] = {"dice": None, "iou": None, "nsd": None, "slices": 0}
    return out
