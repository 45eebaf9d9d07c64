"""Building SAM 2's video predictor and feeding it a volume from memory with cached features.

Everything here defers to the ``sam2`` package: its hydra configs, its ``build_sam2_video_predictor``
(which loads real checkpoints with ``torch.load(...)["model"]`` and a strict ``load_state_dict``),
its ``init_state`` and its propagation code. We add two things only:

* ``init_state_from_frames``: SAM 2's ``init_state`` reads frames through one function,
  ``load_video_frames``, which only knows JPEG folders and mp4 files. We let it read our in-memory
  frames by substituting that one function for the duration of the call, so every other field of
  the inference state is built by SAM 2 itself.
* ``VolumePredictor._get_image_feature``: SAM 2 keeps the backbone features of the last frame only,
  so every propagation pass re-encodes every slice. We serve features from a bounded LRU cache
  shared by all sessions on the same volume, computed in batches on a miss.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import nullcontext

import torch
from sam2.build_sam import build_sam2_video_predictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

from .checkpoints import ResolvedCheckpoint
from .sam2_adapter import become, frames_from_memory

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: the SAM 2 network was built from its config without a checkpoint. "
    "Its masks are meaningless; use this only for tests and benchmarks of the plumbing."
)


class FeatureCache:
    """Backbone features of (volume, frame) pairs, least recently used evicted past ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        # The position encoding depends only on the model's input size, not on the image: one copy.
        self.pos_enc: list[torch.Tensor] | None = None

    @staticmethod
    def _nbytes(fpn: list[torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in fpn)

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key, fpn: list[torch.Tensor]) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = fpn
            self._bytes += self._nbytes(fpn)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= self._nbytes(old)

    def drop_volume(self, volume_key) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == volume_key]:
                self._bytes -= self._nbytes(self._items.pop(key))

    def clear(self) -> None:
        """Forget every feature (the image encoder's weights changed)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.pos_enc = None

    def any_item(self) -> list[torch.Tensor] | None:
        """One cached frame's features (what a frame's features look like), or None when empty."""
        with self._lock:
            return next(iter(self._items.values()), None)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


_pool = None


def _resize_pool():
    """Threads that make the next batch's resized slices (PIL releases the GIL while it resizes)."""
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sam2-frames")
    return _pool


class VolumeFeatures:
    """The feature source of one (volume, preset): SAM 2's ``_get_image_feature`` asks it per frame."""

    def __init__(self, model: SAM2VideoPredictor, frames, volume_key, cache: FeatureCache, batch_size: int = 1):
        self.model = model
        self.frames = frames
        self.volume_key = volume_key
        self.cache = cache
        self.batch_size = max(1, int(batch_size))
        self.direction = 1
        self.bounds = (0, len(frames) - 1)
        self.frames_encoded = 0
        self._ahead = None  # (indices, future of their resized uint8 slices): the next batch, made early

    def encode_counter(self) -> Callable[[], int]:
        """How many slices this volume encodes from now on: ``encoded = features.encode_counter()``, then
        ``encoded()``. The count itself is kept here only; propagations and requests read it this way."""
        start = self.frames_encoded
        return lambda: self.frames_encoded - start

    def plan_pass(self, lo: int, hi: int, direction: int = 1) -> None:
        """The slices the next pass will ask for, in which order: a miss then encodes (and prefetches) the
        pass's next slices with it. SAM 2 asks frame by frame and cannot say so itself."""
        self.bounds = (lo, hi)
        self.direction = direction

    def _encode(self, indices: list[int]) -> None:
        device = self.model.device
        batch = self.frames.batch(indices, device, resized=self._prefetched(indices))
        if device.type == "cuda":
            self._prefetch_after(indices)  # the next batch's PIL resizes run while the GPU encodes this one
        with torch.inference_mode():
            out = self.model.forward_image(batch)
        self.frames_encoded += len(indices)
        if self.cache.pos_enc is None:
            # Contiguous whatever SAM 2 returns: its position encoding comes permuted on the first call of
            # a process and contiguous from its cache after, and a compiled memory attention would be
            # recompiled for the other layout (the values, all we use them for, are the same).
            self.cache.pos_enc = [p[:1].clone(memory_format=torch.contiguous_format) for p in out["vision_pos_enc"]]
        for n, k in enumerate(indices):
            fpn = [f[n : n + 1].clone() if len(indices) > 1 else f for f in out["backbone_fpn"]]
            self.cache.put((self.volume_key, k), fpn)

    def _prefetched(self, indices: list[int]):
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == tuple(indices):
            return ahead[1].result()
        return None

    def _prefetch_after(self, indices: list[int]) -> None:
        lo, hi = self.bounds
        nxt, k = [], indices[-1] + self.direction
        while len(nxt) < self.batch_size and lo <= k <= hi:
            if self.cache.get((self.volume_key, k)) is None:
                nxt.append(k)
            k += self.direction
        if nxt:
            self._ahead = (tuple(nxt), _resize_pool().submit(self.frames.resized, nxt))

    def get(self, frame_idx: int) -> dict:
        fpn = self.cache.get((self.volume_key, frame_idx))
        if fpn is None or self.cache.pos_enc is None:
            lo, hi = self.bounds
            indices = [frame_idx]
            k = frame_idx + self.direction
            while len(indices) < self.batch_size and lo <= k <= hi:
                if self.cache.get((self.volume_key, k)) is None:
                    indices.append(k)
                k += self.direction
            self._encode(indices)
            fpn = self.cache.get((self.volume_key, frame_idx))
            if fpn is None:  # the cache is smaller than one batch: fall back to this frame alone
                self._encode([frame_idx])
                fpn = self.cache.get((self.volume_key, frame_idx))
        return {"backbone_fpn": list(fpn), "vision_pos_enc": list(self.cache.pos_enc)}


