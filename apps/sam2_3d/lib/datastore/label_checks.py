"""Is an uploaded file a label of its image? Checked before anything is stored.

A label is stored only if it is a readable, complete, 3D, single-component, integer-valued volume on
exactly its image's grid (size, and spacing / origin / direction within ``*_TOL``). SimpleITK reads a
truncated ``.nii``/``.nii.gz`` as zero-filled without an error, so NIfTI files are read in full by
nibabel, which does notice; NRRD/MetaImage truncation is an error in SimpleITK itself.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib

import numpy as np
import SimpleITK as sitk

from ..common import LABEL_EXTENSIONS, file_extension
from ..engine.errors import InvalidLabel, UnreadableImage
from ..engine.geometry import grid_differences, grid_of, read_dicom_series
from .header_checks import check_volume_file


def label_extension(path: str) -> str:
    """The label file's extension if it is one the datastore keeps; else 415 naming the allowed ones."""
    ext = file_extension(path, LABEL_EXTENSIONS)
    if ext:
        return ext
    raise UnreadableImage(
        f"label file {os.path.basename(path)!r} has an extension the datastore does not keep; use one of "
        f"{', '.join(LABEL_EXTENSIONS)}"
    )


def _info(path: str, what: str = "label") -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetImageIO(check_volume_file(path, what))  # refuses detached data and oversized volumes first
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise UnreadableImage(f"cannot read the label as an image: {str(e).strip().splitlines()[-1]}") from e
    return reader


def _image_grid(image_path: str):
    if os.path.isdir(image_path):  # a DICOM series in a DICOMweb cache
        return grid_of(read_dicom_series(image_path))
    return grid_of(_info(image_path, "image"))


def _read_all(path: str) -> np.ndarray:
    """Every voxel, or ``InvalidLabel`` if the file ends early."""
    if path.lower().endswith(".gz"):
        try:  # the whole stream must decompress: SimpleITK reads a cut-off .nii.gz as zeros
            with gzip.open(path, "rb") as f:
                while f.read(1 << 22):
                    pass
        except (EOFError, OSError, zlib.error) as e:
            raise InvalidLabel(f"the label file is truncated or corrupt: {e}") from e
    if path.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asanyarray(nib.load(path).dataobj)
        except Exception as e:  # nibabel: EOFError, OSError, ImageFileError ... for a damaged file
            raise InvalidLabel(f"the label file is truncated or corrupt: {e}") from e
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(path, imageIO=check_volume_file(path, "label")))
    except RuntimeError as e:
        raise InvalidLabel(f"the label file is truncated or corrupt: {str(e).strip().splitlines()[-1]}") from e


def check_label_file(label_path: str, image_path: str) -> None:
    """Raise a 4xx ``EngineInputError`` naming the first problem; return quietly for a good label."""
    label_extension(label_path)
    if not os.path.isfile(label_path) or os.path.getsize(label_path) == 0:
        raise InvalidLabel("the label file is empty (0 bytes)")
    info = _info(label_path)
    if info.GetDimension() != 3:
        raise InvalidLabel(f"the label is {info.GetDimension()}D with size {list(info.GetSize())}; a 3D label is needed")
    if info.GetNumberOfComponents() != 1:
        raise InvalidLabel(f"the label has {info.GetNumberOfComponents()} components per voxel; one is needed")
    differences = grid_differences(grid_of(info), _image_grid(image_path))
    if differences:
        what, ours, theirs = differences[0]
        show = list if what == "size" else _r
        raise InvalidLabel(f"label {what} {show(ours)} differs from the image {what} {show(theirs)}")
    data = _read_all(label_path)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.bool_)):
        if not np.issubdtype(data.dtype, np.floating) or not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise InvalidLabel(f"the label holds non-integer values ({data.dtype}); a label is integer class ids")
    if data.size and data.min() < 0:
        raise InvalidLabel(f"the label holds negative values (min {data.min()}); class ids are >= 0")


def _r(values) -> list:
    return [round(float(v), 4) for v in values]


def refuse_empty_upload(fileobj, filename: str, params: dict) -> None:
    """A final label with no voxel > 0 is refused (422) unless the request says ``"allow_empty": true``
    (an image with nothing to segment; training then skips it). Unreadable uploads are left to the
    datastore's full check, which names their problem."""
    if params.get("allow_empty") is True:
        return
    import shutil
    import tempfile

    ext = label_extension(filename or "label.nii.gz")
    with tempfile.NamedTemporaryFile(suffix=ext) as tmp:
        fileobj.seek(0)
        shutil.copyfileobj(fileobj, tmp)
        tmp.flush()
        fileobj.seek(0)
        try:
            data = _read_all(tmp.name)
        except Exception:  # noqa: BLE001 - not this check's concern
            return
    if data.size and not np.any(data):
        raise InvalidLabel("the final label is empty (no voxel > 0): nothing would be learned from it; send "
                           "params {\"allow_empty\": true} to store an image with nothing to segment")
