"""The papers' prompting protocols, run through the engine's session verbs.

Every protocol produces a list of *steps* (the prompts, in order, with the engine verb that received
them) and an optional propagation range. The steps are stored in the results so a run can be audited
and replayed with :func:`execute`, which is also what the protocols themselves use: a replay goes
through the same code as the original run.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

from lib.engine.engine import Session, SlicePrompt

from . import prompts as P

PROTOCOLS = ("mask", "clicks", "box", "slice2d")


@dataclass(frozen=True)
class ProtocolSpec:
    name: str  # as shown in results: mask, clicks5, box, slice2d
    kind: str
    clicks: int = 0

    @classmethod
    def parse(cls, text: str, default_clicks: int = 5) -> "ProtocolSpec":
        m = re.fullmatch(r"(mask|box|slice2d|clicks)(\d*)", text.strip().lower())
        if not m or (m.group(2) and m.group(1) != "clicks"):
            raise ValueError(f"unknown protocol {text!r}; use mask, clicks, clicksN (N=1..5), box, slice2d")
        kind = m.group(1)
        if kind != "clicks":
            return cls(kind, kind)
        n = int(m.group(2) or default_clicks)
        if not 1 <= n <= 5:
            raise ValueError(f"clicks protocol needs 1..5 rounds, got {n}")
        return cls(f"clicks{n}", "clicks", n)


@dataclass
class ProtocolRun:
    mask: np.ndarray  # uint8 [K, J, I]
    steps: list[dict]
    propagate: tuple[int, int] | None
    anchor: int | None  # the prompted slice of the 3D protocols
    slices_processed: int
    seconds: float


def _prompt(step: dict, gt: np.ndarray) -> SlicePrompt:
    if step["kind"] == "mask":
        return SlicePrompt.from_mask(gt[step["k"]])  # "ground truth of slice k": replayable from the data
    if step["kind"] == "box":
        return SlicePrompt(box=tuple(step["box"]))
    return SlicePrompt(points=tuple(tuple(p) for p in step["points"]), labels=tuple(step["labels"]))


def execute(session: Session, gt: np.ndarray, steps: list[dict], propagate: tuple[int, int] | None):
    """Send ``steps`` to the session in order, then propagate; returns (mask, slices processed)."""
    session.reset()
    mask = np.zeros(gt.shape, dtype=np.uint8)
    processed = 0
    for step in steps:
        if step.get("reset"):
            session.reset()
        prompt = _prompt(step, gt)
        if step["verb"] == "segment_slice":
            m, _ = session.segment_slice(step["k"], prompt)
            mask[step["k"]] = m
            processed += 1
        else:
            session.set_prompts({step["k"]: prompt})
    if propagate is not None:
        prop = session.propagate(*propagate)
        mask, processed = prop.mask, processed + len(prop.scores)
    return mask, processed


def _full_or_object(gt: np.ndarray, prop_range: str) -> tuple[int, int]:
    return P.z_range(gt) if prop_range == "object" else (0, gt.shape[0] - 1)


def run(spec: ProtocolSpec, session: Session, gt: np.ndarray, prop_range: str = "volume",
        slice2d_positives: int = 3, seed: int = 0) -> ProtocolRun:
    """Run one protocol on one object (``gt``: bool [K, J, I])."""
    t0 = time.perf_counter()
    gt = gt.astype(bool)
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
    elif spec.kind == "slice2d":
        steps, rng = [], None
        for k in np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1)):
            pts, labels = P.slice2d_points(gt[k], slice2d_positives, seed=seed * 100003 + int(k))
            steps.append({"k": int(k), "verb": "segment_slice", "kind": "points", "reset": True,
                          "points": [list(p) for p in pts], "labels": labels})
        mask, processed = execute(session, gt, steps, None)
    else:
        raise ValueError(spec.kind)
    return ProtocolRun(mask, steps, rng, anchor, processed, time.perf_counter() - t0)


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
