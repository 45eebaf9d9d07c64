"""Dice, IoU and normalised surface Dice (NSD), each in the conventions the papers use, labelled.

* Dice / IoU ``pooled``: every scored voxel as one 3D volume (MONAI ``compute_dice`` / ``compute_iou``;
  what SAM_2_Medical_3D's ``DiceHelper`` and MedSAM2 compute);
* Dice / IoU ``slice_mean``: the mean of the 2D values over the scored slices that hold the object
  (Gutiérrez et al. average Jaccard and Dice over slices);
* NSD ``monai``: MONAI ``compute_surface_dice`` (counts boundary *voxels*, at ``--nsd-tolerance`` mm);
* NSD ``surfel``: DeepMind's surface-distance ``compute_surface_dice_at_tolerance`` (surface elements
  weighted by their area; what MedSAM / MedSAM2 report), from the ``surface-distance`` package.

The *paper* metric of a named protocol is the one its reference code prints (see ``paper_metrics``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou, compute_surface_dice

SALIENT_PIXELS = 256


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]  # [B=1, C=1, ...]


def _monai_surface_dice(*args, **kwargs) -> torch.Tensor:
    """MONAI's compute_surface_dice, without its internal deprecation notice (printed once per call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        return compute_surface_dice(*args, **kwargs)


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
        _monai_surface_dice(
            _t(pred), _t(gt), class_thresholds=[float(tolerance_mm)], include_background=True,
            spacing=[float(s) for s in spacing],
        )
    )


def per_slice_dice(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    """2D Dice of every slice ``k`` (both empty: 1.0)."""
    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[:, None]
    g = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32))[:, None]
    return [float(v) for v in compute_dice(p, g, include_background=True, ignore_empty=False).flatten()]


def nsd_surfel(pred: np.ndarray, gt: np.ndarray, spacing, tolerance_mm: float) -> float:
    """DeepMind's surfel-weighted surface Dice (1.0 when both are empty, 0.0 when one is)."""
    import surface_distance

    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if not pred.any() and not gt.any():
        return 1.0
    if not pred.any() or not gt.any():
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the package uses scipy.ndimage.filters
        dists = surface_distance.compute_surface_distances(gt, pred, [float(s) for s in spacing])
    return float(surface_distance.compute_surface_dice_at_tolerance(dists, float(tolerance_mm)))


def nsd_shen_reference(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """segment_any_image.py's NSD: ``compute_surface_dice(y_pred, y, class_thresholds=[1])``, no spacing."""
    return _f(_monai_surface_dice(_t(pred), _t(gt), class_thresholds=[1]))


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def evaluate(pred: np.ndarray, gt: np.ndarray, spacing_kji, tolerance_mm: float,
             scored: tuple[int, int] | None = None, prompt_slice: int | None = None,
             paper: str | None = None, info: dict | None = None) -> dict:
    """Every metric of one binary prediction ``[K, J, I]`` over the scored slices ``[lo, hi]``.

    ``prompt_slice``: a slice whose prediction is the ground truth by construction (mask prompts);
    the Dice values are then also given without it (``no_prompt_slice``). ``paper``: the protocol
    kind whose paper metric to add (``paper_metrics``).
    """
    lo, hi = scored if scored is not None else (0, gt.shape[0] - 1)
    p, g = pred[lo : hi + 1].astype(bool), gt[lo : hi + 1].astype(bool)
    areas = g.reshape(g.shape[0], -1).sum(axis=1)
    holding = [k for k in range(g.shape[0]) if areas[k]]
    per_slice = [overlap(p[k], g[k]) for k in holding]
    out = {
        "scored": [lo, hi], "scored_slices": int(g.shape[0]), "object_slices": len(holding),
        **{f"{m}_pooled": v for m, v in overlap(p, g).items()},
        "dice_slice_mean": _mean([o["dice"] for o in per_slice]),
        "iou_slice_mean": _mean([o["iou"] for o in per_slice]),
        "nsd_monai": nsd(p, g, spacing_kji, tolerance_mm),
        "nsd_surfel": nsd_surfel(p, g, spacing_kji, tolerance_mm),
        "nsd_tolerance_mm": float(tolerance_mm),
        "no_prompt_slice": None,
    }
    if prompt_slice is not None and lo <= prompt_slice <= hi:
        keep = [k for k in range(g.shape[0]) if k != prompt_slice - lo]
        out["no_prompt_slice"] = {
            "dice_pooled": overlap(p[keep], g[keep])["dice"] if keep else None,
            "dice_slice_mean": _mean([o["dice"] for k, o in zip(holding, per_slice) if k != prompt_slice - lo]),
        }
    order = (info or {}).get("stack_order")
    out["paper"] = paper_metrics(paper, p, g, out, None if order is None else [k - lo for k in order], info)
    return out


SHEN_KINDS = ("shen_mask", "shen_clicks", "shen_whole")
SHEN_METRIC = ("pooled Dice + MONAI NSD (tolerance 1 voxel, no spacing) on the video stacked in the reference's "
               "pass order (nsd_anatomical: the same NSD on the slices in anatomical order)")
PAPER_METRICS = {
    **{kind: SHEN_METRIC for kind in SHEN_KINDS},
    "medsam2_box": "pooled Dice (DSC) + surfel NSD at --nsd-tolerance mm over the volume",
    "medsam2_recist": "pooled Dice (DSC) + surfel NSD at --nsd-tolerance mm over the volume (no reference "
                      "fixes the tolerance)",
    "gutierrez_lung": "Dice and Jaccard averaged over the slices holding the object (no NSD); the paper pools "
                      "every slice of every volume (report: 'paper aggregation')",
    "cvpr25": "final-round DSC + surfel NSD at --nsd-tolerance mm (0 when DSC <= 0.2); DSC_AUC / NSD_AUC over "
              "the 5 click rounds",
}


def reference_stack_nsd(p: np.ndarray, g: np.ndarray, order: list[int]) -> float | None:
    """segment_any_image.py's NSD on its stack: the slices in ``order`` (its dict's insertion order)."""
    return nsd_shen_reference(p[order], g[order])


def paper_metrics(kind: str | None, p: np.ndarray, g: np.ndarray, m: dict, order: list[int] | None = None,
                  info: dict | None = None) -> dict | None:
    """The numbers the protocol's reference code prints, named by what they are. ``order``: the slices (of
    the scored range) in the order the reference stacks them, where that order is not anatomical."""
    if kind not in PAPER_METRICS:
        return None
    extra = {}
    if kind in SHEN_KINDS:
        anatomical = nsd_shen_reference(p, g)
        dice, nsd_v = m["dice_pooled"], anatomical if order is None else reference_stack_nsd(p, g, order)
        extra = {"nsd_anatomical": anatomical, "stack": "reference pass order" if order is not None else "anatomical"}
    elif kind == "cvpr25":
        c = (info or {}).get("cvpr25", {})
        dice, nsd_v = c.get("dsc_final"), c.get("nsd_final")
        extra = {k: c.get(k) for k in ("dsc_auc", "nsd_auc", "seconds_per_interaction", "seconds_total")}
    elif kind in ("medsam2_box", "medsam2_recist"):
        dice, nsd_v = m["dice_pooled"], m["nsd_surfel"]
    else:
        dice, nsd_v = m["dice_slice_mean"], None
    return {"dice": dice, "nsd": nsd_v, "iou": m["iou_slice_mean"] if kind == "gutierrez_lung" else m["iou_pooled"],
            "metric": PAPER_METRICS[kind], **extra}
