"""Intensity presets: map a volume's voxel values to the 8-bit slices SAM 2 was trained on.

SAM 2 only ever saw 8-bit RGB video frames, so every preset ends in uint8. The input array is
never modified (all functions return new arrays).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UnknownOption

# (center, width) in Hounsfield units; the usual radiology windows.
CT_WINDOWS = {
    "soft_tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
    "mediastinum": (50.0, 350.0),
}
PRESETS = ["auto", *CT_WINDOWS, "mr", "volume_minmax", "slice_minmax", "none"]


@dataclass(frozen=True)
class IntensityPreset:
    """A named preset, or an explicit window; hashable so frames can be cached per preset."""

    name: str
    center: float | None = None
    width: float | None = None

    @property
    def key(self) -> str:
        return self.name if self.center is None else f"window({self.center:g},{self.width:g})"


def named_preset(name) -> IntensityPreset:
    """A preset by name (``auto`` when none is given); a custom window is built by the caller."""
    name = name or "auto"
    if isinstance(name, list):  # Slicer sends back config lists' first element, but be lenient
        name = name[0]
    name = str(name).lower()
    if name not in PRESETS:
        raise UnknownOption(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return IntensityPreset(name)


def looks_like_ct(array: np.ndarray) -> bool:
    """CT in Hounsfield units has air near -1000; MR and normalised data do not."""
    return array.dtype.kind in "iuf" and float(np.min(array)) <= -500.0 and float(np.max(array)) >= 100.0


def resolve(preset: IntensityPreset, array: np.ndarray) -> IntensityPreset:
    """Replace ``auto`` by the concrete preset chosen for this volume."""
    if preset.name != "auto":
        return preset
    return IntensityPreset("soft_tissue") if looks_like_ct(array) else IntensityPreset("mr")


def _window_bounds(array: np.ndarray, preset: IntensityPreset):
    """(lo, hi) of the linear map to 0..255; per-slice arrays for ``slice_minmax``."""
    if preset.name == "slice_minmax":
        axes = tuple(range(1, array.ndim))
        return array.min(axis=axes, keepdims=True).astype(np.float32), array.max(axis=axes, keepdims=True).astype(np.float32)
    if preset.name == "volume_minmax":
        return np.float32(array.min()), np.float32(array.max())
    if preset.name == "mr":
        lo, hi = np.percentile(array, [0.5, 99.5])
        return np.float32(lo), np.float32(hi)
    center, width = (preset.center, preset.width) if preset.name == "window" else CT_WINDOWS[preset.name]
    return np.float32(center - width / 2.0), np.float32(center + width / 2.0)


def to_uint8(array: np.ndarray, preset: IntensityPreset, chunk: int = 16) -> np.ndarray:
    """Window ``array`` (frames first) to uint8 with the given preset.

    Works ``chunk`` slices at a time, so a long volume never has float copies of itself in memory
    (a 512 x 512 x 600 CT would need 600 MB per float32 temporary)."""
    preset = resolve(preset, array)
    out = np.empty(array.shape, dtype=np.uint8)
    if preset.name == "none":
        for a in range(0, len(array), chunk):
            out[a : a + chunk] = np.clip(array[a : a + chunk], 0, 255)
        return out
    lo, hi = _window_bounds(array, preset)
    span = np.asarray(hi - lo, dtype=np.float32)
    scale = np.where(span > 0, np.float32(255.0) / np.maximum(span, np.float32(1e-12)), np.float32(0.0))
    for a in range(0, len(array), chunk):
        part = slice(a, a + chunk)
        lo_part = lo[part] if np.ndim(lo) else lo
        scale_part = scale[part] if np.ndim(scale) else scale
        data = np.asarray(array[part], dtype=np.float32)
        out[part] = np.rint(np.clip((data - lo_part) * scale_part, 0.0, 255.0))
    return out
