"""The engine: one SAM 2 network serving many volumes and sessions, with bounded caches.

Verbs, in the spirit of SAM 2's video predictor and nnInteractive's session:

* ``engine.open(image_path, client_id, preset, mode, axis)`` -> a :class:`Session` (one per image, axis,
  client and mode), whose labels, prompts, undo and propagation are described in :mod:`.session`;
* ``engine.close(...)``.

Volumes (uint8 frames per preset and axis), sessions and image features are held in bounded LRU
caches, sessions bounded both by count and by the bytes their SAM 2 states hold, so a server with many
images open keeps a bounded memory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict

import numpy as np

from . import intensity
from .frames import SliceFrames
from .geometry import SliceGeometry, read_image, volume_array
from .model import FeatureCache, autocast_for
from .prompts import SlicePrompt  # noqa: F401  (the engine's public names)
from .session import Session
from .tracking import Propagation  # noqa: F401

logger = logging.getLogger(__name__)
MAX_ENDED_REMEMBERED = 4096  # ended sessions whose client has not come back yet to be told


def _who(key) -> str:
    """A session key (image key, axis, client, mode) for the log."""
    return f"session of client {key[2] or '(none)'} on {os.path.basename(str(key[0][0]))} ({key[3]}, axis {key[1]})"


class Volume:
    """A volume's uint8 frames along one axis for one intensity preset, and the image it came from.

    ``array_kji`` is the voxel array indexed ``[k, j, i]``; ``image`` the SimpleITK image it views (None for
    an array with no file behind it: the benchmark's and training's in-memory volumes)."""

    def __init__(self, key, array_kji: np.ndarray, preset: intensity.IntensityPreset, image_size: int,
                 axis: str = "k", image=None):
        self.key = key
        self.image = image
        self.geometry = SliceGeometry.of_array(array_kji, axis)
        self.preset = intensity.resolve(preset, array_kji)
        # [frames, H, W] along the axis (a per-slice preset works per frame); the image is not modified.
        self.slices_u8 = intensity.to_uint8(self.geometry.to_frames(array_kji), self.preset)
        self.frames = SliceFrames(self.slices_u8, image_size)


def volume_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_mtime_ns, st.st_size)


class Sam2VolumeEngine:
    """One SAM 2 network serving many volumes and sessions, with bounded caches."""

    def __init__(
        self,
        predictor,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        max_sessions: int = 8,
        max_session_bytes: int = 4 << 30,
        max_volumes: int = 4,
        feature_cache_bytes: int = 2 << 30,
        feature_batch_size: int = 1,
        random_weights: bool = False,
        checkpoint_name: str = "",
        offload_state_above: int = 256,
        session_ttl_s: float = 24 * 3600,
    ):
        self.predictor = predictor
        self.device = device
        self.dtype = dtype
        self.max_sessions = max_sessions
        self.max_session_bytes = int(max_session_bytes)  # SAM 2 states
        self.max_record_bytes = int(max_session_bytes)  # the sessions' prompts and histories
        self.sessions_evicted = 0  # SAM 2 states dropped to stay within the bounds (their sessions go on)
        self.sessions_ended = 0
        self.state_generation = 0  # SAM 2 states of an older generation are rebuilt (see drop_states)
        self.session_ttl_s = float(session_ttl_s)
        self._ended: OrderedDict = OrderedDict()  # session key -> why it ended, said once by its next answer
        self.max_volumes = max_volumes
        self.feature_cache = FeatureCache(feature_cache_bytes)
        self.feature_batch_size = feature_batch_size
        self.random_weights = random_weights
        self.checkpoint_name = checkpoint_name
        # On a GPU, volumes with more slices than this keep SAM 2's per-slice outputs in CPU memory.
        self.offload_state_above = offload_state_above
        self.compiled = None  # ``--conf compile true``'s CompiledTracking (lib/engine/compiled.py)
        self.weights_manager = None  # the fine-tuned versions it follows (lib/engine/weights.py: attach)
        self.lock = threading.RLock()  # one network: requests take turns on it
        self._volumes: OrderedDict = OrderedDict()
        self._sessions: OrderedDict = OrderedDict()

    @property
    def image_size(self) -> int:
        return self.predictor.image_size

    def autocast(self):
        return autocast_for(self.device, self.dtype)

    def volume(self, image_path: str, preset: intensity.IntensityPreset, axis: str = "k") -> Volume:
        key = volume_key(image_path)

        def make():
            image = read_image(image_path)
            return Volume(key + (preset.key, axis), volume_array(image), preset, self.image_size, axis, image)

        return self._volume((key, preset, axis), make)

    def volume_of_array(self, name: str, array_kji: np.ndarray, preset: intensity.IntensityPreset,
                        axis: str = "k") -> Volume:
        """A volume held in memory only (no file), known by ``name``: same frames, features and sessions
        as a file's. The caller keeps ``array_kji`` unchanged while the volume is in use."""
        key = ("<array>", name, array_kji.shape, str(array_kji.dtype))
        return self._volume((key, preset, axis),
                            lambda: Volume(key + (preset.key, axis), array_kji, preset, self.image_size, axis))

    def _volume(self, cache_key, make) -> Volume:
        """The cached volume of ``cache_key``, made by ``make()`` on a miss; least recently used evicted."""
        with self.lock:
            vol = self._volumes.get(cache_key)
            if vol is None:
                vol = self._volumes[cache_key] = make()
                while len(self._volumes) > self.max_volumes:
                    _, old = self._volumes.popitem(last=False)
                    self._forget_volume(old)
            self._volumes.move_to_end(cache_key)
            return vol

    def open(self, image_path: str, client_id: str = "", preset=None, mode: str = "3d", axis: str = "k") -> Session:
        preset = preset or intensity.IntensityPreset("auto")
        return self._session(self.volume(image_path, preset, axis), client_id, mode)

    def open_array(self, name: str, array_kji: np.ndarray, client_id: str = "", preset=None, mode: str = "3d",
                   axis: str = "k") -> Session:
        """:meth:`open` for an in-memory ``[k, j, i]`` array (no SimpleITK needed anywhere on this path)."""
        preset = preset or intensity.IntensityPreset("auto")
        return self._session(self.volume_of_array(name, array_kji, preset, axis), client_id, mode)

    def _session(self, vol: Volume, client_id: str, mode: str) -> Session:
        """The client's session on the image along the volume's axis, whatever the preset: prompts are in
        frame pixels, so another preset (or the volume read again after it left the cache) only means
        rebuilding the SAM 2 states from the prompts."""
        with self.lock:
            self._expire()
            key = (vol.key[:-2], vol.geometry.axis, client_id or "", mode)
            session = self._sessions.get(key)
            if session is None:
                session = Session(self, vol, client_id, mode)
                session.restarted = self._ended.pop(key, None)
                self._sessions[key] = session
            session.last_used = time.monotonic()
            self._sessions.move_to_end(key)
            self._evict(keep=key)
        if session.volume is not vol:
            # under the session's own lock (a request of the same client may hold it), not the engine's
            with session.lock:
                if session.volume is not vol:
                    why = ("its volume had left the cache (max_volumes)" if session.volume is None else
                           f"the preset changed from {session.volume.preset.key} to {vol.preset.key}"
                           if session.volume.preset.key != vol.preset.key else "its volume was read again")
                    session.attach(vol)
                    logger.info(f"{_who(key)}: SAM 2 state rebuilt from its prompts ({why})")
        return session

    def trim(self, keep: Session | None = None) -> int:
        """Drop least recently used SAM 2 states while they hold more than ``max_session_bytes``."""
        with self.lock:
            keep_key = next((k for k, s in self._sessions.items() if s is keep), None)
            return self._evict(keep=keep_key)

    def _evict(self, keep=None) -> int:
        """Two bounds. SAM 2 states (count ``max_sessions``, bytes ``max_session_bytes``): the least
        recently used are dropped, their sessions go on and rebuild from their prompts. Sessions
        themselves (prompts and history, mask prompts included): ended, least recently used first, only
        when they alone exceed ``max_record_bytes`` (the same ``max_session_gb``)."""
        evicted = 0
        sizes = {k: s.nbytes() for k, s in self._sessions.items() if s.has_state}
        for key in list(sizes):
            if len(sizes) <= 1 or (len(sizes) <= self.max_sessions and sum(sizes.values()) <= self.max_session_bytes):
                break
            if key != keep and self._sessions[key].drop_state():
                logger.warning(
                    f"{_who(key)}: SAM 2 state dropped to stay within max_sessions={self.max_sessions} / "
                    f"max_session_bytes={self.max_session_bytes} (it held {sizes.pop(key) / 2**20:.1f} MiB); "
                    f"the session keeps its prompts and history, its next request rebuilds from them"
                )
                evicted += 1
        self.sessions_evicted += evicted
        records = {k: s.record_bytes() for k, s in self._sessions.items()}
        for key in list(records):
            if len(records) <= 1 or sum(records.values()) <= self.max_record_bytes:
                break
            if key != keep:
                records.pop(key)
                self._end(key, f"closed to stay within max_session_gb ({self.max_record_bytes} bytes of prompts)")
        return evicted

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._sessions.items() if now - s.last_used > self.session_ttl_s]:
            self._end(key, f"expired after {self.session_ttl_s / 3600:g} h without a request")

    def _end(self, key, why: str) -> None:
        self._sessions.pop(key)
        self._ended[key] = why
        while len(self._ended) > MAX_ENDED_REMEMBERED:
            self._ended.popitem(last=False)
        self.sessions_ended += 1
        logger.warning(f"{_who(key)} ended: {why}; its next request starts a new session (session_restarted)")

    def close(self, image_path: str | None = None, client_id: str | None = None,
              why: str = "closed by the server") -> int:
        """End sessions of an image and/or client; returns how many were ended."""
        with self.lock:
            real = os.path.realpath(image_path) if image_path else None
            doomed = [
                k for k in self._sessions
                if (real is None or k[0][0] == real) and (client_id is None or k[2] == client_id)
            ]
            for k in doomed:
                self._end(k, why)
            return len(doomed)

    def drop_states(self) -> int:
        """Drop every session's SAM 2 state (e.g. the weights changed); sessions rebuild from their prompts."""
        with self.lock:
            self.state_generation += 1  # a state made before (a busy session's) is rebuilt when next used
            return sum(s.drop_state() for s in self._sessions.values() if s.has_state)

    def clear(self) -> None:
        """Forget every volume, session and image feature: the next request starts as on a fresh server."""
        with self.lock:
            self._sessions.clear()
            self._ended.clear()
            self._volumes.clear()
            self.feature_cache.clear()

    def _forget_volume(self, vol: Volume) -> None:
        """A volume left the cache: its features go, and its sessions let go of it and of their SAM 2
        states (a session busy with a request keeps them until its next request)."""
        self.feature_cache.drop_volume(vol.key)
        for k, s in self._sessions.items():
            if s.volume is vol and s.drop_state(volume_too=True):
                logger.info(f"{_who(k)}: volume left the cache (max_volumes={self.max_volumes}); its next "
                            f"request reads it again and rebuilds the SAM 2 state from the session's prompts")

    def stats(self) -> dict:
        return {
            "volumes": len(self._volumes),
            "sessions": sum(s.has_state for s in self._sessions.values()),  # holding a SAM 2 state
            "session_records": len(self._sessions),
            "session_bytes": sum(s.nbytes() for s in self._sessions.values()),
            "sessions_evicted": self.sessions_evicted,
            "sessions_ended": self.sessions_ended,
            "cached_feature_frames": len(self.feature_cache),
            "cached_feature_bytes": self.feature_cache.nbytes,
            "feature_cache_hits": self.feature_cache.hits,
            "feature_cache_misses": self.feature_cache.misses,
        }
