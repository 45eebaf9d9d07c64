"""The papers' prompting protocols, run through the engine's session verbs.

Every protocol produces a list of *steps* (the prompts, in order, with the engine verb that received
them) and an optional propagation range. The steps are stored in the results so a run can be audited
and replayed with :func:`execute`, which is also what the protocols themselves use: a replay goes
through the same code as the original run.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from lib.engine.engine import Session, SlicePrompt

from . import prompts as P

PROTOCOLS = ("mask", "clicks", "box", "slice2d")
# The papers' recipes, by name (docs/evaluation.md: the rule each follows and the reference line).
NAMED = {
    "shen2024-1mask": "shen_mask",
    "shen2024-salient": "shen_mask",  # the reference's default video (--threshold 256) *is* the salient range
    "shen2024-whole": "shen_whole",  # its --threshold 0 video: the whole object and a random margin
    "medsam2-box": "medsam2_box",
    "gutierrez2023-lung": "gutierrez_lung",
}
HELP = ("mask, clicks, clicksN (N=1..5), box, slice2d; or a paper's recipe: shen2024-1mask, shen2024-salient, "
        "shen2024-whole, "
        "shen2024-Nclicks (N=1..5, e.g. shen2024-5clicks), medsam2-box, gutierrez2023-lung")


@dataclass(frozen=True)
class ProtocolSpec:
    name: str  # as shown in results: mask, clicks5, box, slice2d, shen2024-5clicks, ...
    kind: str
    clicks: int = 0

    @classmethod
    def parse(cls, text: str, default_clicks: int = 5) -> "ProtocolSpec":
        t = text.strip().lower()
        if t in NAMED:
            return cls(t, NAMED[t])
        m = re.fullmatch(r"shen2024-(\d)clicks", t)
        if m:
            n = int(m.group(1))
            if not 1 <= n <= 5:
                raise ValueError(f"shen2024-Nclicks needs N = 1..5, got {n}")
            return cls(t, "shen_clicks", n)
        m = re.fullmatch(r"(mask|box|slice2d|clicks)(\d*)", t)
        if not m or (m.group(2) and m.group(1) != "clicks"):
            raise ValueError(f"unknown protocol {text!r}; use {HELP}")
        kind = m.group(1)
        if kind != "clicks":
            return cls(kind, kind)
        n = int(m.group(2) or default_clicks)
        if not 1 <= n <= 5:
            raise ValueError(f"clicks protocol needs 1..5 rounds, got {n}")
        return cls(f"clicks{n}", "clicks", n)

    @property
    def prompts_ground_truth_mask(self) -> bool:
        """Its prompted slice is the ground truth itself (scores 1.0 by construction)."""
        return self.kind in ("mask", "shen_mask", "shen_whole")


@dataclass
class ProtocolRun:
    mask: np.ndarray  # uint8 [K, J, I]
    steps: list[dict]
    propagate: tuple[int, int] | None
    anchor: int | None  # the prompted slice of the 3D protocols
    slices_processed: int
    seconds: float
    # The slices the paper scores ([first, last] on the evaluated grid); None: the whole grid.
    scored: tuple[int, int] | None = None
    # Set when the reference code skips this case (it is then reported, not scored).
    skipped: str | None = None
    info: dict = field(default_factory=dict)


class Skip(Exception):
    """The paper's reference code would skip this case (too small, no salient video...)."""


def _prompt(step: dict, gt: np.ndarray) -> SlicePrompt:
    if step["kind"] == "mask":
        return SlicePrompt.from_mask(gt[step["k"]])  # "ground truth of slice k": replayable from the data
    if step["kind"] == "box":
        return SlicePrompt(box=tuple(step["box"]))
    return SlicePrompt(points=tuple(tuple(p) for p in step["points"]), labels=tuple(step["labels"]))


