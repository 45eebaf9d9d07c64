"""STOW-RS through the app, so a SEG saved in OHIF becomes the image's final label.

OHIF (the build monailabel 0.8.5 serves) stores with its WADO client: ``POST {wadoRoot}/studies`` (its
data source has no separate STOW root; newer builds read ``stowRoot``, which ``ohif_config.py`` sets to the
same place). monailabel's proxy forwarded that POST blindly (any role, every browser header), and the app
never learnt that a label had arrived. This route, in front of monailabel's:

* needs the annotator role (saving labels is an annotator's action, as ``PUT /datastore/label``);
* takes only ``multipart/related`` bodies of DICOM parts (else 415 / 400 naming the part);
* checks every SEG before the PACS sees it: it must reference a series of this datastore and be readable
  onto that series' grid (else 422, nothing stored);
* forwards the body to the PACS's STOW-RS as is, and answers with the PACS's answer;
* then makes each stored SEG the final label of its series (the previous final label kept, as for
  ``PUT /datastore/label``): ``/datastore/`` counts the image as labelled and lists the label at once.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile

import pydicom
import requests
from fastapi import Depends, HTTPException, Request, Response
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from requests_toolbelt.multipart.decoder import MultipartDecoder
from starlette.concurrency import run_in_threadpool

from ..web.monailabel_adapter import install_routes_first

logger = logging.getLogger(__name__)

PATHS = ("/proxy/dicom/wado/studies", "/proxy/dicom/wado/studies/{study}",
         "/proxy/dicom/stow/studies", "/proxy/dicom/stow/studies/{study}")
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _parts(body: bytes, content_type: str) -> list[pydicom.Dataset]:
    if not content_type.lower().startswith("multipart/related"):
        raise HTTPException(status_code=415, detail=f"STOW-RS takes multipart/related DICOM parts, not {content_type!r}")
    try:
        parts = MultipartDecoder(body, content_type).parts
    except Exception as e:
        raise HTTPException(status_code=400, detail=f"the multipart/related body cannot be read: {e}") from e
    if not parts:
        raise HTTPException(status_code=400, detail="the STOW-RS request holds no DICOM part")
    datasets = []
    for n, part in enumerate(parts, start=1):
        try:
            datasets.append(pydicom.dcmread(io.BytesIO(part.content)))
        except Exception as e:
            raise HTTPException(status_code=400, detail=f"part {n} of the STOW-RS request is not a DICOM file: {e}") from e
    return datasets


def _is_seg(ds: pydicom.Dataset) -> bool:
    return str(getattr(ds, "Modality", "")) == "SEG" or str(getattr(ds, "SOPClassUID", "")) == SEG_SOP_CLASS


def _check_segs(store, datasets) -> list[tuple[str, str, str, dict]]:
    """(image id, label file, SEG series, segment names) per SEG part, or the first part's 4xx."""
    checked = []
    try:
        for ds in filter(_is_seg, datasets):
            with tempfile.NamedTemporaryFile(suffix=".dcm", delete=False) as f:
                ds.save_as(f.name)
            try:
                image_id, label_file = store.label_from_seg(f.name)
            finally:
                os.unlink(f.name)
            names = {int(s.SegmentNumber): str(getattr(s, "SegmentLabel", "") or f"segment {s.SegmentNumber}")
                     for s in ds.get("SegmentSequence", [])}
            checked.append((image_id, label_file, str(ds.SeriesInstanceUID), names))
    except BaseException:
        for _, label_file, _, _ in checked:
            os.unlink(label_file)
        raise
    return checked


async def stow(request: Request, study: str = "",
               user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
    store = app_instance().datastore()
    if not hasattr(store, "label_from_seg"):
        raise HTTPException(status_code=404, detail="this server has no DICOMweb datastore to store into")
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    datasets = _parts(body, content_type)
    segs = await run_in_threadpool(_check_segs, store, datasets)
    try:
        auth = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            auth = (settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD)
        prefix = settings.MONAI_LABEL_STOW_PREFIX
        url = settings.MONAI_LABEL_STUDIES.rstrip("/") + (f"/{prefix}" if prefix else "") + "/studies"
        if study:
            url += f"/{study}"
        headers = {"Content-Type": content_type, "Accept": request.headers.get("accept", "application/dicom+json")}
        r = await run_in_threadpool(requests.post, url, data=body, headers=headers, auth=auth, timeout=300)
        if r.status_code < 300:
            for image_id, label_file, seg_series, names in segs:
                await run_in_threadpool(store.save_stored_seg, image_id, label_file, seg_series, names)
        else:
            logger.warning(f"the PACS refused a STOW-RS request ({r.status_code}): {r.text[:300]}")
        keep = {k: v for k, v in r.headers.items() if k.lower() in ("content-type",)}
        return Response(content=r.content, status_code=r.status_code, headers=keep)
    finally:
        for _, label_file, _, _ in segs:
            if os.path.exists(label_file):
                os.unlink(label_file)


def install(fastapi_app) -> None:
    if not install_routes_first(fastapi_app, [(path, stow, ["POST"]) for path in PATHS]):
        return
    logger.info("STOW-RS through the app: a viewer's DICOM SEG is checked, stored in the PACS and made the final label")
