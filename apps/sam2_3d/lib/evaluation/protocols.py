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
from . import reference_runs

# The papers' recipes, by name (docs/evaluation.md: the rule each follows and the reference line).
NAMED = {
    "shen2024-1mask": "shen_mask",
    "shen2024-salient": "shen_mask",  # the reference's default video (--threshold 256) *is* the salient range
    "shen2024-whole": "shen_whole",  # its --threshold 0 video: the whole object and a random margin
    "medsam2-box": "medsam2_box",
    "gutierrez2023-lung": "gutierrez_lung",
    "medsam2-recist": "medsam2_recist",
    "cvpr25-interactive": "cvpr25",
}
# Kinds whose paper-exact mode (--exact) differs from this project's run of the recipe.
EXACT_KINDS = ("shen_mask", "shen_whole", "shen_clicks", "gutierrez_lung")
HELP = ("mask, clicks, clicksN (N=1..5), box, slice2d; or a paper's recipe: shen2024-1mask, shen2024-salient, "
        "shen2024-whole, "
        "shen2024-Nclicks (N=1..5, e.g. shen2024-5clicks), medsam2-box, medsam2-recist, gutierrez2023-lung, "
        "cvpr25-interactive")


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
    return SlicePrompt(points=tuple(tuple(p) for p in step["points"]), labels=tuple(step["labels"]),
                       box=tuple(step["box"]) if step.get("box") else None)


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
        key_slice: int | None = None, exact: bool = False, spacing=None, nsd_tolerance: float = 2.0,
        marker: np.ndarray | None = None) -> ProtocolRun:
    """Run one protocol on one object (``gt``: bool [K, J, I]).

    ``parts``: int [K, J, I], one id per part of the object (each lung) for gutierrez2023-lung;
    ``key_slice``: the dataset's key slice for medsam2-box / medsam2-recist (None: the largest-area slice);
    ``exact``: the paper-exact mode of the papers' recipes (their reference code's state handling);
    ``spacing`` (k, j, i mm) and ``nsd_tolerance``: the per-round NSD of cvpr25-interactive;
    ``marker``: bool [K, J, I], the data's RECIST line of this object (medsam2-recist), if it has one.
    """
    t0 = time.perf_counter()
    gt = gt.astype(bool)
    try:
        out = _RECIPES[spec.kind](spec, session, gt, prop_range=prop_range, slice2d_positives=slice2d_positives,
                                  seed=seed, parts=parts, key_slice=key_slice, exact=exact, spacing=spacing,
                                  nsd_tolerance=nsd_tolerance, marker=marker)
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


def _mask_on_video(session, gt, video: tuple[int, int], info: dict, exact: bool = False) -> ProtocolRun:
    """segment_any_image.py: the ground truth of the video's middle frame, propagated within the video."""
    anchor = P.shen_central(video)
    info = {"video": list(video), "stack_order": reference_runs.shen_stack_order(video, anchor), **info}
    if exact:
        mask, steps, _ = reference_runs.shen(session, gt, video, anchor)
        return ProtocolRun(mask, steps, video, anchor, video[1] - video[0] + 1, 0.0, scored=video,
                           info={**info, "exact": True})
    steps = [{"k": anchor, "verb": "set_prompts", "kind": "mask", "source": "ground truth of slice k"}]
    mask, processed = execute(session, gt, steps, video)
    return ProtocolRun(mask, steps, video, anchor, processed, 0.0, scored=video, info=info)


def _shen_mask(spec, session, gt, exact=False, **_) -> ProtocolRun:
    """The salient video (``--threshold 256``, the reference's default)."""
    return _mask_on_video(session, gt, _shen_video(gt), {}, exact)


def _shen_whole(spec, session, gt, seed=0, exact=False, **_) -> ProtocolRun:
    """The ``--threshold 0`` video (the whole object, a random margin each side)."""
    whole = P.shen_whole_video(gt, seed)
    if whole is None:
        raise Skip("no video: the object is absent")
    video, margins = whole
    anchor = P.shen_central(video)
    if not gt[anchor].any():
        raise Skip(f"the video's middle frame {anchor} holds no ground truth: no mask prompt can be given")
    return _mask_on_video(session, gt, video, {"margins": list(margins)}, exact)


def _shen_clicks(spec, session, gt, exact=False, **_) -> ProtocolRun:
    """segment_any_image_with_clicks.py: N rounds of perform_iteration on the middle frame, then propagate.
    Ours: each round a fresh 2D answer from all clicks so far (the engine's segment_slice); exact: every
    click added to one SAM 2 state, the previous round's mask logits fed back (reference_runs.shen)."""
    video = _shen_video(gt)
    anchor = P.shen_central(video)
    area = int(gt[anchor].sum())
    if area <= P.SHEN_MIN_CENTRAL_PIXELS:
        raise Skip(f"central slice {anchor} holds {area} px <= {P.SHEN_MIN_CENTRAL_PIXELS}: "
                   "the reference skips the case ('GT is too small')")
    info = {"video": list(video), "stack_order": reference_runs.shen_stack_order(video, anchor)}
    if exact:
        try:
            mask, steps, _ = reference_runs.shen(session, gt, video, anchor, clicks=spec.clicks)
        except ValueError as why:
            raise Skip(str(why)) from None
        rounds = sum(1 for s in steps if s.get("round"))
        return ProtocolRun(mask, steps, video, anchor, rounds + video[1] - video[0] + 1, 0.0, scored=video,
                           info={**info, "exact": True})
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
                       info=info)


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