def execute(session: Session, gt: np.ndarray, steps: list[dict], propagate: tuple[int, int] | None):
    """Send ``steps`` to the session in order, then propagate; returns (mask, slices processed).

    A step may itself be a propagation (``{"verb": "propagate", "range": [a, b]}``; its mask is OR-ed
    into the answer, as MedSAM2 accumulates its two passes): steps that hold their own propagations are
    complete, and ``propagate`` is then only the range they cover (no further pass is run)."""
    session.reset()
    mask = np.zeros(gt.shape, dtype=np.uint8)
    processed = 0
    own_passes = any(step["verb"] == "propagate" for step in steps)
    for step in steps:
        if step.get("reset"):
            session.reset()
        if step["verb"] == "propagate":
            prop = session.propagate(*step["range"])
            mask |= prop.mask
            processed += len(prop.scores)
            continue
        prompt = _prompt(step, gt)
        if step["verb"] == "segment_slice":
            m, _ = session.segment_slice(step["k"], prompt)
            mask[step["k"]] = m
            processed += 1
        else:
            session.set_prompts({step["k"]: prompt})
    if propagate is not None and not own_passes:
        prop = session.propagate(*propagate)
        mask, processed = prop.mask, processed + len(prop.scores)
    return mask, processed


def _full_or_object(gt: np.ndarray, prop_range: str) -> tuple[int, int]:
    return P.z_range(gt) if prop_range == "object" else (0, gt.shape[0] - 1)


def run(spec: ProtocolSpec, session: Session, gt: np.ndarray, prop_range: str = "volume",
        slice2d_positives: int = 3, seed: int = 0, parts: np.ndarray | None = None,
        key_slice: int | None = None) -> ProtocolRun:
    """Run one protocol on one object (``gt``: bool [K, J, I]).

    ``parts``: int [K, J, I], one id per part of the object (each lung) for gutierrez2023-lung;
    ``key_slice``: the dataset's key slice for medsam2-box (None: the largest-area slice).
    """
    t0 = time.perf_counter()
    gt = gt.astype(bool)
    try:
        out = _RECIPES[spec.kind](spec, session, gt, prop_range=prop_range, slice2d_positives=slice2d_positives,
                                  seed=seed, parts=parts, key_slice=key_slice)
    except Skip as why:
        empty = np.zeros(gt.shape, dtype=np.uint8)
        return ProtocolRun(empty, [], None, None, 0, time.perf_counter() - t0, skipped=str(why))
    out.seconds = time.perf_counter() - t0
    return out


def _legacy(spec, session, gt, prop_range, slice2d_positives, seed, **_) -> ProtocolRun:
    anchor = None
    if spec.kind == "mask":
        anchor = P.central_slice(gt)
        steps = [{"k": anchor, "verb": "set_prompts", "kind": "mask", "source": "ground truth of slice k"}]
        rng = _full_or_object(gt, prop_range)
        mask, processed = execute(session, gt, steps, rng)
    elif spec.kind == "box":
        lo, hi = P.z_range(gt)
        anchor = P.central_slice(gt)
        steps = [{"k": anchor, "verb": "set_prompts", "kind": "box", "box": list(P.bounding_box(gt[anchor]))}]
        rng = (lo, hi)
        mask, processed = execute(session, gt, steps, rng)
    elif spec.kind == "clicks":
        anchor = P.central_slice(gt)
        steps, processed = _clicks(session, gt, anchor, spec.clicks)
        rng = _full_or_object(gt, prop_range)
        prop = session.propagate(*rng)
        mask, processed = prop.mask, processed + len(prop.scores)
    else:  # slice2d
        steps, rng = [], None
        for k in np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1)):
            pts, labels = P.slice2d_points(gt[k], slice2d_positives, seed=seed * 100003 + int(k))
            steps.append({"k": int(k), "verb": "segment_slice", "kind": "points", "reset": True,
                          "points": [list(p) for p in pts], "labels": labels})
        mask, processed = execute(session, gt, steps, None)
    return ProtocolRun(mask, steps, rng, anchor, processed, 0.0)


