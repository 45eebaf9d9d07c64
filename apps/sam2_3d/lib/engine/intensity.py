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


def preset_from_params(params: dict) -> IntensityPreset:
    """Read ``preset`` or ``window_center``/``window_width`` from request params."""
    wc, ww = params.get("window_center"), params.get("window_width")
    if wc is not None or ww is not None:
        try:
            wc, ww = float(wc), float(ww)
        except (TypeError, ValueError) as e:
            raise UnknownOption(
                f"window_center and window_width must both be numbers, got {wc!r} and {ww!r}"
            ) from e
        if ww <= 0:
            raise UnknownOption(f"window_width must be > 0, got {ww}")
        return IntensityPreset("window", wc, ww)
    name = params.get("preset") or "auto"
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


def to_uint8(array: np.ndarray, preset: IntensityPreset) -> np.ndarray:
    """Window ``array`` (any shape, frames first) to uint8 with the given preset."""
    preset = resolve(preset, array)
    data = np.asarray(array, dtype=np.float32)
    if preset.name == "none":
        return np.clip(data, 0, 255).astype(np.uint8)
    if preset.name == "slice_minmax":
        lo = data.min(axis=tuple(range(1, data.ndim)), keepdims=True)
        hi = data.max(axis=tuple(range(1, data.ndim)), keepdims=True)
    elif preset.name == "volume_minmax":
        lo, hi = data.min(), data.max()
    elif preset.name == "mr":
        lo, hi = np.percentile(data, [0.5, 99.5])
    else:
        center, width = (preset.center, preset.width) if preset.name == "window" else CT_WINDOWS[preset.name]
        lo, hi = center - width / 2.0, center + width / 2.0
    scale = np.where(np.asarray(hi - lo) > 0, 255.0 / np.maximum(np.asarray(hi - lo), 1e-12), 0.0)
    out = np.clip((data - lo) * scale, 0.0, 255.0)
    return np.rint(out).astype(np.uint8)
