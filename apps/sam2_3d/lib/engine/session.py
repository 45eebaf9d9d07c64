"""A session: one client's work on one volume (and axis): several labels, each with its prompts (the
truth), their undo/redo history and a SAM 2 state derived from them, all sharing the volume's cached
image features.

Verbs (``label=None`` means the current label, ``session.label``):

* ``set_prompts(prompts)`` / ``update_prompts(points=, boxes=, masks=)`` -> the slices whose prompt changed;
* ``undo()`` / ``redo()`` -> the label's prompts before / after its last prompt action;
* ``propagate(lo, hi, auto_stop)`` -> a :class:`Propagation` of the label;
* ``segment_slice(k, prompt)`` -> a 2D mask of slice k from that prompt alone;
* ``combined(labels)`` -> one multi-value map of several labels' last results;
* ``reset(label)`` clears one label, ``reset()`` every label.

A request holds ``session.lock`` from start to end (the infer layer takes it), so two clients sharing a
session take turns and never see each other's half-applied prompts.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np

from .errors import PromptError
from .model import VolumeFeatures
from .prompts import PromptHistory, Prompts, SlicePrompt, with_tool
from .tracking import REJOIN_SLICES, LabelTrack, Propagation

DEFAULT_LABEL = "label"
MAX_2D_CACHE = 64
RECORD_BYTES = 64 << 10  # what a session's prompts and history count for, beyond their mask prompts


class Session:
    def __init__(self, engine, volume, client_id: str, mode: str):
        self.engine = engine
        self.volume = volume
        self.client_id = client_id
        self.mode = mode
        self.lock = threading.RLock()
        self.label: str = DEFAULT_LABEL
        self.features = VolumeFeatures(
            engine.predictor, volume.frames, volume.key, engine.feature_cache, engine.feature_batch_size
        )
        self._tracks: dict[str, LabelTrack] = {}
        self._prompts: dict[str, Prompts] = {}
        self._history: dict[str, PromptHistory] = {}
        self._cache_2d: dict[tuple, tuple[np.ndarray, float]] = {}
        self.locked: set[str] = set()  # labels whose voxels no other label's answer takes
        self.restarted: str | None = None  # why this client's previous session ended (its next answer says)
        self.last_used = time.monotonic()

    @property
    def geometry(self):
        return self.volume.geometry

    @property
    def labels(self) -> list[str]:
        """Labels in the order they were first used (their values in a combined map are 1, 2, ...)."""
        return list(self._prompts)

    def track(self, label: str | None = None) -> LabelTrack:
        label = label or self.label
        if label not in self._tracks or self._tracks[label].generation != self.engine.state_generation:
            self._tracks[label] = LabelTrack(self.engine, self.volume, self.features, label)
            self._prompts.setdefault(label, {})
            self._history.setdefault(label, PromptHistory())
        return self._tracks[label]

    def prompts(self, label: str | None = None) -> Prompts:
        return dict(self._prompts.get(label or self.label, {}))

    @property
    def last(self) -> Propagation | None:
        track = self._tracks.get(self.label)
        return track.last if track else None

    # -- SAM 2 states: a cache of the prompts -------------------------------------------------------
    def attach(self, volume) -> None:
        """Work on ``volume`` from now on (another preset, or the volume was read again after it left the
        engine's cache): the SAM 2 states are rebuilt from the prompts by the next propagation."""
        with self.lock:
            self.volume = volume
            self.features = VolumeFeatures(self.engine.predictor, volume.frames, volume.key,
                                           self.engine.feature_cache, self.engine.feature_batch_size)
            self._tracks.clear()
            self._cache_2d.clear()

    def drop_state(self, volume_too: bool = False) -> bool:
        """Let go of the SAM 2 states (and the volume) to free memory; prompts and history stay, and the
        next request rebuilds from them. False (nothing dropped) while a request holds the session."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            self._tracks.clear()
            self._cache_2d.clear()
            if volume_too:
                self.volume = self.features = None
            return True
        finally:
            self.lock.release()

    @property
    def has_state(self) -> bool:
        return bool(self._tracks or self._cache_2d)

    def take_restarted(self) -> str | None:
        why, self.restarted = self.restarted, None
        return why

    def record_bytes(self) -> int:
        """What the session's prompts and history hold (mask prompts shared between snapshots count once)."""
        masks = {}
        for label in self._prompts:
            history = self._history.get(label)
            for prompts in [self._prompts[label], *(history.snapshots() if history else [])]:
                for p in prompts.values():
                    if p.mask is not None:
                        masks[id(p.mask)] = p.mask.nbytes
        return RECORD_BYTES + sum(masks.values())

    # -- prompts -------------------------------------------------------------------------------
    @contextmanager
    def all_or_nothing(self):
        """A request's changes (current label, prompts, history, SAM 2 states) stand only if it succeeds:
        a refused request leaves the session exactly as it found it, its last answers included."""
        with self.lock:
            saved = (self.label, dict(self._prompts), {n: h.copy() for n, h in self._history.items()},
                     dict(self._tracks), set(self.locked))
            try:
                yield
            except BaseException:
                self.label, self._prompts, self._history, self._tracks, self.locked = saved
                raise

    def reset(self, label: str | None = None) -> None:
        """Clear one label (prompts, history, SAM 2 state) or, without a label, every label. The SAM 2
        states are dropped, not cleared in place, so that :meth:`all_or_nothing` can put them back."""
        with self.lock:
            if label is None:
                self.locked = set()
                self._tracks.clear()
                self._prompts.clear()
                self._history.clear()
                self._cache_2d.clear()
            elif label in self._prompts:
                # the label keeps its place (its value in a combined map), with nothing in it
                self._tracks.pop(label, None)
                self._prompts[label] = {}
                self._history[label] = PromptHistory()

    def set_prompts(self, prompts: Prompts, label: str | None = None) -> list[int]:
        """Make the label's prompts exactly ``prompts``; record the action for undo."""
        with self.lock:
            return self._replace(label or self.label, {k: p for k, p in sorted(prompts.items()) if not p.empty})

    def update_prompts(self, label: str | None = None, *, points=None, boxes=None, masks=None) -> list[int]:
        """Replace one or more tools' parts of the label's prompts (see :func:`prompts.with_tool`)."""
        with self.lock:
            label = label or self.label
            return self._replace(label, with_tool(self.prompts(label), points=points, boxes=boxes, masks=masks))

    def _replace(self, label: str, new: Prompts) -> list[int]:
        self.track(label)
        old = self._prompts[label]
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            self._history[label].record(old)
            self._prompts[label] = new
        return changed

    def undo(self, label: str | None = None) -> Prompts:
        with self.lock:
            label = label or self.label
            self.track(label)
            self._prompts[label] = self._history[label].undo(self._prompts[label])
            return self.prompts(label)

    def redo(self, label: str | None = None) -> Prompts:
        with self.lock:
            label = label or self.label
            self.track(label)
            self._prompts[label] = self._history[label].redo(self._prompts[label])
            return self.prompts(label)

    def history_depth(self, label: str | None = None) -> tuple[int, int]:
        history = self._history.get(label or self.label)
        return history.depth if history else (0, 0)

    # -- answers -------------------------------------------------------------------------------
    def propagate(
        self, lo: int, hi: int, auto_stop: int = 0, incremental: bool = True, rejoin: int = REJOIN_SLICES,
        label: str | None = None,
    ) -> Propagation:
        """Propagate the label's prompts through ``[lo, hi]`` (see :class:`tracking.LabelTrack`)."""
        with self.lock:
            label = label or self.label
            track = self.track(label)
            if not self._prompts[label]:  # its last prompt undone or removed: an empty label, a fresh state
                self._tracks.pop(label)
                return Propagation.empty(self.volume.slices_u8.shape, lo, hi)
            return track.propagate(self._prompts[label], lo, hi, auto_stop, incremental, rejoin)

    def segment_slice(self, k: int, prompt: SlicePrompt, label: str | None = None) -> tuple[np.ndarray, float]:
        """Answer a prompt on one slice without propagating (the 2D model): always slice k's own mask.
        Answers are remembered by (label, slice, prompt), so asking again costs nothing."""
        with self.lock:
            label = label or self.label
            track = self.track(label)
            self._replace(label, {k: prompt})
            key = (label, k, prompt)
            hit = self._cache_2d.get(key)
            if hit is None:
                hit = track.segment_slice(k, prompt)
                self._cache_2d[key] = hit
                while len(self._cache_2d) > MAX_2D_CACHE:
                    self._cache_2d.pop(next(iter(self._cache_2d)))
            mask, score = hit
            return mask.copy(), score

    def result(self, label: str | None = None) -> Propagation | None:
        """The label's last 3D answer (None before one, or after its SAM 2 state was dropped)."""
        track = self._tracks.get(label or self.label)
        return track.last if track else None

    def protected(self, label: str | None = None) -> np.ndarray | None:
        """The voxels of the locked labels other than ``label`` (their last answers), which no other
        label's answer may take; None when there are none."""
        label = label or self.label
        masks = [r.mask > 0 for n in sorted(self.locked) if n != label and (r := self.result(n)) is not None]
        return np.logical_or.reduce(masks) if masks else None

    def combined(self, labels: list[str] | None = None) -> tuple[np.ndarray, dict[str, int]]:
        """The last 3D results of several labels in one map (values 1, 2, ... in ``self.labels`` order).
        Where masks overlap, the voxel goes to a locked label, else to the label whose SAM 2 mask logit
        is higher there."""
        with self.lock:
            names = [n for n in (labels or self.labels) if n in self._tracks and self._tracks[n].last is not None]
            if not names:
                raise PromptError("no label of this session has a 3D result yet")
            values = {n: self.labels.index(n) + 1 for n in names}
            out = np.zeros(self.volume.slices_u8.shape, dtype=np.uint8)
            best = np.full(self.volume.slices_u8.shape[1:], -np.inf, dtype=np.float32)
            count = np.zeros(self.volume.slices_u8.shape, dtype=np.uint8)
            for n in names:
                count += self._tracks[n].last.mask > 0
            for k in np.flatnonzero((count > 1).reshape(count.shape[0], -1).any(axis=1)):
                best.fill(-np.inf)
                for n in names:
                    m = self._tracks[n].last.mask[k] > 0
                    logits = self._tracks[n].logits(k)
                    score = np.where(m, logits if logits is not None else 0.0, -np.inf)
                    if n in self.locked:  # a locked label keeps its voxels (logits are far below 1e6)
                        score = score + 1e6
                    win = score > best
                    out[k][win] = values[n]
                    best = np.maximum(best, score)
            single = count == 1
            for n in names:
                out[single & (self._tracks[n].last.mask > 0)] = values[n]
            return out, values

    def nbytes(self) -> int:
        """What this session holds beyond the shared volume and features."""
        return sum(t.nbytes() for t in self._tracks.values()) + sum(m.nbytes for m, _ in self._cache_2d.values())