def _shen_video(gt: np.ndarray) -> tuple[int, int]:
    video = P.shen_video(gt)
    if video is None:
        raise Skip(f"no video: nii_2_video.py keeps slices with > {P.SHEN_SALIENT_PIXELS} px from the first to "
                   "the last one excluded, and this object has fewer than 2 such slices")
    return video


def _mask_on_video(session, gt, video: tuple[int, int], info: dict) -> ProtocolRun:
    """segment_any_image.py: the ground truth of the video's middle frame, propagated within the video."""
    anchor = P.shen_central(video)
    steps = [{"k": anchor, "verb": "set_prompts", "kind": "mask", "source": "ground truth of slice k"}]
    mask, processed = execute(session, gt, steps, video)
    return ProtocolRun(mask, steps, video, anchor, processed, 0.0, scored=video, info={"video": list(video), **info})


def _shen_mask(spec, session, gt, **_) -> ProtocolRun:
    """The salient video (``--threshold 256``, the reference's default)."""
    return _mask_on_video(session, gt, _shen_video(gt), {})


def _shen_whole(spec, session, gt, seed=0, **_) -> ProtocolRun:
    """The ``--threshold 0`` video (the whole object, a random margin each side)."""
    whole = P.shen_whole_video(gt, seed)
    if whole is None:
        raise Skip("no video: the object is absent")
    video, margins = whole
    anchor = P.shen_central(video)
    if not gt[anchor].any():
        raise Skip(f"the video's middle frame {anchor} holds no ground truth: no mask prompt can be given")
    return _mask_on_video(session, gt, video, {"margins": list(margins)})


def _shen_clicks(spec, session, gt, **_) -> ProtocolRun:
    """segment_any_image_with_clicks.py: N rounds of perform_iteration on the middle frame, then propagate."""
    video = _shen_video(gt)
    anchor = P.shen_central(video)
    area = int(gt[anchor].sum())
    if area <= P.SHEN_MIN_CENTRAL_PIXELS:
        raise Skip(f"central slice {anchor} holds {area} px <= {P.SHEN_MIN_CENTRAL_PIXELS}: "
                   "the reference skips the case ('GT is too small')")
    session.reset()
    pred = np.zeros(gt.shape[1:], dtype=bool)
    points, labels, steps = [], [], []
    for r in range(spec.clicks):
        click = P.shen_click(gt[anchor], pred)
        if click is None:  # no error region thicker than 1.42 px: the reference adds no point this round
            continue
        xy, label, region, dist = click
        points.append(list(xy))
        labels.append(label)
        pred, _ = session.segment_slice(anchor, _prompt({"kind": "points", "points": points, "labels": labels}, gt))
        pred = pred.astype(bool)
        steps.append({"k": anchor, "verb": "segment_slice", "kind": "points", "points": [list(p) for p in points],
                      "labels": list(labels), "round": r + 1,
                      "click": {"xy": list(xy), "label": label, "region": region, "distance": round(dist, 4)}})
    if not steps:
        raise Skip(f"no click: no error region on slice {anchor} is thicker than {P.SHEN_MIN_DISTANCE} px")
    prop = session.propagate(*video)
    return ProtocolRun(prop.mask, steps, video, anchor, len(steps) + len(prop.scores), 0.0, scored=video,
                       info={"video": list(video)})


