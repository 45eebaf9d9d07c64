"""``POST /infer/{model}?image=<SeriesInstanceUID>&output=dicom_seg`` on a DICOMweb datastore.

monailabel 0.8.5 answers it by shelling out to dcmqi (not installed; HTTP 500). Here the inference runs
as for ``output=image`` and its label is written as a DICOM SEG by highdicom (``seg.py``), referencing the
series' own instances, one segment per label value, named from ``label_info`` (``[{name, idx}]``), else
the request's ``label``, else the app's labels. The local datastore refuses ``dicom_seg`` with a 400
(``request_checks.check_http_infer``): it has no DICOM series to reference.
"""

from __future__ import annotations

import json
import os

from fastapi.responses import FileResponse
from monailabel.endpoints import infer as ml_infer
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import remove_file

from ..engine.errors import EngineInputError
from . import seg as dicom_seg


class EmptyResult(EngineInputError):
    status_code = 422


def segment_names(params: dict, app_labels) -> dict[int, str]:
    if params.get("label_info") is not None:
        return dicom_seg.label_names(params["label_info"], app_labels)
    if isinstance(params.get("label"), str) and params["label"]:
        return {1: params["label"]}
    return dicom_seg.label_names(None, app_labels)


def run_inference_as_seg(background_tasks, model: str, image: str, session_id: str, params: str, file, label,
                         output=None):
    """monailabel's own ``run_inference`` for the label file, then that label as a SEG file response."""
    response = ml_infer.run_inference(background_tasks, model, image, session_id, params, file, label,
                                      ml_infer.ResultType.image)
    app = app_instance()
    store = app.datastore()
    series_dir = os.path.realpath(os.path.join(store._datastore.image_path(), image))
    names = segment_names(json.loads(params or "{}"), list(app.info().get("labels") or []))
    try:
        seg_file = dicom_seg.write_seg_from_file(series_dir, response.path, names)
    except EngineInputError as e:
        if "empty" in str(e):
            raise EmptyResult(f"the {model} result for {image} labels no voxel, and a DICOM SEG needs at least "
                              f"one; nothing to return (output=image gives the empty label)") from e
        raise
    background_tasks.add_task(remove_file, seg_file)
    return FileResponse(seg_file, media_type="application/dicom", filename=f"{image}.seg.dcm")
