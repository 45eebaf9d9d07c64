"""Checks on what a client sends to an infer task, before anything is read or computed.

``parse_params`` / ``check_http_infer``: the HTTP layer (``lib/web/guard.py``) calls them on the raw
query and the ``params`` form field, where monailabel itself would answer a bare 500 (malformed JSON,
a list, ``Infinity``, an unknown model, no image) or let a client name a server path. They raise
``EngineInputError`` subclasses (HTTP 4xx) that name the field and the value. The fields an infer task
reads are typed and checked by ``InferParams.parse`` (``infer_params.py``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from ..common import LABEL_UPLOAD_EXTENSIONS
from ..datastore.names import check_name
from ..engine.errors import BadRequestValue, ImageNotFound, UnknownOption, UnreadableImage
from .work_caps import check_click_count

MAX_PARAMS_BYTES = 4 << 20  # prompts are a few KB; a mask travels as a file, never inside params
MAX_ABS_NUMBER = 1e9  # no voxel index, slice or window is larger; bigger values only overflow later
MAX_DEPTH = 32  # prompts nest 3 deep; monailabel deep-copies and logs params recursively (900 deep: 500)
NAME_FIELDS = ("label_tag",)
# Keys monailabel fills from the query, the uploads or the session: a client setting them in params
# would replace the image or the mask file by any path on the server.
SERVER_KEYS = ("image", "image_id", "model", "session", "file", "description", "client_key")


# -- HTTP layer ----------------------------------------------------------------------------------
def parse_params(text: str | None, field: str = "params") -> dict:
    """A form field that must hold a JSON object; strict (no NaN/Infinity) and bounded."""
    if text is None or text == "":
        return {}
    if len(text) > MAX_PARAMS_BYTES:
        raise BadRequestValue(f"{field} is {len(text)} bytes; at most {MAX_PARAMS_BYTES} are accepted")

    def no_constant(name):
        raise BadRequestValue(f"{field} holds {name}, which is not a number JSON allows")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as e:
        raise BadRequestValue(f"{field} is not valid JSON: {e}") from e
    except RecursionError as e:
        raise BadRequestValue(f"{field} is nested too deeply") from e
    if not isinstance(value, dict):
        raise BadRequestValue(f"{field} must be a JSON object {{...}}, got {type(value).__name__}: {text[:80]!r}")
    check_numbers(value, field)
    return value


def check_numbers(value: Any, where: str) -> None:
    """Every number anywhere in ``value`` is finite and of a size a volume could have."""
    stack = [(value, where, 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        if depth > MAX_DEPTH:
            raise BadRequestValue(f"{where} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(v, (int, float)):
            if isinstance(v, float) and not math.isfinite(v) or abs(v) > MAX_ABS_NUMBER:
                raise BadRequestValue(f"{path} = {v!r} is not a finite number of a sensible size (|x| <= 1e9)")
        elif isinstance(v, dict):
            stack.extend((item, f"{path}.{k}", depth + 1) for k, item in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v))


def check_http_infer(app, model: str, image: str, session_id: str, params: dict, output, file_name, label_name):
    """What monailabel's ``/infer`` would answer 500 to, or misuse as a server path."""
    models = app.info().get("models", {}) if app is not None else {}
    if app is not None and model not in models:
        raise ImageNotFound(f"unknown model {model!r}; this server has: {', '.join(sorted(models))}")
    if not image and not session_id and not file_name:
        raise BadRequestValue("no image: give ?image=<datastore id>, ?session_id=<session>, or upload a 'file'")
    if image:
        check_name(image, "image id")
    if session_id:
        check_name(session_id, "session_id")
    check_click_count(params)  # before the request waits for the torch thread
    for key in SERVER_KEYS:
        if key in params:
            raise BadRequestValue(f"params may not set {key!r}: it comes from the query or the uploaded files")
    label = params.get("label")
    if label is not None and (not isinstance(label, str) or "/" in label or "\\" in label or os.path.isabs(label)):
        raise BadRequestValue(f"params 'label' is a label name, not a path: got {label!r}; upload a mask as the 'label' file")
    for key in NAME_FIELDS:
        if params.get(key) not in (None, ""):
            check_name(params[key], key)
    if label_name is not None:
        lower = label_name.lower()
        if not lower.endswith(LABEL_UPLOAD_EXTENSIONS):
            raise UnreadableImage(
                f"uploaded label {label_name!r}: use one of {', '.join(LABEL_UPLOAD_EXTENSIONS)} (same grid as the image)"
            )
    if output is not None and str(getattr(output, "value", output)) == "dicom_seg":
        store = app.datastore() if app is not None else None
        from monailabel.datastore.dicom import DICOMWebDatastore

        if not isinstance(store, DICOMWebDatastore):
            raise UnknownOption("output=dicom_seg needs a DICOMweb datastore; this server stores files locally "
                                "(use output=image, json or the default)")
        if not image or session_id or file_name:
            raise BadRequestValue("output=dicom_seg needs image=<SeriesInstanceUID> of a series in the PACS "
                                  "(not an upload or a session): the SEG references that series")