def _gutierrez_lung(spec, session, gt, parts=None, exact=False, **_) -> ProtocolRun:
    """Gutiérrez et al. (i3uex/sam process_image.py): every slice with the object, alone, with one positive
    per part (lung) at its centre of mass and a negative; no propagation. Ours: the 2023-05-05 rule (negative
    at the image centre, no box); exact: the released v1.1.4 (negative at the centre of the box around all
    masks, that box sent too, the middle element of a run as the moved positive)."""
    parts = gt.astype(np.int32) if parts is None else parts
    single = len(np.unique(parts[gt])) == 1  # one part (one label value): its separate contours are the parts
    steps = []
    for k in np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1)):
        if exact:
            pts, labels, box = P.gutierrez_released(np.where(gt[k], parts[k], 0))
            steps.append({"k": int(k), "verb": "segment_slice", "kind": "points", "reset": True,
                          "points": [list(p) for p in pts], "labels": labels, "box": list(box)})
            continue
        pts, labels = P.gutierrez_points(np.where(gt[k], parts[k], 0), by_contour=single)
        steps.append({"k": int(k), "verb": "segment_slice", "kind": "points", "reset": True,
                      "points": [list(p) for p in pts], "labels": labels})
    mask, processed = execute(session, gt, steps, None)
    ks = [s["k"] for s in steps]
    return ProtocolRun(mask, steps, None, None, processed, 0.0, scored=(min(ks), max(ks)),
                       info={"per_slice": True, **({"exact": True} if exact else {})})


def recist_marker(gt: np.ndarray, marker: np.ndarray | None, key_slice: int | None) -> tuple[int, np.ndarray, str, str]:
    """The marker slice and its RECIST line: ``(k, line 2D, marker source, key-slice source)``. The data's marker
    (npz ``recist``) when it has one: on exactly one slice, as the reference asserts (``len(z_indices) == 1``);
    else the stand-in, the longest diameter of the ground truth on the key slice."""
    if marker is not None and marker.any():
        ks = np.flatnonzero(marker.reshape(marker.shape[0], -1).any(axis=1))
        if len(ks) != 1:
            raise ValueError(f"the RECIST marker spans slices {ks.tolist()}; the reference expects exactly one")
        k = int(ks[0])
        return k, marker[k].astype(np.uint8), "the data's RECIST marker (npz 'recist')", "the marker's slice"
    source = "given"
    if key_slice is None:
        key_slice, source = P.largest_slice(gt), "largest ground-truth area (no key slice given)"
    if not 0 <= key_slice < gt.shape[0] or not gt[key_slice].any():
        raise ValueError(f"key slice {key_slice} holds no ground truth: no long axis can be drawn on it")
    return (key_slice, P.long_axis_marker(gt[key_slice]),
            "stand-in: the longest diameter of the ground truth on the key slice (no RECIST marker in the data)", source)


def _medsam2_recist(spec, session, gt, key_slice=None, marker=None, **_) -> ProtocolRun:
    """MedSAM2 medsam2_infer_CT_lesion_npz_recist.py (``--propagate_with_box``): a square box from the RECIST
    long axis on the marker slice, its 2D answer re-added as a mask, forward pass, reset, the mask again,
    reverse pass, the union (no connected-component filter in this script). A case without a marker gets
    the long axis drawn from the ground truth on the key slice (a stand-in, said in the info)."""
    key_slice, line, marker_source, key_source = recist_marker(gt, marker, key_slice)
    box = P.recist_box(line)
    mask, steps, mask2d = reference_runs.recist(session, gt.shape, box, key_slice)
    ys, xs = np.nonzero(line)
    rng = (0, gt.shape[0] - 1)
    return ProtocolRun(mask, steps, rng, key_slice, gt.shape[0] + 1, 0.0, scored=rng, info={
        "key_slice_source": key_source, "exact": True,
        "marker": {"source": marker_source, "ends_xy": [[int(xs[0]), int(ys[0])], [int(xs[-1]), int(ys[-1])]]},
        "box_2d_dice": round(float(_dice2d(mask2d, gt[key_slice])), 6)})