class VolumePredictor(SAM2VideoPredictor):
    """SAM 2's video predictor whose image features come from a :class:`VolumeFeatures`."""

    _placeholder_image = torch.zeros(1, 3, 1, 1)  # SAM 2 returns the image alongside features; no caller uses it

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        features: VolumeFeatures | None = inference_state.get("volume_features")
        if features is None:
            # init_state's warm-up of frame 0: skipped, features are computed when first needed.
            return None
        inference_state["cached_features"] = {frame_idx: (self._placeholder_image, features.get(frame_idx))}
        return super()._get_image_feature(inference_state, frame_idx, batch_size)


def init_state_from_frames(
    predictor: VolumePredictor, frames, features: VolumeFeatures, height: int, width: int,
    offload_state_to_cpu: bool = False,
):
    """SAM 2's own ``init_state`` on in-memory frames (see the module docstring).

    Frames always stay on the CPU (they are made one at a time anyway); ``offload_state_to_cpu`` also
    keeps SAM 2's per-slice outputs (memory features, masks) in CPU memory, which bounds GPU memory on
    long volumes at a small cost per slice (SAM 2's own option)."""

    with frames_from_memory(frames, height, width):
        state = predictor.init_state(
            video_path="<in-memory volume>", offload_video_to_cpu=True, offload_state_to_cpu=offload_state_to_cpu
        )
    state["volume_features"] = features
    return state


def _memory_in_compute_dtype(module, args, kwargs):
    """SAM 2 stores memory features in bf16 to save space. When a frame's memory also holds object
    pointers (float32), ``torch.cat`` promotes it all back to float32; when it holds none (e.g. tracking
    towards a frame with no prompted slice behind it), the bf16 tensor reaches float32 linear layers and
    SAM 2 fails with "mat1 and mat2 must have the same dtype" unless bf16 autocast is on (its GPU demos).
    Casting to the position encoding's dtype gives the very values the promoting ``cat`` gives."""
    memory, memory_pos = kwargs.get("memory"), kwargs.get("memory_pos")
    if memory is not None and memory_pos is not None and memory.dtype != memory_pos.dtype:
        kwargs["memory"] = memory.to(memory_pos.dtype)
    return args, kwargs


def lazy_constants_as(model, inference: bool) -> None:
    """SAM 2 makes some constants lazily and keeps them (RoPE tables, sine position encodings): as
    inference-mode tensors when made under inference, which autograd refuses to save. Training wants them
    as normal tensors; serving wants them as inference tensors, since a compiled module (``--conf
    compile``) was traced with those and would be recompiled for the other kind. Same values either way."""
    with torch.inference_mode(inference):
        for m in model.modules():
            freqs = getattr(m, "freqs_cis", None)
            if isinstance(freqs, torch.Tensor) and freqs.is_inference() != inference:
                m.freqs_cis = freqs.clone()
            cache = getattr(m, "cache", None)
            if isinstance(cache, dict):
                for k, v in list(cache.items()):
                    if isinstance(v, torch.Tensor) and v.is_inference() != inference:
                        cache[k] = v.clone()


def build_predictor(checkpoint: ResolvedCheckpoint, device: str = "cpu", image_size: int | None = None):
    """Build the SAM 2 video predictor for a resolved checkpoint (or random weights, loudly)."""
    # the registry entry's own overrides first (MedSAM2's 512 px config), then the server's image_size
    overrides = list(checkpoint.overrides) + ([f"++model.image_size={int(image_size)}"] if image_size else [])
    if checkpoint.random_weights:
        logger.warning(RANDOM_WEIGHTS_WARNING)
    predictor = build_sam2_video_predictor(
        checkpoint.config, ckpt_path=checkpoint.path, device=device, hydra_overrides_extra=overrides
    )
    # Swap in our subclass; it adds no state, it only changes where image features come from.
    become(predictor, VolumePredictor)
    # The hole-filling post-processing needs SAM 2's CUDA extension, which CPU installs do not build;
    # without it SAM 2 logs a warning on every frame. Fill nothing, so CPU and GPU behave the same.
    predictor.fill_hole_area = 0
    predictor.memory_attention.register_forward_pre_hook(_memory_in_compute_dtype, with_kwargs=True)
    return predictor


def autocast_for(device: str, dtype: str | None):
    """bf16 autocast on CUDA (as SAM 2's own demos run it); plain float32 elsewhere."""
    if dtype in (None, "float32", "fp32") or not str(device).startswith("cuda"):
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if dtype in ("bfloat16", "bf16") else torch.float16)
