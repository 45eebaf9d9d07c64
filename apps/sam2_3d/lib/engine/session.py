"""A session: one client's work on one volume (and axis): several labels, each with its prompts (the
truth), their undo/redo history and a SAM 2 state derived from them, all sharing the volume's cached
image features.

Verbs (``label=None`` means the current label, ``session.label``, chosen by ``select(label)``):

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
from dataclasses import dataclass, field

import numpy as np

from .errors import PromptError
from .model import VolumeFeatures
from .prompts import PromptHistory, Prompts, SlicePrompt, with_tool
from .tracking import REJOIN_SLICES, LabelTrack, Propagation

DEFAULT_LABEL = "label"
MAX_2D_CACHE = 64
RECORD_BYTES = 64 << 10  # what a session's prompts and history count for, beyond their mask prompts


@dataclass
class LabelWork:
    """One label of a session, in one place: its prompts (the truth), their undo history, and the SAM 2
    state derived from them (None until needed, or after it was dropped: rebuilt from the prompts)."""

    prompts: Prompts = field(default_factory=dict)
    history: PromptHistory = field(default_factory=PromptHistory)
    track: LabelTrack | None = None

    def copy(self) -> "LabelWork":
        """What :meth:`Session.all_or_nothing` puts back (prompts are replaced, never changed in place)."""
        return LabelWork(self.prompts, self.history.copy(), self.track)


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
        self._labels: dict[str, LabelWork] = {}  # in the order the labels were first used
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
        return list(self._labels)

    def track(self, label: str | None = None) -> LabelTrack:
        label = label or self.label
        work = self._labels.setdefault(label, LabelWork())
        if work.track is None or work.track.generation != self.engine.state_generation:
            work.track = LabelTrack(self.engine, self.volume, self.features, label)
        return work.track

    def prompts(self, label: str | None = None) -> Prompts:
        work = self._labels.get(label or self.label)
        return dict(work.prompts) if work else {}

    @property
    def last(self) -> Propagation | None:
        return self.result(self.label)

    def _forget_states(self) -> None:
        for work in self._labels.values():
            work.track = None

    # -- SAM 2 states: a cache of the prompts -------------------------------------------------------
    def attach(self, volume) -> None:
        """Work on ``volume`` from now on (another preset, or the volume was read again after it left the
        engine's cache): the SAM 2 states are rebuilt from the prompts by the next propagation."""
        with self.lock:
            self.volume = volume
            self.features = VolumeFeatures(self.engine.predictor, volume.frames, volume.key,
                                           self.engine.feature_cache, self.engine.feature_batch_size)
            self._forget_states()
            self._cache_2d.clear()

    def drop_state(self, volume_too: bool = False) -> bool:
        """Let go of the SAM 2 states (and the volume) to free memory; prompts and history stay, and the
        next request rebuilds from them. False (nothing dropped) while a request holds the session."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            self._forget_states()
            self._cache_2d.clear()
            if volume_too:
                self.volume = self.features = None
            return True
        finally:
            self.lock.release()

    @property
    def has_state(self) -> bool:
        return any(work.track is not None for work in self._labels.values()) or bool(self._cache_2d)

    def take_restarted(self) -> str | None:
        why, self.restarted = self.restarted, None
        return why

    def record_bytes(self) -> int:
        """What the session's prompts and history hold (mask prompts shared between snapshots count once)."""
        masks = {}
        for work in self._labels.values():
            for prompts in [work.prompts, *work.history.snapshots()]:
                for p in prompts.values():
                    if p.mask is not None:
                        masks[id(p.mask)] = p.mask.nbytes
        return RECORD_BYTES + sum(masks.values())

    # -- prompts -------------------------------------------------------------------------------
    @contextmanager
    def all_or_nothing(self):
        """A request's changes (current label, prompts, history, SAM 2 states) stand only if it succeeds:
        a refused request leaves the session exactly as it found it, its last answers included. Yields
        the request's encode counter: ``encoded()`` is the slices it encoded so far (its prompted slices'
        and every propagation's)."""
        with self.lock:
            saved = (self.label, {n: work.copy() for n, work in self._labels.items()}, set(self.locked))
            try:
                yield self.features.encode_counter()
            except BaseException:
                self.label, self._labels, self.locked = saved
                raise

    def select(self, label: str) -> None:
        """Make ``label`` the current label: the one the verbs' ``label=None`` means from now on. A label
        is created by its first prompt, not here."""
        if not isinstance(label, str) or not label:
            raise PromptError(f"a label is named by a non-empty string, not {label!r}")
        self.label = label

    def reset(self, label: str | None = None) -> None:
        """Clear one label (prompts, history, SAM 2 state) or, without a label, every label. The SAM 2
        states are dropped, not cleared in place, so that :meth:`all_or_nothing` can put them back."""
        with self.lock:
            if label is None:
                self.locked = set()
                self._labels.clear()
                self._cache_2d.clear()
            elif label in self._labels:
                # the label keeps its place (its value in a combined map), with nothing in it
                self._labels[label] = LabelWork()

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
        work = self._labels[label]
        old = work.prompts
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            work.history.record(old)
            work.prompts = new
        return changed

    def undo(self, label: str | None = None) -> Prompts:
        with self.lock:
            label = label or self.label
            self.track(label)
            work = self._labels[label]
            work.prompts = work.history.undo(work.prompts)
            return self.prompts(label)

    def redo(self, label: str | None = None) -> Prompts:
        with self.lock:
            label = label or self.label
            self.track(label)
            work = self._labels[label]
            work.prompts = work.history.redo(work.prompts)
            return self.prompts(label)

    def history_depth(self, label: str | None = None) -> tuple[int, int]:
        work = self._labels.get(label or self.label)
        return work.history.depth if work else (0, 0)

    # -- answers -------------------------------------------------------------------------------
    def propagate(
        self, lo: int, hi: int, auto_stop: int = 0, incremental: bool = True, rejoin: int = REJOIN_SLICES,
        label: str | None = None,
    ) -> Propagation:
        """Propagate the label's prompts through ``[lo, hi]`` (see :class:`tracking.LabelTrack`)."""
        with self.lock:
            label = label or self.label
            track = self.track(label)
            work = self._labels[label]
            if not work.prompts:  # its last prompt undone or removed: an empty label, a fresh state
                work.track = None
                return Propagation.empty(self.volume.slices_u8.shape, lo, hi)
            return track.propagate(work.prompts, lo, hi, auto_stop, incremental, rejoin)

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
        work = self._labels.get(label or self.label)
        return work.track.last if work and work.track else None

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
            tracks = {n: work.track for n, work in self._labels.items() if work.track is not None}
            names = [n for n in (labels or self.labels) if n in tracks and tracks[n].last is not None]
            if not names:
                raise PromptError("no label of this session has a 3D result yet")
            values = {n: self.labels.index(n) + 1 for n in names}
            out = np.zeros(self.volume.slices_u8.shape, dtype=np.uint8)
            best = np.full(self.volume.slices_u8.shape[1:], -np.inf, dtype=np.float32)
            count = np.zeros(self.volume.slices_u8.shape, dtype=np.uint8)
            for n in names:
                count += tracks[n].last.mask > 0
            for k in np.flatnonzero((count > 1).reshape(count.shape[0], -1).any(axis=1)):
                best.fill(-np.inf)
                for n in names:
                    m = tracks[n].last.mask[k] > 0
                    logits = tracks[n].logits(k)
                    score = np.where(m, logits if logits is not None else 0.0, -np.inf)
                    if n in self.locked:  # a locked label keeps its voxels (logits are far below 1e6)
                        score = score + 1e6
                    win = score > best
                    out[k][win] = values[n]
                    best = np.maximum(best, score)
            single = count == 1
            for n in names:
                out[single & (tracks[n].last.mask > 0)] = values[n]
            return out, values

    def nbytes(self) -> int:
        """What this session holds beyond the shared volume and features."""
        tracks = sum(work.track.nbytes() for work in self._labels.values() if work.track is not None)
        return tracks + sum(m.nbytes for m, _ in self._cache_2d.values())
