"""DICOM SEG written and read in pure Python (highdicom), instead of monailabel's dcmqi path.

monailabel 0.8.5 converts a final label to SEG by shelling out to dcmqi's ``itkimage2segimage``, which
is not packaged for Debian and which monailabel downloads from GitHub at start-up: offline, the server
cannot start. highdicom writes a standard SEG from the source instances themselves, so the SEG always
references the exact series (and each frame its exact source instance) the label was drawn on.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Iterable, Sequence

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from ..engine.errors import EngineInputError, WrongDimensions
from ..engine.geometry import dicom_series_files, label_image_like, read_dicom_series, write_label

APP_NAME = "sam2-3d"
APP_VERSION = "0.1.0"


class BlankUIDError(EngineInputError):
    """Source DICOM whose Study/Series/SOP Instance UIDs are blank (anonymised files): HTTP 422.

    A PACS refuses such files (Orthanc: 400), and a SEG cannot reference them, so we refuse them
    first, naming the files and the missing tags, instead of failing deep inside a writer.
    """

    status_code = 422


UID_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def blank_uid_tags(ds: pydicom.Dataset) -> list[str]:
    return [t for t in UID_TAGS if not str(getattr(ds, t, "") or "").strip()]


def check_uids(files: Sequence[str]) -> None:
    """Raise BlankUIDError when any file of the series lacks a UID (the published TotalSegmentator files do)."""
    bad = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        missing = blank_uid_tags(ds)
        if missing:
            bad.append((os.path.basename(f), missing))
    if bad:
        name, missing = bad[0]
        raise BlankUIDError(
            f"{len(bad)} of {len(files)} DICOM files have blank {', '.join(missing)} (first: {name}); "
            f"a PACS refuses such files and a DICOM SEG cannot reference them. Give the series real UIDs "
            f"(e.g. pydicom.uid.generate_uid) before storing or labelling it."
        )


def _source(path: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    # Some real series (the TotalSegmentator example among them) carry an empty SOP Class UID in the
    # dataset and the real one only in the file meta; highdicom needs it to know the source IOD.
    if not str(getattr(ds, "SOPClassUID", "") or "").strip():
        meta_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
        if not meta_class:
            raise BlankUIDError(f"{os.path.basename(path)} has no SOP Class UID, neither in the dataset nor its file meta")
        ds.SOPClassUID = meta_class
    return ds


def label_names(label_info: Any, fallback: Iterable[str] = ()) -> dict[int, str]:
    """``{idx: name}`` from the clients' ``label_info: [{name, idx}]`` (or ``{name: idx}``)."""
    names: dict[int, str] = {}
    if isinstance(label_info, dict):
        label_info = [{"name": k, "idx": v} for k, v in label_info.items()]
    for item in label_info or []:
        if isinstance(item, dict) and "idx" in item:
            try:
                names[int(item["idx"])] = str(item.get("name") or f"label {item['idx']}")
            except (TypeError, ValueError):
                continue
    for i, name in enumerate(fallback, start=1):
        names.setdefault(i, name)
    return names


def write_seg(
    series_folder: str,
    label_kji: np.ndarray,
    names: dict[int, str],
    out_path: str | None = None,
    series_description: str = "SAM 2 annotation",
) -> str:
    """Write a binary DICOM SEG of ``label_kji`` (on the series grid, frame k = k-th file in SimpleITK order)."""
    files = dicom_series_files(series_folder)
    check_uids(files)
    sources = [_source(f) for f in files]
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if tuple(label_kji.shape) != expected:
        raise WrongDimensions(f"label shape (k, j, i) {tuple(label_kji.shape)} differs from the series' {expected}")
    values = [int(v) for v in np.unique(label_kji) if v != 0]
    if not values:
        raise EngineInputError("the label is empty: a DICOM SEG needs at least one labelled voxel")
    # highdicom wants segment numbers 1..n without gaps; relabel and keep each segment's own name.
    relabelled = np.zeros(label_kji.shape, dtype=np.uint8)
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(
        name=APP_NAME, version=APP_VERSION, family=codes.cid7162.ArtificialIntelligence
    )
    for number, value in enumerate(values, start=1):
        relabelled[label_kji == value] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=names.get(value, f"label {value}"),
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=relabelled,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=APP_NAME,
        manufacturer_model_name="SAM 2 interactive segmentation (MONAI Label app)",
        software_versions=APP_VERSION,
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=True,
    )
    out_path = out_path or tempfile.NamedTemporaryFile(suffix=".dcm", delete=False).name
    seg.save_as(out_path)
    return out_path


def write_seg_from_file(series_folder: str, label_file: str, names: dict[int, str], out_path: str | None = None) -> str:
    """Like write_seg, for a label file (NIfTI/NRRD) that lies on the series grid."""
    image = read_dicom_series(series_folder)
    from .header_checks import check_volume_file

    label = sitk.ReadImage(label_file, imageIO=check_volume_file(label_file, "label"))
    if tuple(label.GetSize()) != tuple(image.GetSize()):
        raise WrongDimensions(f"label size {list(label.GetSize())} differs from the series size {list(image.GetSize())}")
    return write_seg(series_folder, sitk.GetArrayFromImage(label).astype(np.int64), names, out_path)


def read_seg_on_series(seg_path: str, series_folder: str) -> tuple[np.ndarray, dict[int, str]]:
    """A SEG as a ``[k, j, i]`` label on the series grid (segment numbers as values) and its segment names."""
    seg = hd.seg.segread(seg_path)
    files = dicom_series_files(series_folder)
    sop_uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    wanted = [u for u in sop_uids if u in referenced]
    numbers = list(seg.segment_numbers)
    # OHIF's SEGs (dcmjs) leave out SpatialLocationsPreserved; each frame still names its source instance
    # and lies on it (dcmjs writes a labelmap of the source grid), which is what indexing needs.
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=wanted, segment_numbers=numbers, combine_segments=True, relabel=False,
        ignore_spatial_locations=True,
    )
    out = np.zeros((len(files), int(seg.Rows), int(seg.Columns)), dtype=np.uint8)
    index = {u: k for k, u in enumerate(sop_uids)}
    for frame, uid in zip(pixels, wanted):
        out[index[uid]] = frame
    names = {int(d.segment_number): str(d.segment_label) for d in seg.SegmentSequence}
    return out, names


def seg_to_label_file(seg_path: str, series_folder: str, out_path: str) -> str:
    """Write a SEG as a label image with exactly the series' geometry (what the clients load)."""
    label, _ = read_seg_on_series(seg_path, series_folder)
    return write_label(label_image_like(label, read_dicom_series(series_folder)), out_path)
