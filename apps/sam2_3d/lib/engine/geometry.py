"""The one place where voxel indices, SAM 2 frames and image geometry meet.

Convention (what Slicer and OHIF send, see docs/clients.md): a point is the voxel index
``[i, j, k]`` of the file's own grid. SimpleITK arrays are indexed ``[k, j, i]``, so

* a **frame** is the slice ``k`` of the volume: ``array[k]``, an image of height J and width I;
* a voxel ``[i, j, k]`` is the frame pixel at column ``x = i``, row ``y = j`` of frame ``k``;
* SAM 2 points are ``(x, y)`` pixel indices (its prompt encoder adds the half-pixel itself).

Frames may also be taken along ``i`` or ``j`` (``axis``), for clicks placed in a sagittal or coronal
view: along ``j`` frame ``j`` is ``array[:, j, :]`` (height K, width I; ``x = i``, ``y = k``), along ``i``
frame ``i`` is ``array[:, :, i]`` (height K, width J; ``x = j``, ``y = k``). Everything that maps between
voxel indices and frames (points, boxes, frame stacks and results) is :class:`SliceGeometry`'s job.

Nothing is resampled or reoriented: the returned label is written on the input's own grid with the
input's size, spacing, origin and direction copied over, whatever the direction matrix is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import ImageNotFound, PromptError, UnreadableImage, WrongDimensions

if TYPE_CHECKING:  # only named in annotations: SimpleITK itself is imported lazily (_sitk)
    import SimpleITK as sitk


def _sitk():
    """SimpleITK, imported where files are read or written: the index bookkeeping below, and with it the
    engine's propagation core, must also run where only torch, numpy and pillow are installed (a GPU
    benchmark machine; docs/benchmark.md)."""
    import SimpleITK

    return SimpleITK


def read_image(path: str) -> sitk.Image:
    """Read a NIfTI/NRRD/... file or a DICOM series folder as a 3D scalar SimpleITK image."""
    sitk = _sitk()
    if not path or not os.path.exists(path):
        raise ImageNotFound(f"image file not found: {path!r}")
    from ..datastore.header_checks import check_series_folder, check_volume_file

    try:
        if os.path.isdir(path):
            check_series_folder(path)
            image = read_dicom_series(path)
        else:  # the header first (no file it names is opened, no volume over the bound allocated)
            image = sitk.ReadImage(path, imageIO=check_volume_file(path))
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
    sitk = _sitk()
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series:
        raise UnreadableImage(f"no DICOM series found in folder {os.path.basename(folder)!r}")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series[0]))


def read_dicom_series(folder: str) -> sitk.Image:
    """The folder's (first) DICOM series as one image, unvalidated (``read_image`` validates)."""
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(dicom_series_files(folder))
    return reader.Execute()


AXES = ("k", "j", "i")
_AXIS_INDEX = {"i": 0, "j": 1, "k": 2}


