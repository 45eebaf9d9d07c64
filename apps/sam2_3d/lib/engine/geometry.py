"""The one place where voxel indices, SAM 2 frames and image geometry meet.

Convention (what Slicer and OHIF send, see shared/reference/clients.md): a point is the voxel index
``[i, j, k]`` of the file's own grid. SimpleITK arrays are indexed ``[k, j, i]``, so

* a **frame** is the slice ``k`` of the volume: ``array[k]``, an image of height J and width I;
* a voxel ``[i, j, k]`` is the frame pixel at column ``x = i``, row ``y = j`` of frame ``k``;
* SAM 2 points are ``(x, y)`` pixel indices (its prompt encoder adds the half-pixel itself).

Nothing is resampled or reoriented: the returned label is written on the input's own grid with the
input's size, spacing, origin and direction copied over, whatever the direction matrix is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import ImageNotFound, PromptError, UnreadableImage, WrongDimensions


def read_image(path: str) -> sitk.Image:
    """Read a NIfTI/NRRD/... file or a DICOM series folder as a 3D scalar SimpleITK image."""
    if not path or not os.path.exists(path):
        raise ImageNotFound(f"image file not found: {path!r}")
    try:
        if os.path.isdir(path):
            image = read_dicom_series(path)
        else:
            image = sitk.ReadImage(path)
    except RuntimeError as e:  # SimpleITK raises RuntimeError for anything it cannot parse
        first_line = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise UnreadableImage(f"cannot read {os.path.basename(path)!r} as an image: {first_line}") from e
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise WrongDimensions(
            f"image has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar 3D volume is needed"
        )
    if image.GetDimension() != 3 or min(image.GetSize()) < 1:
        raise WrongDimensions(f"image is {image.GetDimension()}D with size {image.GetSize()}; a 3D volume is needed")
    if image.GetSize()[2] == 1:
        raise WrongDimensions(f"image has a single slice (size {image.GetSize()}); a 3D volume is needed")
    return image


def dicom_series_files(folder: str) -> list[str]:
    """The files of the (first) DICOM series in a folder, in the slice order SimpleITK reads them."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series:
        raise UnreadableImage(f"no DICOM series found in folder {os.path.basename(folder)!r}")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series[0]))


