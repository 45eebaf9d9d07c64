"""A DICOMweb datastore (e.g. Orthanc) whose final labels go back to the PACS as highdicom DICOM SEG.

Differences from monailabel 0.8.5's ``DICOMWebDatastore``, each for a failure seen with the shipped one:

* final labels become SEG through highdicom (``seg.py``), not dcmqi (absent here, downloaded at start-up);
* an unknown or malformed SeriesInstanceUID is a 404/400 naming it, not an IndexError (HTTP 500);
* the lists of series and of labelled series are cached only briefly and dropped on every save, so a
  label saved as final takes its image out of the annotation queue at once (the shipped TTL cache kept
  handing out the image for minutes);
* the label is kept in the local cache *before* the STOW, so a PACS that refuses the SEG loses nothing;
* series are retrieved whole in their stored transfer syntax (``download_series``), so monailabel's
  ``MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME`` option has no effect here.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shutil
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

import pydicom
from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from ..engine.errors import EngineInputError
from . import seg as dicom_seg
from .history import KeepsReplacedLabels

logger = logging.getLogger(__name__)

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
LIST_TTL_S = 10.0


def download_series(client, series_id: str, save_dir: str) -> None:
    """WADO-RS retrieve of a whole series in its *stored* transfer syntax.

    monailabel asks for explicit VR little endian; Orthanc without its GDCM plugin cannot transcode
    JPEG 2000 (the TotalSegmentator series) and answers 500 "Cannot transcode image". Asking for the
    stored syntax (``*``) needs no transcoding; SimpleITK (GDCM) and highdicom read it as is.
    """
    found = [s for s in client.search_for_series(search_filters={"SeriesInstanceUID": series_id})
             if s.get("0020000E", {}).get("Value") == [series_id]]
    if not found:
        raise HTTPException(status_code=404, detail=f"no series with SeriesInstanceUID {series_id} in the PACS {client.base_url}")
    study_id = found[0]["0020000D"]["Value"][0]
    instances = client.retrieve_series(study_id, series_id, media_types=(("application/dicom", "*"),))
    tmp = save_dir + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for instance in instances:
        instance.save_as(os.path.join(tmp, f"{instance.SOPInstanceUID}.dcm"))
    shutil.rmtree(save_dir, ignore_errors=True)
    os.rename(tmp, save_dir)  # a half-downloaded series is never mistaken for a complete one


def _http(e: EngineInputError) -> HTTPException:
    return HTTPException(status_code=e.status_code, detail=str(e))


class Sam2DICOMWebDatastore(KeepsReplacedLabels, DICOMWebDatastore):
    def __init__(self, *args, labels: Optional[List[str]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._labels = list(labels or [])
        self._lists: Dict[str, tuple] = {}
        self._lists_lock = threading.Lock()
        self._download_lock = threading.Lock()

    # -- short-lived caches of the PACS listings ---------------------------------------------------
    def _cached(self, key: str, compute):
        with self._lists_lock:
            hit = self._lists.get(key)
            if hit and time.time() - hit[0] < LIST_TTL_S:
                return list(hit[1])
        value = compute()
        with self._lists_lock:
            self._lists[key] = (time.time(), value)
        return list(value)

    def invalidate(self) -> None:
        with self._lists_lock:
            self._lists.clear()

    def list_images(self) -> List[str]:
        def compute():
            datasets = self._client.search_for_series(search_filters=self._search_filter)
            series = [str(Dataset.from_json(ds)["SeriesInstanceUID"].value) for ds in datasets]
            # A PACS also lists our own SEG series; they are labels, not images to annotate.
            modalities = [str(Dataset.from_json(ds).get("Modality", "")) for ds in datasets]
            return [s for s, m in zip(series, modalities) if m != "SEG"]

        return self._cached("images", compute)

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        # monailabel's lists a series once per SEG referencing it: three saves made "3 of 1 labelled"
        return self._cached("labeled", lambda: list(dict.fromkeys(
            DICOMWebDatastore.get_labeled_images.__wrapped__(self, label_tag, labels))))

    # -- images ------------------------------------------------------------------------------------
    def _check_series_id(self, image_id: str) -> None:
        if not isinstance(image_id, str) or not UID_RE.match(image_id) or len(image_id) > 64:
            raise HTTPException(
                status_code=400,
                detail=f"image {image_id!r} is not a SeriesInstanceUID (digits and dots, at most 64 characters); "
                f"with a DICOMweb datastore images are named by their SeriesInstanceUID",
            )

    def get_image_uri(self, image_id: str) -> str:
        self._check_series_id(image_id)
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        image_nii_gz = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz"))
        if os.path.exists(image_nii_gz) or (not self._convert_to_nifti and os.path.isdir(image_dir) and os.listdir(image_dir)):
            return super().get_image_uri(image_id)
        # Two clients opening the same new series at once would both download into one folder.
        with self._download_lock:
            if not os.path.isdir(image_dir) or not os.listdir(image_dir):
                download_series(self._client, image_id, image_dir)
            return super().get_image_uri(image_id)

    # -- labels ------------------------------------------------------------------------------------
    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        if label_tag != DefaultLabelTag.FINAL:
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        # A final label saved through this server is in the local cache under its image id.
        local = LocalDatastore.get_label_uri(self, image_id or label_id, label_tag)
        if local and os.path.exists(local):
            return local
        if not image_id:
            return ""
        # Otherwise label_id is a SEG series found in the PACS (e.g. saved by another server): fetch it and
        # put it on the image's grid, referencing frames by their source SOP Instance UIDs.
        self.get_image_uri(image_id)
        label_dir = os.path.realpath(os.path.join(self._datastore.label_path(label_tag), label_id))
        if not os.path.exists(label_dir) or not os.listdir(label_dir):
            download_series(self._client, label_id, label_dir)
        seg_files = sorted(os.path.join(label_dir, f) for f in os.listdir(label_dir))
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        out = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        dicom_seg.seg_to_label_file(seg_files[0], image_dir, out)
        info = {"SeriesInstanceUID": label_id, "source": "dicom-seg"}
        LocalDatastore.save_label(self, image_id, out, label_tag, info)
        os.unlink(out)
        return LocalDatastore.get_label_uri(self, image_id, label_tag)

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any], label_id: str = ""
    ) -> str:
        image_uri = self.get_image_uri(image_id)
        label_ext = "".join(pathlib.Path(label_filename).suffixes)
        converted = ""
        if label_ext == ".bin":
            converted = label_filename = binary_to_image(image_uri, label_filename)
        try:
            if label_tag != DefaultLabelTag.FINAL:
                return self._save_keeping_previous(image_id, label_filename, label_tag, label_info)
            image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
            names = dicom_seg.label_names(label_info.get("label_info"), self._labels)
            try:
                seg_file = dicom_seg.write_seg_from_file(image_dir, label_filename, names)
            except EngineInputError as e:
                raise _http(e) from e
            # Keep the label before talking to the PACS: a refused STOW must not lose the annotator's work.
            label_id = self._save_keeping_previous(image_id, label_filename, label_tag, label_info)
            try:
                seg_series = dicom_web_upload_dcm(seg_file, self._client)
            except Exception as e:
                raise HTTPException(
                    status_code=502,
                    detail=f"the PACS refused the DICOM SEG ({e}); the label is kept on this server as "
                    f"'{label_tag}' for {image_id} but is not in the PACS",
                ) from e
            finally:
                os.unlink(seg_file)
            image_info = self.get_image_info(image_id)
            LocalDatastore.update_label_info(
                self,
                image_id,
                label_tag,
                {
                    "SeriesInstanceUID": seg_series,
                    "Modality": "SEG",
                    "PatientID": image_info.get("PatientID"),
                    "StudyInstanceUID": image_info.get("StudyInstanceUID"),
                },
            )
            logger.info(f"final label of {image_id} stored in the PACS as SEG series {seg_series}")
            return label_id
        finally:
            self.invalidate()
            if converted and os.path.exists(converted):
                os.unlink(converted)

    # -- SEG stored by a viewer (OHIF's Segmentation mode) through the app's STOW route -------------------
    def label_from_seg(self, seg_path: str) -> tuple[str, str]:
        """``(image_id, label file)`` of a SEG on the grid of the series it references, or a 4xx naming why not.

        Done *before* the SEG is forwarded to the PACS: a SEG this datastore could not use as a final label
        (no reference, an unknown series, frames that are not the series') is refused and never stored.
        """
        ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
        refs = ds.get("ReferencedSeriesSequence")
        image_id = str(refs[0].SeriesInstanceUID) if refs else ""
        if not image_id:
            raise HTTPException(status_code=422, detail="the DICOM SEG has no ReferencedSeriesSequence: it must name "
                                "the series it segments to count as that series' label")
        self._check_series_id(image_id)
        if image_id not in self.list_images():
            raise HTTPException(status_code=422, detail=f"the DICOM SEG references series {image_id}, which is not an "
                                f"image of this datastore ({self._client.base_url})")
        self.get_image_uri(image_id)
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        out = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        try:
            dicom_seg.seg_to_label_file(seg_path, image_dir, out)
        except Exception as e:
            os.unlink(out)
            raise HTTPException(status_code=422, detail=f"the DICOM SEG for series {image_id} cannot be read onto "
                                f"that series' grid: {e}") from e
        return image_id, out

    def save_stored_seg(self, image_id: str, label_file: str, seg_series: str, segment_names: dict) -> str:
        """After the PACS took a viewer's SEG: it becomes the image's final label here (the previous one kept)."""
        try:
            info = {"SeriesInstanceUID": seg_series, "Modality": "SEG", "source": "dicom-seg stored by a viewer",
                    "label_info": [{"name": n, "idx": i} for i, n in sorted(segment_names.items())]}
            label_id = self._save_keeping_previous(image_id, label_file, DefaultLabelTag.FINAL, info)
            logger.info(f"final label of {image_id} taken from the viewer's SEG series {seg_series}")
            return label_id
        finally:
            self.invalidate()

    def _download_labeled_data(self):
        # The shipped version also *deletes* local final labels that have no SEG in the PACS; a label whose
        # STOW failed would then be lost. Here the PACS only adds labels, never removes local ones.
        have = set(LocalDatastore.get_labeled_images(self, DefaultLabelTag.FINAL))
        images = set(self.list_images())
        for ds in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            seg = Dataset.from_json(ds)
            meta = Dataset.from_json(
                self._client.retrieve_series_metadata(str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID))[0]
            )
            refs = meta.get("ReferencedSeriesSequence")
            image_id = str(refs[0].SeriesInstanceUID) if refs else ""
            if image_id in images and image_id not in have:
                self.get_label_uri(str(seg.SeriesInstanceUID), DefaultLabelTag.FINAL, image_id)
                have.add(image_id)

    def datalist(self, full_path=True) -> List[Dict[str, Any]]:
        self._download_labeled_data()
        return LocalDatastore.datalist(self, full_path)