@dataclass(frozen=True)
class SliceGeometry:
    """Index bookkeeping for a volume seen as a stack of frames along ``axis`` (``k`` by default)."""

    size_ijk: tuple[int, int, int]
    axis: str = "k"

    def __post_init__(self):
        if self.axis not in AXES:
            raise PromptError(f"axis {self.axis!r} is not one of i, j, k")

    @classmethod
    def of_array(cls, array_kji: np.ndarray, axis: str = "k") -> "SliceGeometry":
        """The geometry of a ``[k, j, i]`` voxel array (no image file behind it)."""
        if array_kji.ndim != 3:
            raise WrongDimensions(f"array is {array_kji.ndim}D with shape {array_kji.shape}; a 3D volume is needed")
        return cls(tuple(int(s) for s in reversed(array_kji.shape)), axis)

    @property
    def _frame_axes(self) -> tuple[int, int, int]:
        """(frame axis, row axis, column axis) as indices into (i, j, k)."""
        return {"k": (2, 1, 0), "j": (1, 2, 0), "i": (0, 2, 1)}[self.axis]

    @property
    def num_frames(self) -> int:
        return self.size_ijk[self._frame_axes[0]]

    @property
    def frame_height(self) -> int:
        return self.size_ijk[self._frame_axes[1]]

    @property
    def frame_width(self) -> int:
        return self.size_ijk[self._frame_axes[2]]

    def check_voxel(self, ijk: Sequence, what: str = "point") -> tuple[int, int, int]:
        """Validate a voxel index and return it as ints; name the problem when it is bad."""
        if not isinstance(ijk, (list, tuple)) or len(ijk) != 3:
            raise PromptError(f"{what} {ijk!r} is not a voxel index [i, j, k]")
        try:
            i, j, k = (int(round(float(v))) for v in ijk)
        except (TypeError, ValueError, OverflowError) as e:
            raise PromptError(f"{what} {ijk!r} is not a voxel index [i, j, k] of finite numbers") from e
        for axis, value, size in zip("ijk", (i, j, k), self.size_ijk):
            if not 0 <= value < size:
                raise PromptError(
                    f"{what} {list(ijk)} is outside the volume: {axis}={value} is not in [0, {size - 1}] "
                    f"(volume size {list(self.size_ijk)})"
                )
        return i, j, k

    def voxel_to_frame(self, ijk: Sequence) -> tuple[int, float, float]:
        """``[i, j, k]`` -> ``(frame index, x, y)`` in frame pixel indices."""
        voxel = self.check_voxel(ijk)
        f, row, col = self._frame_axes
        return voxel[f], float(voxel[col]), float(voxel[row])

    def frame_to_voxel(self, frame: int, x: float, y: float) -> tuple[int, int, int]:
        """The inverse of :meth:`voxel_to_frame` (pixel indices rounded)."""
        voxel = [0, 0, 0]
        f, row, col = self._frame_axes
        voxel[f], voxel[col], voxel[row] = int(frame), int(round(x)), int(round(y))
        return tuple(voxel)

    def roi_to_box(self, roi: Sequence) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
        """Slicer's ``[i_a, i_b, j_a, j_b, k_a, k_b]`` (pairs unsorted) -> frame box ``(x0, y0, x1, y1)`` and
        the box's frame range along the axis."""
        if not isinstance(roi, (list, tuple)) or len(roi) != 6:
            raise PromptError(f"roi {roi!r} must be [i0, i1, j0, j1, k0, k1]")
        try:
            values = [int(round(float(v))) for v in roi]
        except (TypeError, ValueError, OverflowError) as e:
            raise PromptError(f"roi {roi!r} must hold 6 finite numbers") from e
        pairs = [sorted(values[a : a + 2]) for a in (0, 2, 4)]
        # A box may stick out of the volume a little (Slicer's ROI widget is free); clamp it, but a box
        # entirely outside the volume is an error, not an empty result.
        for axis, (lo, hi), size in zip("ijk", pairs, self.size_ijk):
            if hi < 0 or lo >= size:
                raise PromptError(
                    f"roi {list(roi)} is outside the volume along {axis}: [{lo}, {hi}] does not meet [0, {size - 1}]"
                )
        pairs = [(min(max(lo, 0), s - 1), min(max(hi, 0), s - 1)) for (lo, hi), s in zip(pairs, self.size_ijk)]
        f, row, col = self._frame_axes
        if pairs[row][0] == pairs[row][1] or pairs[col][0] == pairs[col][1]:
            raise PromptError(f"roi {list(roi)} has no area on a slice along {self.axis} (a single voxel wide)")
        box = (pairs[col][0], pairs[row][0], pairs[col][1], pairs[row][1])
        return box, tuple(pairs[f])

    def check_slice(self, k, what: str = "slice") -> int:
        if isinstance(k, bool) or isinstance(k, float) and not float(k).is_integer():
            raise PromptError(f"{what} {k!r} is not an integer slice index")
        try:
            k = int(k)
        except (TypeError, ValueError, OverflowError) as e:
            raise PromptError(f"{what} {k!r} is not an integer slice index") from e
        if not 0 <= k < self.num_frames:
            raise PromptError(
                f"{what} {k} is outside the volume: slices along {self.axis} are 0..{self.num_frames - 1}"
            )
        return k

    def slice_range(self, start=None, end=None) -> tuple[int, int]:
        """Inclusive ``[start, end]`` frame range; ``None`` or ``-1`` means the volume's first/last slice."""
        lo = 0 if start is None or _is_minus_one(start) else self.check_slice(start, "start_slice")
        hi = self.num_frames - 1 if end is None or _is_minus_one(end) else self.check_slice(end, "end_slice")
        if lo > hi:
            raise PromptError(f"start_slice {lo} is after end_slice {hi}")
        return lo, hi

    def to_frames(self, array_kji: np.ndarray) -> np.ndarray:
        """A ``[k, j, i]`` array as its stack of frames ``[frame, row, column]`` (a view, no copy)."""
        return {"k": lambda a: a, "j": lambda a: a.transpose(1, 0, 2), "i": lambda a: a.transpose(2, 0, 1)}[
            self.axis
        ](array_kji)

    def to_volume(self, frames: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_frames`: a frame stack back as a ``[k, j, i]`` array (a view)."""
        return {"k": lambda a: a, "j": lambda a: a.transpose(1, 0, 2), "i": lambda a: a.transpose(1, 2, 0)}[
            self.axis
        ](frames)


def _is_minus_one(value) -> bool:
    try:
        return int(value) == -1
    except (TypeError, ValueError, OverflowError):
        return False


def suggested_axis(points_ijk: Sequence[Sequence[int]]) -> str | None:
    """The axis a set of clicks suggests when it was placed in a sagittal or coronal view: all points in
    one i-plane (or j-plane) while spanning several k. None when the points say nothing of the kind.
    Three points at least: two axial clicks on one image row are a coincidence too common to refuse."""
    points = [tuple(int(round(float(v))) for v in p) for p in points_ijk]
    if len(points) < 3 or len({p[2] for p in points}) < 2:
        return None
    for axis in ("i", "j"):
        if len({p[_AXIS_INDEX[axis]] for p in points}) == 1:
            return axis
    return None


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
    sitk = _sitk()
    view = sitk.GetArrayViewFromImage(image).view(_ImageView)
    view._image = image
    return view


def label_image_like(label_kji: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 label on exactly the reference's grid (size, spacing, origin, direction)."""
    sitk = _sitk()
    expected = tuple(reversed(reference.GetSize()))
    if label_kji.shape != expected:
        raise ValueError(f"label shape {label_kji.shape} != image shape {expected}")
    out = sitk.GetImageFromArray(np.ascontiguousarray(label_kji, dtype=np.uint8))
    out.CopyInformation(reference)
    return out


def write_label(label: sitk.Image, path: str) -> str:
    """Write uncompressed for NRRD (OHIF copies the raw bytes 1:1), compressed for NIfTI."""
    sitk = _sitk()
    sitk.WriteImage(label, path, useCompression=path.endswith(".gz"))
    return path


# A label is on its image's grid when these agree (floats written by other tools differ at the mm level).
SPACING_RTOL = 1e-3  # relative, per axis
ORIGIN_TOL = 1e-2  # in units of the smallest spacing
DIRECTION_TOL = 1e-4


def grid_of(image) -> tuple[tuple, tuple, tuple, tuple]:
    """(size, spacing, origin, direction) of a SimpleITK image or of a reader that read its header."""
    return tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection())


def grid_differences(label_grid: tuple, image_grid: tuple) -> list[tuple[str, tuple, tuple]]:
    """The one rule of "a label on its image's grid": each of size (first 3 axes), spacing, origin and
    direction that differs, as (what, the label's, the image's); empty when the label lies on the grid."""
    (size, spacing, origin, direction), (isize, ispacing, iorigin, idirection) = label_grid, image_grid
    differences = []
    if tuple(size)[:3] != tuple(isize)[:3]:
        differences.append(("size", tuple(size), tuple(isize)))
    for what, a, b, rtol, atol in (("spacing", spacing, ispacing, SPACING_RTOL, 0.0),
                                   ("origin", origin, iorigin, 0.0, ORIGIN_TOL * min(ispacing)),
                                   ("direction", direction, idirection, 0.0, DIRECTION_TOL)):
        if len(a) != len(b) or not np.allclose(a, b, rtol=rtol, atol=atol):
            differences.append((what, tuple(a), tuple(b)))
    return differences


def read_label_on(path: str, reference: sitk.Image) -> np.ndarray:
    """Read a label file that must lie on the reference grid; return it as a ``[k, j, i]`` array."""
    sitk = _sitk()
    label = read_image(path) if not path.endswith(".bin") else None
    if label is None:
        raise UnreadableImage(".bin labels must be converted against their image first")
    if tuple(label.GetSize()) != tuple(reference.GetSize()):
        raise WrongDimensions(
            f"label size {list(label.GetSize())} differs from the image size {list(reference.GetSize())}"
        )
    return sitk.GetArrayFromImage(label)
