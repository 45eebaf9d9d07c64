"""SAM 2's inference state for one label of a session: a cache derived from the label's prompts.

``LabelTrack.propagate(prompts, lo, hi, auto_stop)`` makes the state agree with ``prompts`` and returns
the masks. Two paths:

* **full** (the oracle): ``reset_state``, add every slice prompt as SAM 2 adds prompts to a fresh video
  (each a conditioning frame segmented without memory), then SAM 2's own ``propagate_in_video`` forward
  from the first prompted slice and in reverse from it. Its answer is by construction what a fresh
  session given the same prompts computes. It runs whenever the incremental preconditions fail: a
  prompted slice lost its prompt, the slice range or auto-stop changed, the last pass raised, or the
  caller asks for it.
* **incremental**: only slices whose prompt is new or changed are re-segmented, each as a fresh
  conditioning frame exactly as the full path makes it, and the masks are re-propagated outward from
  them until the next prompted slice, the range end, an auto-stop, or the point where the new masks
  rejoin the previous ones. Slices it does not reach keep their previous result.

SAM 2 1.1.0 treats a click on an already tracked frame as a non-conditioning output that the next
pass recomputes from memory, i.e. ignores it; and it feeds such a frame's old mask to the new click.
So before re-adding a changed slice we make SAM 2 forget that frame (:func:`forget_frame`), and it
becomes what it would be in a fresh session: a conditioning frame segmented from its prompt alone.
That and the auto-stop's forgetting of a tail are the only places that touch SAM 2's state dicts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from . import confidence
from .errors import PromptError
from .model import init_state_from_frames
from .prompts import Prompts, SlicePrompt, check_label
from .sam2_adapter import masks_at_video_resolution
from .torch_thread import check_cancelled

OBJ_ID = 1  # one SAM 2 object per label state
# An incremental pass stops once its masks equal the previous result (IoU >= REJOIN_IOU) on this many
# consecutive slices: from there on the previous result stands.
REJOIN_SLICES = 2
REJOIN_IOU = 0.98
# A full pass brings masks and scores to the host this many slices at a time when it may auto-stop
# (without auto-stop: once per direction). On a CPU there is no device to wait for, and every slice
# tracked past a stop would be work thrown away: one at a time.
SYNC_EVERY = {"cuda": 8, "cpu": 1}


@dataclass
class _Pass:
    """What one propagation call builds up, from its start to its :class:`Propagation`."""

    mask: np.ndarray
    scores: dict[int, float]
    stopped: dict[str, int | None]
    encoded: Callable[[], int]  # the slices the volume's features encoded since the call began
    spans: list[tuple[int, int]] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)
    areas: dict[int, tuple[int, int]] = field(default_factory=dict)  # see Propagation.areas


@dataclass
class Propagation:
    mask: np.ndarray  # uint8 [frames, H, W], 1 inside (frames along the session's axis)
    prompted_slices: list[int]
    slice_range: tuple[int, int]  # the requested [lo, hi]
    processed_range: tuple[int, int] | None  # the slices actually segmented
    scores: dict[int, float]  # SAM 2 object score (sigmoid of its logit) per processed slice
    stopped_early: dict[str, int | None]  # direction -> slice where auto-stop ended it, None if not
    frames_encoded: int
    seconds: float
    # Slice spans [a, b] this call actually ran SAM 2's propagation over (an incremental call runs only
    # outward from the changed slices); "full", "incremental", "cached" (nothing changed) or "2d".
    propagated_spans: list[tuple[int, int]] = field(default_factory=list)
    how: str = "full"
    # per processed slice, the mask's pixels with logit > +1 and > -1: its stability score's terms
    # (lib/engine/confidence.py), a confidence that does not saturate after fine-tuning as ``scores`` do
    areas: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def stability(self) -> float | None:
        return confidence.object_stability(self.areas)

    @classmethod
    def empty(cls, shape, lo: int, hi: int) -> "Propagation":
        """The answer to a label with no prompt left (its last one undone or removed): nothing."""
        return cls(np.zeros(shape, dtype=np.uint8), [], (lo, hi), None, {}, {"forward": None, "reverse": None},
                   0, 0.0, [], "empty")


def _same_mask(a: np.ndarray, b: np.ndarray) -> bool:
    union = np.count_nonzero(a | b)
    return union == 0 or np.count_nonzero(a & b) / union >= REJOIN_IOU


def forget_frame(predictor, state, k: int) -> None:
    """Make SAM 2 forget everything about frame k for the object, as if it had never been prompted or
    tracked; the next prompt there is then an initial conditioning frame, as in a fresh session.
    ``clear_all_prompts_in_frame`` (SAM 2's API) drops the inputs and downgrades the output; the two pops
    drop the downgraded output and the 'tracked' mark, which SAM 2 has no public call for."""
    if OBJ_ID not in state["obj_id_to_idx"]:
        return
    predictor.clear_all_prompts_in_frame(state, k, OBJ_ID, need_output=False)
    obj_idx = state["obj_id_to_idx"][OBJ_ID]
    state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"].pop(k, None)
    state["frames_tracked_per_obj"][obj_idx].pop(k, None)


class LabelTrack:
    """One label's SAM 2 state, the prompts it reflects, and its last result."""

    def __init__(self, engine, volume, features, name: str):
        self.engine = engine
        self.volume = volume
        self.features = features
        self.name = name
        geo = volume.geometry
        self.state = init_state_from_frames(
            engine.predictor, volume.frames, features, geo.frame_height, geo.frame_width,
            offload_state_to_cpu=str(engine.device).startswith("cuda") and geo.num_frames > engine.offload_state_above,
        )
        self.generation = engine.state_generation  # made with the engine's weights of then
        self.applied: Prompts = {}  # the prompts SAM 2's state reflects
        self.last: Propagation | None = None
        self.last_3d: tuple[int, int, int] | None = None  # (lo, hi, auto_stop) that made ``last``
        self.valid = True  # False after an exception: the next pass rebuilds

    @property
    def predictor(self):
        return self.engine.predictor

    def clear(self) -> None:
        with torch.inference_mode():
            self.predictor.reset_state(self.state)
        self.applied = {}
        self.last = None
        self.last_3d = None
        self.valid = True

    # -- adding prompts ----------------------------------------------------------------------------
    def _add(self, k: int, prompt: SlicePrompt) -> torch.Tensor:
        """Add one slice's prompt as SAM 2 would in a fresh video; return its mask logits (video res)."""
        predictor = self.predictor
        self.features.plan_pass(k, k)
        masks = None
        if prompt.mask is not None:
            _, _, masks = predictor.add_new_mask(self.state, frame_idx=k, obj_id=OBJ_ID, mask=prompt.mask)
        if prompt.points or prompt.box is not None:
            points = np.asarray(prompt.points, dtype=np.float32).reshape(-1, 2)
            labels = np.asarray(prompt.labels, dtype=np.int32).reshape(-1)
            _, _, masks = predictor.add_new_points_or_box(
                self.state, frame_idx=k, obj_id=OBJ_ID,
                points=points if len(points) else None, labels=labels if len(labels) else None,
                box=np.asarray(prompt.box, dtype=np.float32) if prompt.box is not None else None,
                clear_old_points=True,
            )
        return masks[0, 0]

    def _rebuild_prompts(self, prompts: Prompts) -> None:
        self.predictor.reset_state(self.state)
        self.applied = {}
        for k, prompt in sorted(prompts.items()):
            self._add(k, prompt)
            self.applied[k] = prompt

    # -- 2D ------------------------------------------------------------------------------------
    def segment_slice(self, k: int, prompt: SlicePrompt) -> tuple[np.ndarray, float]:
        """SAM 2 on one slice from its prompt alone (a fresh conditioning frame), no propagation."""
        check_label({k: prompt})
        with self.engine.lock, torch.inference_mode(), self.engine.autocast():
            self.predictor.reset_state(self.state)
            self.applied = {}
            logits = self._add(k, prompt)
            self.applied = {k: prompt}
            self.last = self.last_3d = None
            return (logits > 0).cpu().numpy(), self._score(k)

    # -- 3D ------------------------------------------------------------------------------------
    def propagate(
        self, prompts: Prompts, lo: int, hi: int, auto_stop: int = 0, incremental: bool = True,
        rejoin: int = REJOIN_SLICES,
    ) -> Propagation:
        """Make SAM 2's state reflect ``prompts`` and propagate them through ``[lo, hi]``."""
        if not prompts:
            raise PromptError("no prompt given: add at least one foreground point, a box or a mask")
        outside = [k for k in prompts if not lo <= k <= hi]
        if outside:
            raise PromptError(f"prompted slice(s) {sorted(outside)} lie outside the slice range [{lo}, {hi}]")
        check_label(prompts)
        if auto_stop < 0:
            raise PromptError(f"auto_stop must be >= 0 (0 = never stop early), got {auto_stop}")
        changed = sorted(k for k in prompts if self.applied.get(k) != prompts[k])
        can_increment = (
            incremental and self.valid and self.last is not None and self.last_3d == (lo, hi, auto_stop)
            and all(k in prompts and prompts[k].adds_to(old) for k, old in self.applied.items())
        )  # a removed or moved prompt rebuilds: the answer is then the fresh session's, as undo promises
        self.valid = False  # until this pass completes
        with self.engine.lock, torch.inference_mode(), self.engine.autocast():
            if can_increment and not changed:
                result = replace(self.last, frames_encoded=0, seconds=0.0, propagated_spans=[], how="cached")
            elif can_increment:
                result = self._propagate_incremental(prompts, changed, lo, hi, auto_stop, rejoin)
            else:
                result = self._propagate_full(prompts, lo, hi, auto_stop)
        self.last = result
        self.last_3d = (lo, hi, auto_stop)
        self.valid = True
        return result

    def _propagate_full(self, prompts: Prompts, lo: int, hi: int, auto_stop: int) -> Propagation:
        """SAM 2's own recipe on a fresh state: add every prompt, then ``propagate_in_video`` forward from
        the first prompted slice and in reverse from it, bounded to the slice range. With ``auto_stop = n
        > 0`` a direction ends once the object is absent (:func:`_absent`) on ``n`` consecutive slices past
        the last prompted slice in that direction."""
        predictor = self.predictor
        done = _Pass(np.zeros(self.volume.slices_u8.shape, dtype=np.uint8), {}, {"forward": None, "reverse": None},
                     self.features.encode_counter())
        self._rebuild_prompts(prompts)
        prompted = sorted(prompts)
        anchor = prompted[0]
        for reverse in (False, True):
            last_prompt = prompted[0] if reverse else prompted[-1]
            span = (anchor - lo) if reverse else (hi - anchor)
            if span == 0 and reverse:
                continue  # SAM 2 would re-emit the anchor only
            self.features.plan_pass(lo, hi, direction=-1 if reverse else 1)
            # Masks and scores stay where SAM 2 made them and come to the host in groups: one copy per
            # SYNC_EVERY slices instead of two waits per slice, so the host can queue the next slice's work
            # while the device runs. Auto-stop reads them group by group; the slices SAM 2 tracked past the
            # stop are forgotten, which leaves the state and the answer a stop on the very slice would leave.
            pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
            absent = 0  # consecutive slices where the object is absent, in tracking order
            group = SYNC_EVERY.get(torch.device(self.engine.device).type, 1)
            for k, _, masks in predictor.propagate_in_video(
                self.state, start_frame_idx=anchor, max_frame_num_to_track=span, reverse=reverse
            ):
                check_cancelled()  # a gone client's propagation stops here (the state is rebuilt next time)
                pending.append((k, masks[0, 0] > 0, confidence.areas(masks[0])[0]))
                if auto_stop and len(pending) >= group:
                    stop, absent = self._land(pending, done, auto_stop, absent, last_prompt, reverse)
                    pending = []
                    if stop is not None:
                        done.stopped["reverse" if reverse else "forward"] = stop
                        break
            else:
                stop, absent = self._land(pending, done, auto_stop, absent, last_prompt, reverse)
                if stop is not None:
                    done.stopped["reverse" if reverse else "forward"] = stop
        done.spans = [(min(done.scores), max(done.scores))] if done.scores else []
        return self._finish(prompts, done, (lo, hi), "full")

    def _land(self, pending, done: _Pass, auto_stop: int, absent: int, last_prompt: int,
              reverse: bool) -> tuple[int | None, int]:
        """Bring a group of tracked slices to the host (one copy each for masks, areas and scores) into ``done`` and
        apply auto-stop to them in tracking order. Returns the slice it stops on (or None) and the run of
        absent slices so far. Slices after the stop were tracked ahead of it: SAM 2 forgets them and they are
        not part of the answer."""
        if not pending:
            return None, absent
        ks = [k for k, _, _ in pending]
        masks = torch.stack([m for _, m, _ in pending]).cpu().numpy()
        counts = torch.stack([a for _, _, a in pending]).cpu().tolist()
        probs = self._scores(ks)
        for n, k in enumerate(ks):
            done.mask[k] = masks[n]
            done.scores[k] = probs[n]
            done.areas[k] = tuple(counts[n])
            past_prompts = (k <= last_prompt) if reverse else (k >= last_prompt)
            absent = absent + 1 if _absent(probs[n], masks[n]) else 0
            if auto_stop and past_prompts and absent >= auto_stop:
                for j in ks[n + 1:]:
                    forget_frame(self.predictor, self.state, j)
                return k, absent
        return None, absent

    def _propagate_incremental(self, prompts, changed, lo, hi, auto_stop, rejoin) -> Propagation:
        """Re-segment the changed slices as fresh conditioning frames and re-propagate outward from each
        (see the module docstring); memory is SAM 2's: all prompted slices plus the slices just tracked."""
        predictor = self.predictor
        prev = self.last
        prompted = sorted(prompts)
        done = _Pass(prev.mask.copy(), dict(prev.scores), dict(prev.stopped_early), self.features.encode_counter(),
                     areas=dict(prev.areas))
        mask, scores, stopped, spans, areas = done.mask, done.scores, done.stopped, done.spans, done.areas
        for k in changed:
            forget_frame(predictor, self.state, k)
            self._add(k, prompts[k])
            self.applied[k] = prompts[k]
        for c in changed:
            below = max((p for p in prompted if p < c), default=None)
            above = min((p for p in prompted if p > c), default=None)
            for reverse in (False, True):
                if reverse:
                    outer, end = below is None, (lo if below is None else below + 1)
                else:
                    outer, end = above is None, (hi if above is None else above - 1)
                span = abs(end - c)
                if span == 0 and reverse:
                    continue  # the forward pass already emitted c itself
                direction = -1 if reverse else 1
                self.features.plan_pass(min(c, end), max(c, end), direction)
                agree_run = absent_run = 0
                reached = c
                for k, _, masks in predictor.propagate_in_video(
                    self.state, start_frame_idx=c, max_frame_num_to_track=span, reverse=reverse
                ):
                    check_cancelled()
                    new = (masks[0, 0] > 0).cpu().numpy()
                    areas[k] = tuple(confidence.areas(masks[0])[0].tolist())
                    old_known = k in prev.scores
                    agree = k != c and _same_mask(new, mask[k]) and (old_known or not new.any())
                    mask[k] = new
                    scores[k] = self._score(k)
                    reached = k
                    agree_run = agree_run + 1 if agree else 0
                    absent_run = absent_run + 1 if _absent(scores[k], new) else 0
                    if outer and auto_stop and absent_run >= auto_stop and k != c:
                        stopped["reverse" if reverse else "forward"] = k
                        self._forget_beyond(prompts, k, end, direction, mask, scores, areas)
                        break
                    if rejoin and agree_run >= rejoin:
                        break
                else:
                    if outer:
                        stopped["reverse" if reverse else "forward"] = None
                spans.append((min(c, reached), max(c, reached)))
        return self._finish(prompts, done, (lo, hi), "incremental")

    def _finish(self, prompts, done: _Pass, lo_hi: tuple[int, int], how: str) -> Propagation:
        for k, prompt in prompts.items():  # a mask prompt alone is the user's truth on its slice
            if prompt.mask is not None and not prompt.points and prompt.box is None:
                done.mask[k] = prompt.mask
        processed = (min(done.scores), max(done.scores)) if done.scores else None
        return Propagation(
            done.mask, sorted(prompts), lo_hi, processed, dict(sorted(done.scores.items())), done.stopped,
            done.encoded(), time.perf_counter() - done.t0, sorted(done.spans), how,
            dict(sorted(done.areas.items())),
        )

    def _forget_beyond(self, prompts, k: int, end: int, direction: int, mask: np.ndarray, scores: dict,
                       areas: dict) -> None:
        """Auto-stop ended a pass at k: slices past it lose their previous result and SAM 2 outputs, as a
        full propagation would never have reached them."""
        for j in range(k + direction, end + direction, direction):
            if j in prompts:
                break
            mask[j] = 0
            scores.pop(j, None)
            areas.pop(j, None)
            forget_frame(self.predictor, self.state, j)

    # -- reading SAM 2's outputs ---------------------------------------------------------------
    def _output(self, k: int):
        obj_idx = self.state["obj_id_to_idx"].get(OBJ_ID)
        if obj_idx is None:
            return None
        for store in (self.state["temp_output_dict_per_obj"][obj_idx], self.state["output_dict_per_obj"][obj_idx]):
            for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
                out = store[key].get(k)
                if out is not None:
                    return out
        return None

    def _score(self, k: int) -> float:
        """SAM 2's object presence probability on slice k (sigmoid of its object score logit)."""
        out = self._output(k)
        if out is None:
            return float("nan")
        return float(torch.sigmoid(out["object_score_logits"].float()).flatten()[0])

    def _scores(self, ks: list[int]) -> list[float]:
        """:meth:`_score` of several slices with one copy to the host (the same values)."""
        outs = [self._output(k) for k in ks]
        if any(out is None for out in outs):
            return [self._score(k) for k in ks]
        logits = [out["object_score_logits"].flatten()[:1] for out in outs]
        devices = {t.device for t in logits}
        if len(devices) > 1:  # offloaded and resident outputs mixed: gather on the CPU
            logits = [t.cpu() for t in logits]
        return torch.sigmoid(torch.cat(logits).float()).cpu().tolist()

    def logits(self, k: int) -> np.ndarray | None:
        """SAM 2's mask logits of slice k at the frame's resolution (None if SAM 2 holds no output)."""
        out = self._output(k)
        if out is None:
            return None
        with torch.inference_mode():
            video_res = masks_at_video_resolution(self.predictor, self.state, out["pred_masks"].to(self.state["device"]))
        return video_res[0, 0].float().cpu().numpy()

    def nbytes(self) -> int:
        """Bytes held by SAM 2's per-slice outputs and the last result (what a session costs)."""
        total = self.last.mask.nbytes if self.last is not None else 0
        seen = set()
        for per_obj in (self.state["output_dict_per_obj"], self.state["temp_output_dict_per_obj"]):
            for out in per_obj.values():
                for frames in out.values():
                    for frame_out in frames.values():
                        for value in _tensors(frame_out):
                            if id(value) not in seen:
                                seen.add(id(value))
                                total += value.numel() * value.element_size()
        return total


def _absent(score: float, mask: np.ndarray) -> bool:
    """Auto-stop's test of one tracked slice: SAM 2 scores the object absent, or its mask is empty. The
    empty mask matters after fine-tuning, when the object score saturates (0.995 on slices with nothing
    on them) while the masks still go empty where the object ends."""
    return score < 0.5 or not mask.any()


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