def _dice2d(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


CVPR25_CLICKS = 5
CVPR25_NSD_MIN_DSC = 0.2  # CVPR25_iter_eval.py: NSD only computed when DSC > 0.2, else 0


def _click_prompts(session, k: int, xy: tuple[int, int], label: int, answer: np.ndarray) -> dict:
    """The session's prompts with one more click on slice k, through ``update_prompts`` (the server's verb).
    A slice already prompted keeps its prompt and gets the click added; a slice without one gets the
    click plus the slice's current answer as its mask (what the user sees and corrects there)."""
    current = session.prompts()
    points = {s: [(x, y, l) for (x, y), l in zip(p.points, p.labels)] for s, p in current.items() if p.points}
    points.setdefault(k, []).append((xy[0], xy[1], label))
    masks = None
    if k not in current and answer.any():
        masks = {s: p.mask for s, p in current.items() if p.mask is not None}
        masks[k] = answer.astype(bool)
    session.update_prompts(points=points, masks=masks)
    return {"with_answer_mask": masks is not None}


def _cvpr25(spec, session, gt, seed=0, spacing=None, nsd_tolerance=2.0, **_) -> ProtocolRun:
    """CVPR 2025 interactive 3D: the initial 3D box (z-range + 2D box on the middle slice), then up to 5
    clicks at the centre of the largest error; each round is one interaction through the session verbs
    (set_prompts / update_prompts, then propagate over the box's z-range, incremental after the first)."""
    from . import metrics as M

    spacing = spacing or (1.0, 1.0, 1.0)
    b = P.cvpr25_box(gt, np.random.default_rng(seed))
    lo, hi, zm = b["z_min"], b["z_max"], b["z_mid"]
    session.reset()
    steps, rounds = [], []

    def score(mask: np.ndarray) -> tuple[float, float]:
        dsc = M.overlap(mask, gt)["dice"]
        nsd = M.nsd_surfel(mask, gt, spacing, nsd_tolerance) if dsc > CVPR25_NSD_MIN_DSC else 0.0
        return float(dsc), float(nsd)

    t0 = time.perf_counter()
    session.set_prompts({zm: SlicePrompt(box=tuple(b["box"]))})
    prop = session.propagate(lo, hi)
    seconds = time.perf_counter() - t0
    mask = prop.mask.copy()
    processed = len(prop.scores)
    steps.append({"k": zm, "verb": "set_prompts", "kind": "box", "box": b["box"], "round": 0,
                  "box_3d": {"z_min": lo, "z_max": hi, "z_mid": zm, "shift": b["shift"]}})
    dsc, nsd = score(mask)
    rounds.append({"round": 0, "prompt": "box", "dsc": dsc, "nsd": nsd, "seconds": round(seconds, 4),
                   "how": prop.how, "spans": [list(s) for s in prop.propagated_spans]})
    for r in range(1, CVPR25_CLICKS + 1):
        click = P.cvpr25_click(gt, mask)
        t0 = time.perf_counter()
        if click is None:  # perfect: no click is added, the model is asked again with the same input
            prop = session.propagate(lo, hi)
            step = {"verb": "propagate", "round": r, "click": None}
        else:
            (k, j, i), label, size = click
            extra = _click_prompts(session, k, (i, j), label, mask[k])
            prop = session.propagate(lo, hi)
            step = {"k": k, "verb": "update_prompts", "kind": "points", "round": r,
                    "points": [list(p) for p in session.prompts()[k].points], "labels": list(session.prompts()[k].labels),
                    "click": {"kji": [k, j, i], "label": label, "error_component_voxels": size}, **extra}
        seconds = time.perf_counter() - t0
        mask = prop.mask.copy()
        processed += sum(b - a + 1 for a, b in prop.propagated_spans)
        steps.append(step)
        dsc, nsd = score(mask)
        rounds.append({"round": r, "prompt": "click" if click else "none (perfect)", "dsc": dsc, "nsd": nsd,
                       "seconds": round(seconds, 4), "how": prop.how,
                       "spans": [list(s) for s in prop.propagated_spans]})
    dscs, nsds = [x["dsc"] for x in rounds], [x["nsd"] for x in rounds]
    from scipy.integrate import trapezoid

    # integrate.cumulative_trapezoid(dscs[-n_clicks:], np.arange(n_clicks))[-1]: the click rounds only
    paper = {"dsc_auc": float(trapezoid(dscs[-CVPR25_CLICKS:])), "nsd_auc": float(trapezoid(nsds[-CVPR25_CLICKS:])),
             "dsc_final": dscs[-1], "nsd_final": nsds[-1],
             "seconds_per_interaction": float(np.mean([x["seconds"] for x in rounds])),
             "seconds_total": float(np.sum([x["seconds"] for x in rounds]))}
    return ProtocolRun(mask, steps, (lo, hi), zm, processed, 0.0, scored=None,
                       info={"rounds": rounds, "cvpr25": paper})


_RECIPES = {"mask": _legacy, "box": _legacy, "clicks": _legacy, "slice2d": _legacy, "shen_mask": _shen_mask,
            "shen_whole": _shen_whole, "shen_clicks": _shen_clicks, "medsam2_box": _medsam2_box, "gutierrez_lung": _gutierrez_lung,
            "medsam2_recist": _medsam2_recist, "cvpr25": _cvpr25}


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
