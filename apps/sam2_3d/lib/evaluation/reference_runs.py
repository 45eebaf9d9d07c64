"""Paper-exact runs: SAM 2's video predictor driven call by call as the reference scripts drive it.

The engine's session verbs deliberately differ from these scripts in state handling (a changed slice
is re-segmented as a fresh conditioning frame; a mask prompt is the user's truth on its slice). A
paper's number comes from the script's own sequence of predictor calls, so paper-exact mode replays
that sequence on the session's SAM 2 state (the same network, frames and cached image features):

* Shen et al. ``segment_any_image_with_clicks.py`` (``perform_iteration``): every round's click is added
  to ONE inference state with ``add_new_points`` (all clicks so far); SAM 2 then feeds the previous
  round's mask logits on that frame back into the decoder. ``segment_any_image.py``: ``add_new_mask``,
  whose output on the prompted frame is SAM 2's rendering of the mask (resized to the model's input and
  back), not the mask itself. Both then ``propagate_in_video(state)`` (forward from the prompt) and
  ``propagate_in_video(state, start_frame_idx=frame_idx - 1, reverse=True)``; the dict of results keeps
  that order (:func:`shen_stack_order`), which is the stack the reference scores.
* MedSAM2 ``medsam2_infer_CT_lesion_npz_recist.py`` (``infer_3d``, ``--propagate_with_box``): the box on the
  marker slice (``add_new_points_or_box``), its mask re-added with ``add_new_mask`` on the same state,
  ``propagate_in_video(start_frame_idx=z_mid)``, ``reset_state``, ``add_new_mask`` again,
  ``propagate_in_video(start_frame_idx=z_mid, reverse=True)``; every answer OR-ed into the volume.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from . import prompts as P

OBJ_ID = 1


@contextmanager
def _reference_state(session):
    """The session's SAM 2 state, emptied, under the engine's lock; emptied again afterwards so that
    the session's own verbs start from a clean state (its prompt bookkeeping never saw these calls)."""
    session.reset()
    track = session.track()
    engine = session.engine
    with engine.lock, torch.inference_mode(), engine.autocast():
        track.predictor.reset_state(track.state)
        try:
            yield track
        finally:
            track.predictor.reset_state(track.state)
    session.reset()


def _pass(track, out: np.ndarray, start: int, end: int, reverse: bool, order: list[int]) -> None:
    """``propagate_in_video`` from ``start`` to ``end`` (inclusive); masks OR-ed into ``out``."""
    span = abs(end - start)
    track.features.plan_pass(min(start, end), max(start, end), direction=-1 if reverse else 1)
    for k, _, logits in track.predictor.propagate_in_video(
        track.state, start_frame_idx=start, max_frame_num_to_track=span, reverse=reverse
    ):
        out[k] |= (logits[0, 0] > 0).cpu().numpy()
        order.append(int(k))


def shen_stack_order(video: tuple[int, int], anchor: int) -> list[int]:
    """The slices in the order the reference stacks them: the forward pass (prompt .. end), then the
    reverse pass (prompt - 1 down to the start); ``np.stack([video_segments[k] for k in video_segments])``."""
    lo, hi = video
    return list(range(anchor, hi + 1)) + list(range(anchor - 1, lo - 1, -1))


def shen(session, gt: np.ndarray, video: tuple[int, int], anchor: int, clicks: int = 0):
    """One Shen run on one state. ``clicks=0``: the ground-truth mask of ``anchor`` (segment_any_image.py);
    N: N rounds of ``perform_iteration`` (segment_any_image_with_clicks.py). Returns (mask, steps, order)
    or raises ``ValueError`` when no click could be placed (the caller reports a skip)."""
    lo, hi = video
    mask = np.zeros(gt.shape, dtype=np.uint8)
    steps: list[dict] = []
    order: list[int] = []
    with _reference_state(session) as track:
        track.features.plan_pass(anchor, anchor)
        if clicks == 0:
            track.predictor.add_new_mask(track.state, frame_idx=anchor, obj_id=OBJ_ID, mask=gt[anchor].astype(bool))
            steps.append({"k": anchor, "verb": "add_new_mask", "kind": "mask", "source": "ground truth of slice k"})
        else:
            pred = np.zeros(gt.shape[1:], dtype=bool)
            points: list[list[int]] = []
            labels: list[int] = []
            for r in range(clicks):
                click = P.shen_click(gt[anchor], pred)
                if click is None:  # perform_iteration returns without adding a point
                    continue
                xy, label, region, dist = click
                points.append([int(xy[0]), int(xy[1])])
                labels.append(label)
                _, _, logits = track.predictor.add_new_points_or_box(
                    track.state, frame_idx=anchor, obj_id=OBJ_ID, points=np.asarray(points, dtype=np.float32),
                    labels=np.asarray(labels, dtype=np.int32),
                )
                pred = (logits[0, 0] > 0).cpu().numpy()
                steps.append({"k": anchor, "verb": "add_new_points", "kind": "points", "points": [list(p) for p in points],
                              "labels": list(labels), "round": r + 1, "state": "one state across rounds",
                              "click": {"xy": list(xy), "label": label, "region": region, "distance": round(dist, 4)}})
            if not steps:
                raise ValueError(f"no click: no error region on slice {anchor} is thicker than {P.SHEN_MIN_DISTANCE} px")
        _pass(track, mask, anchor, hi, False, order)
        if anchor - 1 >= lo:
            _pass(track, mask, anchor - 1, lo, True, order)
    steps.append({"verb": "propagate", "range": [anchor, hi], "direction": "forward"})
    if anchor - 1 >= lo:
        steps.append({"verb": "propagate", "range": [lo, anchor - 1], "direction": "reverse"})
    return mask, steps, order


def recist(session, shape: tuple[int, ...], box: tuple[int, int, int, int], k: int):
    """MedSAM2's RECIST pipeline on one state: returns (mask, steps, 2D mask from the box)."""
    mask = np.zeros(shape, dtype=np.uint8)
    order: list[int] = []
    with _reference_state(session) as track:
        track.features.plan_pass(k, k)
        _, _, logits = track.predictor.add_new_points_or_box(
            track.state, frame_idx=k, obj_id=OBJ_ID, box=np.asarray(box, dtype=np.float32))
        mask2d = (logits[0, 0] > 0).cpu().numpy()
        for reverse in (False, True):
            _, _, masks = track.predictor.add_new_mask(track.state, frame_idx=k, obj_id=OBJ_ID, mask=mask2d)
            mask[k] |= (masks[0, 0] > 0).cpu().numpy()
            _pass(track, mask, k, 0 if reverse else shape[0] - 1, reverse, order)
            track.predictor.reset_state(track.state)
    steps = [{"k": k, "verb": "add_new_points_or_box", "kind": "box", "box": [int(v) for v in box]},
             {"k": k, "verb": "add_new_mask", "kind": "mask", "source": "SAM 2's 2D answer to the box"},
             {"verb": "propagate", "range": [k, shape[0] - 1], "direction": "forward"},
             {"k": k, "verb": "add_new_mask", "kind": "mask", "reset": True, "source": "SAM 2's 2D answer to the box"},
             {"verb": "propagate", "range": [0, k], "direction": "reverse"}]
    return mask, steps, mask2d
