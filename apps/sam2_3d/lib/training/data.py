"""Training data: the datastore's final labels, split by image, and clips sampled around their objects.

A clip is ``clip_length`` consecutive slices starting on a slice that holds the object, going up or down
the volume (SAM 2 tracks either way), with a prompt on its first slice sampled as SAM 2's training samples
it, with sam2's own samplers: the ground-truth mask, one click drawn uniformly inside the object
(``get_next_point(gt, None, "uniform")``), or the object's box with SAM's corner noise (``sample_box_points``:
up to 10 % of the box size, at most 20 px). Corrective clicks from the error follow in the forward
(``forward.video_forward``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lib.common import VOLUME_EXTENSIONS, strip_extension
from lib.engine import intensity
from lib.engine.frames import frame_tensor
from lib.engine.geometry import read_image, read_label_on, volume_array

PROMPT_KINDS = ("mask", "click", "box")

logger = logging.getLogger(__name__)


@dataclass
class LabelledVolume:
    image_id: str
    image_path: str
    label_path: str
    slices_u8: np.ndarray  # [K, J, I] after the intensity preset
    objects: dict[str, np.ndarray]  # object name -> bool [K, J, I]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.slices_u8.shape


def datastore_pairs(datastore) -> list[dict]:
    """The (image, final label) pairs of the datastore; a DICOMweb store downloads its SEGs first."""
    pairs = []
    for item in datastore.datalist():
        image, label = item.get("image"), item.get("label")
        if image and label and os.path.exists(image) and os.path.exists(label):
            pairs.append({"image_id": _image_id(image), "image": image, "label": label})
    return sorted(pairs, key=lambda p: p["image_id"])


def _image_id(path: str) -> str:
    return strip_extension(path, VOLUME_EXTENSIONS)


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            digest.update(name.encode())
        return digest.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split(pairs: list[dict], validation_split: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``validation_split`` of the images (at least one when there are two or more)."""
    if validation_split <= 0 or len(pairs) < 2:
        return list(pairs), []
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = min(len(pairs) - 1, max(1, int(round(validation_split * len(pairs)))))
    val = sorted((pairs[i] for i in order[:n_val]), key=lambda p: p["image_id"])
    train = sorted((pairs[i] for i in order[n_val:]), key=lambda p: p["image_id"])
    return train, val


def object_masks(label: np.ndarray, objects: str, min_voxels: int) -> dict[str, np.ndarray]:
    """``objects="any"``: everything labelled is one object; ``"each"``: one object per label value."""
    if objects == "any":
        found = {"any": label > 0}
    else:
        found = {str(int(v)): label == v for v in np.unique(label) if v != 0}
    return {k: m for k, m in found.items() if int(m.sum()) >= min_voxels}


def load_volume(pair: dict, preset: intensity.IntensityPreset, objects: str, min_voxels: int = 10) -> LabelledVolume:
    image = read_image(pair["image"])
    label = np.rint(read_label_on(pair["label"], image)).astype(np.int32)
    slices = intensity.to_uint8(volume_array(image), preset)
    return LabelledVolume(pair["image_id"], pair["image"], pair["label"], slices, object_masks(label, objects, min_voxels))


def usable_volumes(pairs: list[dict], preset: intensity.IntensityPreset, objects: str,
                   min_voxels: int = 10) -> tuple[list[tuple[dict, LabelledVolume]], list[dict]]:
    """Load every pair; one whose label cannot be used (unreadable, another grid, no object of
    ``min_voxels``) is skipped with a warning instead of failing the run. Returns (usable, skipped)."""
    usable, skipped = [], []
    for pair in pairs:
        try:
            volume = load_volume(pair, preset, objects, min_voxels)
            reason = None if volume.objects else f"no labelled object of at least {min_voxels} voxels (an empty label?)"
        except Exception as e:  # noqa: BLE001 - any unreadable or mismatched label: skip it, name why
            volume, reason = None, f"{type(e).__name__}: {e}"
        if reason:
            logger.warning(f"training: label of image {pair['image_id']!r} skipped: {reason}")
            skipped.append({"image_id": pair["image_id"], "reason": reason})  # no server path: clients see it
        else:
            usable.append((pair, volume))
    return usable, skipped


