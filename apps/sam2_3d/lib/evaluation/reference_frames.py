"""The 8-bit frames the papers' reference code feeds its network, made as that code makes them.

Paper-exact mode (``--exact``) opens the engine on these arrays (engine preset ``none``: the uint8
values go to SAM 2's loader as they are) instead of the engine's own intensity presets.

* Shen et al. (SAM_2_Medical_3D ``nii_2_video.py``, ``process_slice``): ``img_data[:, :, i]`` of nibabel's
  ``[x, y, z]`` float64 array, per-slice min-max, ``* 255`` then ``astype(np.uint8)`` (truncation, not
  rounding), ``Image.fromarray(...).save("NNNNN.jpg")``: PIL's JPEG encoder at its default quality (75),
  greyscale; SAM 2's loader decodes it again. The frame's rows run along the file's first voxel axis:
  our ``[k, j, i]`` slice transposed.
* Gutiérrez et al. (i3uex/sam v1.1.4 ``tools/image_slice.py``, ``ImageSlice.__process_points``): with
  ``--apply_windowing`` the slice is clipped to ``level ± width // 2`` (level -650, width 1500), then min-max
  over the slice ``* 255`` and ``astype(np.uint8)`` (truncation); no file round trip.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PIL_DEFAULT_JPEG_QUALITY = 75  # what Image.save(..., "JPEG") uses when no quality is given
GUTIERREZ_WINDOW = (-650, 1500)  # ImageSlice.__window_level, __window_width


def _minmax_truncated(slice_f64: np.ndarray) -> np.ndarray:
    """``(x - min) / (max - min) * 255`` in float64, then ``astype(np.uint8)`` (truncation). A constant
    slice divides 0 by 0 in the reference (NaN, whose uint8 cast is platform-defined): here 0."""
    lo, hi = float(slice_f64.min()), float(slice_f64.max())
    if hi <= lo:
        return np.zeros(slice_f64.shape, dtype=np.uint8)
    return ((slice_f64 - lo) / (hi - lo) * 255).astype(np.uint8)


def jpeg_round_trip(slice_u8: np.ndarray, quality: int | None = None) -> np.ndarray:
    """A greyscale uint8 slice written as JPEG by PIL and read back (what SAM 2's loader then sees).
    ``quality=None``: PIL's default, as the reference's ``.save(path)`` without options."""
    buf = io.BytesIO()
    options = {} if quality is None else {"quality": int(quality)}
    Image.fromarray(np.ascontiguousarray(slice_u8), mode="L").save(buf, format="JPEG", **options)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("L"))


def shen_frames(image_kji: np.ndarray, jpeg: bool = True) -> np.ndarray:
    """Every slice as ``nii_2_video.py`` writes it: ``uint8 [K, I, J]`` (transposed), JPEG round trip."""
    out = np.empty((image_kji.shape[0], image_kji.shape[2], image_kji.shape[1]), dtype=np.uint8)
    for k in range(image_kji.shape[0]):
        frame = _minmax_truncated(np.asarray(image_kji[k], dtype=np.float64).T)
        out[k] = jpeg_round_trip(frame) if jpeg else frame
    return out


def gutierrez_frames(image_kji: np.ndarray, windowing: bool = True) -> np.ndarray:
    """Every slice as ``ImageSlice.__process_points`` makes it (``uint8 [K, J, I]``)."""
    level, width = GUTIERREZ_WINDOW
    out = np.empty(image_kji.shape, dtype=np.uint8)
    for k in range(image_kji.shape[0]):
        s = np.asarray(image_kji[k], dtype=np.float64)
        if windowing:
            s = s.clip(level - width // 2, level + width // 2)
        out[k] = _minmax_truncated(s)
    return out