def _medsam2_box(spec, session, gt, key_slice=None, **_) -> ProtocolRun:
    """MedSAM2 (medsam2_infer_3D_CT.py): a box on the dataset's key slice, propagated through the whole
    sub-volume both ways, then the largest 3D connected component (getLargestCC)."""
    source = "given"
    if key_slice is None:
        key_slice, source = P.largest_slice(gt), "largest ground-truth area (no key slice given)"
    if not 0 <= key_slice < gt.shape[0]:
        raise ValueError(f"key slice {key_slice} is outside the evaluated slices 0..{gt.shape[0] - 1}")
    if not gt[key_slice].any():
        raise ValueError(f"key slice {key_slice} holds no ground truth: no box can be drawn on it")
    box = {"k": key_slice, "verb": "set_prompts", "kind": "box", "box": list(P.bounding_box(gt[key_slice]))}
    rng = (0, gt.shape[0] - 1)
    # two passes on two fresh states, as the reference runs them (reset_state between): the reverse pass
    # never sees the memory of the slices the forward pass tracked
    steps = [box, {"verb": "propagate", "range": [key_slice, rng[1]], "direction": "forward"},
             {**box, "reset": True}, {"verb": "propagate", "range": [rng[0], key_slice], "direction": "reverse"}]
    mask, processed = execute(session, gt, steps, rng)
    mask = largest_component(mask)
    return ProtocolRun(mask, steps, rng, key_slice, processed, 0.0, scored=rng, info={"key_slice_source": source})


def largest_component(mask: np.ndarray) -> np.ndarray:
    """getLargestCC: the largest 26-connected component (skimage ``measure.label``'s default in 3D)."""
    from scipy import ndimage

    if not mask.any():
        return mask
    comps, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 1:
        return mask
    sizes = np.bincount(comps.ravel())[1:]
    return (comps == int(np.argmax(sizes)) + 1).astype(np.uint8)


def _gutierrez_lung(spec, session, gt, parts=None, **_) -> ProtocolRun:
    """Gutiérrez et al. (i3uex/sam process_image.py): every slice with the object, alone, with one positive
    per part (lung) at its centre of mass and a negative at the image centre; no propagation."""
    parts = gt.astype(np.int32) if parts is None else parts
    single = len(np.unique(parts[gt])) == 1  # one part (one label value): its separate contours are the parts
    steps = []
    for k in np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1)):
        pts, labels = P.gutierrez_points(np.where(gt[k], parts[k], 0), by_contour=single)
        steps.append({"k": int(k), "verb": "segment_slice", "kind": "points", "reset": True,
                      "points": [list(p) for p in pts], "labels": labels})
    mask, processed = execute(session, gt, steps, None)
    ks = [s["k"] for s in steps]
    return ProtocolRun(mask, steps, None, None, processed, 0.0, scored=(min(ks), max(ks)),
                       info={"per_slice": True})


_RECIPES = {"mask": _legacy, "box": _legacy, "clicks": _legacy, "slice2d": _legacy, "shen_mask": _shen_mask,
            "shen_whole": _shen_whole, "shen_clicks": _shen_clicks, "medsam2_box": _medsam2_box, "gutierrez_lung": _gutierrez_lung}


def _clicks(session: Session, gt: np.ndarray, k: int, rounds: int) -> tuple[list[dict], int]:
    """Up to ``rounds`` simulated corrective clicks on slice k; each round sees SAM 2's last answer."""
    session.reset()
    pred = np.zeros(gt.shape[1:], dtype=bool)
    points, labels, steps = [], [], []
    for r in range(rounds):
        click = P.next_click(gt[k], pred)
        if click is None:  # the slice is already perfect: a user would stop clicking
            break
        xy, label, region = click
        points.append(list(xy))
        labels.append(label)
        pred, _ = session.segment_slice(k, _prompt({"kind": "points", "points": points, "labels": labels}, gt))
        pred = pred.astype(bool)
        inter = np.logical_and(pred, gt[k]).sum()
        dice = 2.0 * inter / max(1, pred.sum() + gt[k].sum())
        steps.append({"k": int(k), "verb": "segment_slice", "kind": "points", "points": [list(p) for p in points],
                      "labels": list(labels), "round": r + 1, "click": {"xy": list(xy), "label": label,
                      "region": region}, "slice_dice_after": round(float(dice), 6)})
    return steps, len(steps)