def simulated_prompt(kind: str, gt2d: np.ndarray, generator: torch.Generator | None = None) -> dict:
    """The first-slice prompt of a clip, drawn by sam2's samplers from the clip's own random stream."""
    from sam2.modeling.sam2_utils import get_next_point, sample_box_points

    if kind == "mask":
        return {"kind": "mask", "mask": gt2d}
    gt = torch.from_numpy(np.ascontiguousarray(gt2d, dtype=bool))[None, None]
    with torch.random.fork_rng(devices=[]):
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**62, (), generator=generator)))
        if kind == "box":
            corners, _ = sample_box_points(gt)
            (x0, y0), (x1, y1) = corners[0].tolist()
            return {"kind": "box", "box": (x0, y0, x1, y1)}
        xy, label = get_next_point(gt, None, "uniform")
    return {"kind": "click", "points": [tuple(xy[0, 0].tolist())], "labels": [int(label[0, 0])]}


def resize_masks(masks: np.ndarray, image_size: int) -> torch.Tensor:
    """bool ``[L, H, W]`` -> float ``[L, 1, 1, S, S]`` at SAM 2's input size (as ``add_new_mask`` resizes)."""
    t = torch.from_numpy(masks.astype(np.float32))[:, None]
    t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return (t >= 0.5).float()[:, None]


@dataclass
class Clip:
    index: int  # clip n of the run (= the step that trains on it)
    volume: int  # index into the training volumes
    object: str
    slices: list[int]
    prompt: dict
    gt: np.ndarray  # bool [L, J, I]


class ClipSampler:
    """Deterministic clips: clip ``n`` depends only on (seed, n), so a resumed run draws the same ones."""

    def __init__(self, volumes: list[LabelledVolume], clip_length: int, prompt_kinds: tuple[str, ...], seed: int):
        self.volumes = volumes
        self.clip_length = clip_length
        self.prompt_kinds = prompt_kinds
        self.seed = seed
        self.objects = [(v, name) for v, vol in enumerate(volumes) for name in vol.objects]
        if not self.objects:
            raise ValueError("no labelled object in the training images")

    def clip(self, n: int) -> Clip:
        rng = np.random.default_rng([self.seed, n])
        v, name = self.objects[int(rng.integers(len(self.objects)))]
        vol = self.volumes[v]
        mask = vol.objects[name]
        k_total = mask.shape[0]
        length = min(self.clip_length, k_total)
        present = np.flatnonzero(mask.reshape(k_total, -1).any(axis=1))
        start = int(present[int(rng.integers(len(present)))])
        direction = 1 if rng.random() < 0.5 else -1
        if not 0 <= start + direction * (length - 1) < k_total:
            direction = -direction  # no room this way: go the other way
            if not 0 <= start + direction * (length - 1) < k_total:  # nor that way: shorten
                length = max(start, k_total - 1 - start) + 1
                direction = 1 if start + length - 1 < k_total else -1
        slices = [start + direction * t for t in range(length)]
        kind = self.prompt_kinds[int(rng.integers(len(self.prompt_kinds)))]
        gt = mask[slices]
        return Clip(n, v, name, slices, simulated_prompt(kind, gt[0], self.generator(n, "prompt")), gt)

    def generator(self, n: int, purpose: str) -> torch.Generator:
        """A torch random stream of clip ``n`` (for sam2's samplers), the same on every run with this seed."""
        salt = {"prompt": 1, "corrections": 2}[purpose]
        return torch.Generator().manual_seed((self.seed * 1_000_003 + n) * 7 + salt)

    def frames(self, clip: Clip, image_size: int) -> torch.Tensor:
        vol = self.volumes[clip.volume]
        return torch.stack([frame_tensor(vol.slices_u8[k], image_size) for k in clip.slices])
