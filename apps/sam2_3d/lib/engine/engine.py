"""The engine: owns SAM 2's state for every open volume and session, and propagates masks.

Verbs, in the spirit of SAM 2's video predictor and nnInteractive's session:

* ``engine.open(image_path, client_id, preset, mode)`` -> a :class:`Session` (one per image, client, mode);
* ``session.set_prompts({k: SlicePrompt})`` -> the slices whose prompts changed;
* ``session.propagate(lo, hi, auto_stop)`` -> a :class:`Propagation` (mask, scores, ranges);
* ``session.segment_slice(k)`` -> a 2D mask on one slice, no propagation;
* ``session.reset()``, ``engine.close(...)``.

Volumes (uint8 frames per preset), sessions and image features are all held in bounded LRU
caches, so a server with many images open keeps a bounded memory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk
import torch

from . import intensity
from .errors import PromptError
from .frames import SliceFrames
from .geometry import SliceGeometry, read_image, volume_array
from .model import FeatureCache, VolumeFeatures, autocast_for, init_state_from_frames

logger = logging.getLogger(__name__)

OBJ_ID = 1  # one object (the current label) per session; a label switch resets the session
# An incremental pass stops once its masks equal the previous result (IoU >= REJOIN_IOU) on this many
# consecutive slices: from there on the previous result stands.
REJOIN_SLICES = 2
REJOIN_IOU = 0.98


def _same_mask(a: np.ndarray, b: np.ndarray) -> bool:
    union = np.count_nonzero(a | b)
    return union == 0 or np.count_nonzero(a & b) / union >= REJOIN_IOU


@dataclass(frozen=True)
class SlicePrompt:
    """Everything the user gave on one slice, in frame pixel coordinates."""

    points: tuple[tuple[float, float], ...] = ()  # (x, y) = (i, j)
    labels: tuple[int, ...] = ()  # 1 positive, 0 negative
    box: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1)
    mask: np.ndarray | None = field(default=None, compare=False)  # bool [H, W]
    mask_digest: bytes | None = None  # what equality compares for masks

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "SlicePrompt":
        mask = np.ascontiguousarray(mask, dtype=bool)
        return cls(mask=mask, mask_digest=np.packbits(mask).tobytes())

    @property
    def kind(self) -> str:
        return "mask" if self.mask is not None else "box" if self.box is not None else "points"


@dataclass
class Propagation:
    mask: np.ndarray  # uint8 [K, J, I], 1 inside
    prompted_slices: list[int]
    slice_range: tuple[int, int]  # the requested [lo, hi]
    processed_range: tuple[int, int] | None  # the slices actually segmented
    scores: dict[int, float]  # SAM 2 object score (sigmoid of its logit) per processed slice
    stopped_early: dict[str, int | None]  # direction -> slice where auto-stop ended it, None if not
    frames_encoded: int
    seconds: float
    # Slice spans [a, b] this call actually ran SAM 2's propagation over (an incremental call runs only
    # outward from the changed slices); "full" or "incremental" or "cached" (nothing changed).
    propagated_spans: list[tuple[int, int]] = field(default_factory=list)
    how: str = "full"


class Volume:
    """A loaded image and its uint8 frames for one intensity preset."""

    def __init__(self, key, image: sitk.Image, preset: intensity.IntensityPreset, image_size: int):
        self.key = key
        self.image = image
        self.geometry = SliceGeometry.of(image)
        array = volume_array(image)
        self.preset = intensity.resolve(preset, array)
        self.slices_u8 = intensity.to_uint8(array, self.preset)  # [K, J, I]; the image is not modified
        self.frames = SliceFrames(self.slices_u8, image_size)


def volume_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_mtime_ns, st.st_size)


class Session:
    """SAM 2's inference state for one (volume, client, mode) plus the prompts and last result."""

    def __init__(self, engine: "Sam2VolumeEngine", volume: Volume, client_id: str, mode: str):
        self.engine = engine
        self.volume = volume
        self.client_id = client_id
        self.mode = mode
        self.label: str | None = None
        self.prompts: dict[int, SlicePrompt] = {}
        self.last: Propagation | None = None
        # What an incremental propagation needs: the (lo, hi, auto_stop) of the last 3D propagation
        # whose result is ``self.last``, and the slices whose prompts changed since then.
        self._last_3d: tuple[int, int, int] | None = None
        self._pending: set[int] = set()
        self.features = VolumeFeatures(
            engine.predictor, volume.frames, volume.key, engine.feature_cache, engine.feature_batch_size
        )
        geo = volume.geometry
        self.state = init_state_from_frames(
            engine.predictor, volume.frames, self.features, geo.frame_height, geo.frame_width,
            offload_state_to_cpu=str(engine.device).startswith("cuda") and geo.num_frames > engine.offload_state_above,
        )

    @property
    def geometry(self) -> SliceGeometry:
        return self.volume.geometry

    # -- prompts -------------------------------------------------------------------------------
    def reset(self) -> None:
        self.engine.predictor.reset_state(self.state)
        self.prompts.clear()
        self.last = None
        self._last_3d = None
        self._pending.clear()

    def set_prompts(self, prompts: dict[int, SlicePrompt]) -> list[int]:
        """Make SAM 2's prompts equal ``prompts``; return the slices whose prompts changed."""
        if not prompts:
            raise PromptError("no prompt given: add at least one foreground point, a box or a mask")
        predictor = self.engine.predictor
        changed = []
        with self.engine.lock, torch.inference_mode(), self.engine.autocast():
            for k in sorted(set(self.prompts) - set(prompts)):
                predictor.clear_all_prompts_in_frame(self.state, k, OBJ_ID, need_output=False)
                del self.prompts[k]
                changed.append(k)
                self._last_3d = None  # a removed prompt's influence is everywhere: re-propagate fully
            for k, prompt in sorted(prompts.items()):
                if self.prompts.get(k) == prompt:
                    continue
                self._add(k, prompt)
                self.prompts[k] = prompt
                changed.append(k)
                self._pending.add(k)
        return sorted(changed)

    def _add(self, k: int, prompt: SlicePrompt) -> np.ndarray:
        predictor = self.engine.predictor
        self.features.bounds = (k, k)
        if prompt.mask is not None:
            _, _, masks = predictor.add_new_mask(self.state, frame_idx=k, obj_id=OBJ_ID, mask=prompt.mask)
        else:
            if not any(prompt.labels) and prompt.box is None:
                raise PromptError(f"slice {k} has only background points; add a foreground point or a box")
            points = np.asarray(prompt.points, dtype=np.float32).reshape(-1, 2)
            labels = np.asarray(prompt.labels, dtype=np.int32).reshape(-1)
            _, _, masks = predictor.add_new_points_or_box(
                self.state,
                frame_idx=k,
                obj_id=OBJ_ID,
                points=points if len(points) else None,
                labels=labels if len(labels) else None,
                box=np.asarray(prompt.box, dtype=np.float32) if prompt.box is not None else None,
                clear_old_points=True,
            )
        return (masks[0, 0] > 0).cpu().numpy()

    # -- 2D ------------------------------------------------------------------------------------
    def segment_slice(self, k: int, prompt: SlicePrompt) -> tuple[np.ndarray, float]:
        """Answer prompts on one slice without propagating (the 2D model)."""
        with self.engine.lock, torch.inference_mode(), self.engine.autocast():
            if self.prompts.get(k) == prompt and self.last is not None:
                return self.last.mask[k].astype(bool), self.last.scores.get(k, float("nan"))
            t0 = time.perf_counter()
            encoded = self.features.frames_encoded
            mask = self._add(k, prompt)
            self.prompts[k] = prompt
            self._last_3d = None
            score = self._score(k)
            out = np.zeros(self.volume.slices_u8.shape, dtype=np.uint8)
            out[k] = mask
            self.last = Propagation(
                out, [k], (k, k), (k, k), {k: score}, {}, self.features.frames_encoded - encoded,
                time.perf_counter() - t0, [(k, k)], "2d",
            )
            return mask, score

    # -- 3D ------------------------------------------------------------------------------------
    def propagate(
        self, lo: int, hi: int, auto_stop: int = 0, incremental: bool = True, rejoin: int = REJOIN_SLICES
    ) -> Propagation:
        """Propagate the current prompts through ``[lo, hi]``; see :meth:`_propagate_full`.

        With ``incremental`` (the default), when the last result came from a 3D propagation over the
        same range and since then prompts were only added or changed (none removed), only the changed
        slices are propagated from, outward in both directions, each direction ending at the next
        prompted slice, at the range end, at an auto-stop, or once the new masks have agreed with the
        previous result on ``rejoin`` consecutive slices (``rejoin=0``: never). Everything else keeps
        the previous result, which is what makes a correction cost the slices it changes, not the
        volume. Nothing changed at all: the previous result is returned without running the network.
        ``incremental=False`` always runs the full recipe below.
        """
        prompted = sorted(self.prompts)
        outside = [k for k in prompted if not lo <= k <= hi]
        if outside:
            raise PromptError(f"prompted slice(s) {outside} lie outside the slice range [{lo}, {hi}]")
        if not prompted:
            raise PromptError("no prompt given: add at least one foreground point, a box or a mask")
        if incremental and self.last is not None and self._last_3d == (lo, hi, auto_stop):
            if not self._pending:
                self.last = replace(self.last, frames_encoded=0, seconds=0.0, propagated_spans=[], how="cached")
                return self.last
            return self._propagate_incremental(lo, hi, auto_stop, rejoin)
        return self._propagate_full(lo, hi, auto_stop)

    def _propagate_full(self, lo: int, hi: int, auto_stop: int = 0) -> Propagation:
        """Propagate the current prompts through ``[lo, hi]``, both directions from the first prompt.

        This is SAM 2's own recipe (``propagate_in_video`` forward from the earliest prompted frame,
        then in reverse from it), bounded to the slice range. Outputs of earlier passes are dropped
        first so that stale, unprompted frames never serve as memory. With ``auto_stop = n > 0`` a
        direction ends once SAM 2 scores the object absent on ``n`` consecutive slices past the last
        prompted slice in that direction.
        """
        prompted = sorted(self.prompts)  # validated by propagate()
        predictor = self.engine.predictor
        t0 = time.perf_counter()
        encoded = self.features.frames_encoded
        mask = np.zeros(self.volume.slices_u8.shape, dtype=np.uint8)
        scores: dict[int, float] = {}
        stopped: dict[str, int | None] = {"forward": None, "reverse": None}
        with self.engine.lock, torch.inference_mode(), self.engine.autocast():
            self._drop_unprompted_outputs()
            anchor = prompted[0]
            for reverse in (False, True):
                direction = -1 if reverse else 1
                last_prompt = prompted[0] if reverse else prompted[-1]
                span = (anchor - lo) if reverse else (hi - anchor)
                if span == 0 and reverse:
                    continue  # SAM 2 would re-emit the anchor only
                self.features.direction = direction
                self.features.bounds = (lo, hi)
                absent_run = 0
                for k, _, masks in predictor.propagate_in_video(
                    self.state, start_frame_idx=anchor, max_frame_num_to_track=span, reverse=reverse
                ):
                    mask[k] = (masks[0, 0] > 0).cpu().numpy()
                    scores[k] = self._score(k)
                    past_prompts = (k <= last_prompt) if reverse else (k >= last_prompt)
                    absent_run = absent_run + 1 if scores[k] < 0.5 else 0
                    if auto_stop and past_prompts and absent_run >= auto_stop:
                        stopped["reverse" if reverse else "forward"] = k
                        break
        spans = [(min(scores), max(scores))] if scores else []
        return self._finish(mask, (lo, hi, auto_stop), scores, stopped, encoded, t0, spans, "full")

    def _finish(self, mask, lo_hi_stop, scores, stopped, encoded, t0, spans, how) -> Propagation:
        """Record a 3D propagation's result as ``self.last``; what both the full and the incremental pass end with."""
        for k, prompt in self.prompts.items():  # a mask prompt is the user's truth on its slice
            if prompt.mask is not None:
                mask[k] = prompt.mask
        lo, hi, _ = lo_hi_stop
        processed = (min(scores), max(scores)) if scores else None
        self.last = Propagation(
            mask, sorted(self.prompts), (lo, hi), processed, dict(sorted(scores.items())), stopped,
            self.features.frames_encoded - encoded, time.perf_counter() - t0, sorted(spans), how,
        )
        self._last_3d = lo_hi_stop
        self._pending.clear()
        return self.last

    def _propagate_incremental(self, lo: int, hi: int, auto_stop: int, rejoin: int) -> Propagation:
        """Re-propagate outward from the slices whose prompts changed (see :meth:`propagate`).

        SAM 2's state still holds the previous pass's per-slice outputs, so a pass starting at a
        corrected slice uses, as SAM 2's own interactive refinement does, all prompted slices plus the
        slices just tracked as memory; slices it does not reach keep their previous masks and outputs.
        """
        predictor = self.engine.predictor
        prev = self.last
        prompted = sorted(self.prompts)
        t0 = time.perf_counter()
        encoded = self.features.frames_encoded
        mask = prev.mask.copy()
        scores = dict(prev.scores)
        stopped = dict(prev.stopped_early)
        spans: list[tuple[int, int]] = []
        with self.engine.lock, torch.inference_mode(), self.engine.autocast():
            for c in sorted(self._pending):
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
                    self.features.direction = direction
                    self.features.bounds = (min(c, end), max(c, end))
                    agree_run = absent_run = 0
                    reached = c
                    for k, _, masks in predictor.propagate_in_video(
                        self.state, start_frame_idx=c, max_frame_num_to_track=span, reverse=reverse
                    ):
                        new = (masks[0, 0] > 0).cpu().numpy()
                        old_known = k in prev.scores
                        agree = k != c and _same_mask(new, mask[k]) and (old_known or not new.any())
                        mask[k] = new
                        scores[k] = self._score(k)
                        reached = k
                        agree_run = agree_run + 1 if agree else 0
                        absent_run = absent_run + 1 if scores[k] < 0.5 else 0
                        if outer and auto_stop and absent_run >= auto_stop and k != c:
                            stopped["reverse" if reverse else "forward"] = k
                            self._forget_beyond(k, end, direction, mask, scores)
                            break
                        if rejoin and agree_run >= rejoin:
                            break
                    else:
                        if outer:
                            stopped["reverse" if reverse else "forward"] = None
                    spans.append((min(c, reached), max(c, reached)))
        return self._finish(mask, (lo, hi, auto_stop), scores, stopped, encoded, t0, spans, "incremental")

    def _forget_beyond(self, k: int, end: int, direction: int, mask: np.ndarray, scores: dict) -> None:
        """Auto-stop ended a pass at k: slices past it lose their previous result and SAM 2 outputs,
        as a full propagation would never have reached them."""
        obj_idx = self.state["obj_id_to_idx"][OBJ_ID]
        non_cond = self.state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"]
        tracked = self.state["frames_tracked_per_obj"][obj_idx]
        for j in range(k + direction, end + direction, direction):
            if j in self.prompts:
                break
            mask[j] = 0
            scores.pop(j, None)
            non_cond.pop(j, None)
            tracked.pop(j, None)

    def _drop_unprompted_outputs(self) -> None:
        for obj_idx, out in self.state["output_dict_per_obj"].items():
            out["non_cond_frame_outputs"].clear()
            self.state["frames_tracked_per_obj"][obj_idx].clear()

    def _score(self, k: int) -> float:
        """SAM 2's object presence probability on slice k (sigmoid of its object score logit)."""
        obj_idx = self.state["obj_id_to_idx"][OBJ_ID]
        for store in (
            self.state["temp_output_dict_per_obj"][obj_idx],
            self.state["output_dict_per_obj"][obj_idx],
        ):
            for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
                out = store[key].get(k)
                if out is not None:
                    return float(torch.sigmoid(out["object_score_logits"].float()).flatten()[0])
        return float("nan")


