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
    ):
        self.predictor = predictor
        self.device = device
        self.dtype = dtype
        self.max_sessions = max_sessions
        self.max_session_bytes = int(max_session_bytes)
        self.sessions_evicted = 0
        self.max_volumes = max_volumes
        self.feature_cache = FeatureCache(feature_cache_bytes)
        self.feature_batch_size = feature_batch_size
        self.random_weights = random_weights
        self.checkpoint_name = checkpoint_name
        # On a GPU, volumes with more slices than this keep SAM 2's per-slice outputs in CPU memory.
        self.offload_state_above = offload_state_above
        self.compiled: dict | None = None  # the warm-up figures of ``--conf compile true`` (lib/engine/compiled.py)
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
        with self.lock:
            key = (vol.key, client_id or "", mode)
            session = self._sessions.get(key)
            if session is None:
                session = Session(self, vol, client_id, mode)
                self._sessions[key] = session
                self._evict(keep=key)
            self._sessions.move_to_end(key)
            return session

    def trim(self, keep: Session | None = None) -> int:
        """Evict least recently used sessions while they hold more than ``max_session_bytes``."""
        with self.lock:
            keep_key = next((k for k, s in self._sessions.items() if s is keep), None)
            return self._evict(keep=keep_key)

    def _evict(self, keep=None) -> int:
        evicted = 0
        sizes = {k: s.nbytes() for k, s in self._sessions.items()}
        while len(self._sessions) > 1 and (
            len(self._sessions) > self.max_sessions or sum(sizes.values()) > self.max_session_bytes
        ):
            key = next(k for k in self._sessions if k != keep)
            self._sessions.pop(key)
            logger.warning(
                f"session of client {key[1] or '(none)'} on {os.path.basename(key[0][0])} closed to stay within "
                f"max_sessions={self.max_sessions} / max_session_bytes={self.max_session_bytes} "
                f"(it held {sizes.pop(key) / 2**20:.1f} MiB); its next request starts from its own prompts again"
            )
            evicted += 1
        self.sessions_evicted += evicted
        return evicted

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

    def clear(self) -> None:
        """Forget every volume, session and image feature: the next request starts as on a fresh server."""
        with self.lock:
            self._sessions.clear()
            self._volumes.clear()
            self.feature_cache.clear()

    def _forget_volume(self, vol: Volume) -> None:
        self.feature_cache.drop_volume(vol.key)
        for k in [k for k, s in self._sessions.items() if s.volume is vol]:
            del self._sessions[k]

    def stats(self) -> dict:
        return {
            "volumes": len(self._volumes),
            "sessions": len(self._sessions),
            "session_bytes": sum(s.nbytes() for s in self._sessions.values()),
            "sessions_evicted": self.sessions_evicted,
            "cached_feature_frames": len(self.feature_cache),
            "cached_feature_bytes": self.feature_cache.nbytes,
            "feature_cache_hits": self.feature_cache.hits,
            "feature_cache_misses": self.feature_cache.misses,
        }