def read_dicom_series(folder: str) -> sitk.Image:
    """The folder's (first) DICOM series as one image, unvalidated (``read_image`` validates)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(dicom_series_files(folder))
    return reader.Execute()


@dataclass(frozen=True)
class SliceGeometry:
    """Index bookkeeping for a volume seen as a stack of frames along k."""

    size_ijk: tuple[int, int, int]

    @classmethod
    def of(cls, image: sitk.Image) -> "SliceGeometry":
        return cls(tuple(int(s) for s in image.GetSize()))

    @property
    def num_frames(self) -> int:
        return self.size_ijk[2]

    @property
    def frame_height(self) -> int:
        return self.size_ijk[1]

    @property
    def frame_width(self) -> int:
        return self.size_ijk[0]

    def check_voxel(self, ijk: Sequence, what: str = "point") -> tuple[int, int, int]:
        """Validate a voxel index and return it as ints; name the problem when it is bad."""
        if not isinstance(ijk, (list, tuple)) or len(ijk) != 3:
            raise PromptError(f"{what} {ijk!r} is not a voxel index [i, j, k]")
        try:
            i, j, k = (int(round(float(v))) for v in ijk)
        except (TypeError, ValueError) as e:
            raise PromptError(f"{what} {ijk!r} is not a voxel index [i, j, k]") from e
        for axis, value, size in zip("ijk", (i, j, k), self.size_ijk):
            if not 0 <= value < size:
                raise PromptError(
                    f"{what} {list(ijk)} is outside the volume: {axis}={value} is not in [0, {size - 1}] "
                    f"(volume size {list(self.size_ijk)})"
                )
        return i, j, k

    def voxel_to_frame(self, ijk: Sequence) -> tuple[int, float, float]:
        """``[i, j, k]`` -> ``(frame k, x, y)`` in frame pixel indices."""
        i, j, k = self.check_voxel(ijk)
        return k, float(i), float(j)

    def roi_to_box(self, roi: Sequence) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
        """Slicer's ``[i_a, i_b, j_a, j_b, k_a, k_b]`` (pairs unsorted) -> frame box ``(x0, y0, x1, y1)`` and k-range."""
        if not isinstance(roi, (list, tuple)) or len(roi) != 6:
            raise PromptError(f"roi {roi!r} must be [i0, i1, j0, j1, k0, k1]")
        try:
            values = [int(round(float(v))) for v in roi]
        except (TypeError, ValueError) as e:
            raise PromptError(f"roi {roi!r} must hold 6 numbers") from e
        (i0, i1), (j0, j1), (k0, k1) = (sorted(values[a : a + 2]) for a in (0, 2, 4))
        corners = [(i0, j0, k0), (i1, j1, k1)]
        # A box may stick out of the volume a little (Slicer's ROI widget is free); clamp it, but a box
        # entirely outside the volume is an error, not an empty result.
        for axis, lo, hi, size in zip("ijk", (i0, j0, k0), (i1, j1, k1), self.size_ijk):
            if hi < 0 or lo >= size:
                raise PromptError(
                    f"roi {list(roi)} is outside the volume along {axis}: [{lo}, {hi}] does not meet [0, {size - 1}]"
                )
        (i0, j0, k0), (i1, j1, k1) = (
            tuple(min(max(v, 0), s - 1) for v, s in zip(c, self.size_ijk)) for c in corners
        )
        if i0 == i1 or j0 == j1:
            raise PromptError(f"roi {list(roi)} has no area on the slice (i or j range is a single voxel)")
        return (i0, j0, i1, j1), (k0, k1)

    def check_slice(self, k, what: str = "slice") -> int:
        try:
            k = int(k)
        except (TypeError, ValueError) as e:
            raise PromptError(f"{what} {k!r} is not an integer slice index") from e
        if not 0 <= k < self.num_frames:
            raise PromptError(f"{what} {k} is outside the volume: slices are 0..{self.num_frames - 1}")
        return k

    def slice_range(self, start=None, end=None) -> tuple[int, int]:
        """Inclusive ``[start, end]`` frame range; ``None`` or a negative value means the volume's end."""
        lo = 0 if start is None or int(start) < 0 else self.check_slice(start, "start_slice")
        hi = self.num_frames - 1 if end is None or int(end) < 0 else self.check_slice(end, "end_slice")
        if lo > hi:
            raise PromptError(f"start_slice {lo} is after end_slice {hi}")
        return lo, hi


class _ImageView(np.ndarray):
    """A numpy view of a SimpleITK image's buffer that keeps the image alive.

    ``sitk.GetArrayViewFromImage`` does not: once the image is freed the view reads freed memory
    (garbage values or a segfault). Slices of this view keep it, hence the image, alive too.
    """

    _image: sitk.Image | None = None


def volume_array(image: sitk.Image) -> np.ndarray:
    """The voxel array indexed ``[k, j, i]`` (frames first), read-only, without copying the intensities.

    The array (and every slice of it) holds a reference to ``image``, so it stays valid on its own.
    """
    view = sitk.GetArrayViewFromImage(image).view(_ImageView)
    view._image = image
    return view


def label_image_like(label_kji: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 label on exactly the reference's grid (size, spacing, origin, direction)."""
    expected = tuple(reversed(reference.GetSize()))
    if label_kji.shape != expected:
        raise ValueError(f"label shape {label_kji.shape} != image shape {expected}")
    out = sitk.GetImageFromArray(np.ascontiguousarray(label_kji, dtype=np.uint8))
    out.CopyInformation(reference)
    return out


def write_label(label: sitk.Image, path: str) -> str:
    """Write uncompressed for NRRD (OHIF copies the raw bytes 1:1), compressed for NIfTI."""
    sitk.WriteImage(label, path, useCompression=path.endswith(".gz"))
    return path


def read_label_on(path: str, reference: sitk.Image) -> np.ndarray:
    """Read a label file that must lie on the reference grid; return it as a ``[k, j, i]`` array."""
    label = read_image(path) if not path.endswith(".bin") else None
    if label is None:
        raise UnreadableImage(".bin labels must be converted against their image first")
    if tuple(label.GetSize()) != tuple(reference.GetSize()):
        raise WrongDimensions(
            f"label size {list(label.GetSize())} differs from the image size {list(reference.GetSize())}"
        )
    return sitk.GetArrayFromImage(label)


def sorted_unique(values: Iterable[int]) -> list[int]:
    return sorted({int(v) for v in values})