class Sam2VolumeEngine:
    """One SAM 2 network serving many volumes and sessions, with bounded caches."""

    def __init__(
        self,
        predictor,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        max_sessions: int = 8,
        max_volumes: int = 4,
        feature_cache_bytes: int = 2 << 30,
        feature_batch_size: int = 1,
        random_weights: bool = False,
        checkpoint_name: str = "",
        offload_state_above: int = 256,
    ):
        self.predictor = predictor
        self.device = device
        self.dtype = dtype
        self.max_sessions = max_sessions
        self.max_volumes = max_volumes
        self.feature_cache = FeatureCache(feature_cache_bytes)
        self.feature_batch_size = feature_batch_size
        self.random_weights = random_weights
        self.checkpoint_name = checkpoint_name
        # On a GPU, volumes with more slices than this keep SAM 2's per-slice outputs in CPU memory.
        self.offload_state_above = offload_state_above
        self.lock = threading.RLock()  # one network: requests take turns on it
        self._volumes: OrderedDict = OrderedDict()
        self._sessions: OrderedDict = OrderedDict()

    @property
    def image_size(self) -> int:
        return self.predictor.image_size

    def autocast(self):
        return autocast_for(self.device, self.dtype)

    def volume(self, image_path: str, preset: intensity.IntensityPreset) -> Volume:
        key = volume_key(image_path)
        with self.lock:
            cache_key = (key, preset)
            vol = self._volumes.get(cache_key)
            if vol is None:
                vol = Volume(key + (preset.key,), read_image(image_path), preset, self.image_size)
                self._volumes[cache_key] = vol
                while len(self._volumes) > self.max_volumes:
                    _, old = self._volumes.popitem(last=False)
                    self._forget_volume(old)
            self._volumes.move_to_end(cache_key)
            return vol

    def open(self, image_path: str, client_id: str = "", preset=None, mode: str = "3d") -> Session:
        preset = preset or intensity.IntensityPreset("auto")
        with self.lock:
            vol = self.volume(image_path, preset)
            key = (vol.key, client_id or "", mode)
            session = self._sessions.get(key)
            if session is None:
                session = Session(self, vol, client_id, mode)
                self._sessions[key] = session
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(key)
            return session

    def close(self, image_path: str | None = None, client_id: str | None = None) -> int:
        """Drop sessions of an image and/or client; returns how many were dropped."""
        with self.lock:
            real = os.path.realpath(image_path) if image_path else None
            doomed = [
                k for k in self._sessions
                if (real is None or k[0][0] == real) and (client_id is None or k[1] == client_id)
            ]
            for k in doomed:
                del self._sessions[k]
            return len(doomed)

    def _forget_volume(self, vol: Volume) -> None:
        self.feature_cache.drop_volume(vol.key)
        for k in [k for k, s in self._sessions.items() if s.volume is vol]:
            del self._sessions[k]

    def stats(self) -> dict:
        return {
            "volumes": len(self._volumes),
            "sessions": len(self._sessions),
            "cached_feature_frames": len(self.feature_cache),
            "cached_feature_bytes": self.feature_cache.nbytes,
            "feature_cache_hits": self.feature_cache.hits,
            "feature_cache_misses": self.feature_cache.misses,
        }
