"""The app's own versions of monailabel routes that answered 500, ran unchecked, or named server paths.

Each is registered in front of monailabel's route of the same method and path (``lib/web/gate.py``
installs them) and keeps monailabel's role dependency; the checks come first, then monailabel's own
endpoint function does the work.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional

import requests
from fastapi import BackgroundTasks, Depends, File, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse
from monailabel.config import settings
from monailabel.endpoints import activelearning as ml_activelearning
from monailabel.endpoints import datastore as ml_datastore
from monailabel.endpoints import proxy as ml_proxy
from monailabel.endpoints import session as ml_session
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import get_mime_type
from starlette.concurrency import run_in_threadpool

from ..datastore.names import check_name
from ..engine.errors import EngineInputError
from ..infers.request_checks import parse_params
from .guard import _http, _in_thread_cleaning_up

logger = logging.getLogger(__name__)

USER = RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)
ADMIN = RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)


def _bad(message: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def _without_path(info):
    """Image/label info and active-learning answers carry the file's absolute ``path``; clients use the
    id (and ``GET /datastore/image``), so the server's folders stay private."""
    if isinstance(info, dict):
        info = {k: v for k, v in info.items() if k != "path"}
    return info


# -- sessions (Slicer's locally loaded volumes) ------------------------------------------------------------
def _public_session(info: dict) -> dict:
    info = dict(info)
    info.pop("path", None)
    if info.get("image"):
        info["image"] = os.path.basename(info["image"].rstrip("/"))
    return info


def _upload_name(filename: Optional[str]) -> Optional[str]:
    """The file name part of an upload's name (Slicer sends its local path, on Windows with ``\\``)."""
    if filename is None:
        return None
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    try:
        return check_name(name, "upload file name" if name == filename else f"upload file name (from {filename!r})")
    except EngineInputError as e:
        raise _http(e) from e


async def create_session(
    background_tasks: BackgroundTasks,
    uncompress: str = "",
    expiry: int = 0,
    files: List[UploadFile] = File(...),
    user: User = Depends(USER),
):
    if uncompress.strip().lower() not in ("", "0", "false", "no", "off"):
        # monailabel unpacked any tar/zip with no member checks (absolute, '..', links: files written anywhere);
        # no client of this app sends archives, so none is ever unpacked.
        raise _bad("uncompress is not supported: upload the image file (or the files of one DICOM series) "
                   "themselves, without uncompress")
    if expiry < 0:
        raise _bad(f"expiry must be >= 0 seconds, got {expiry}")
    names = set()
    for f in files:
        f.filename = _upload_name(f.filename)
        if f.filename in names:
            raise _bad(f"two uploads are named {f.filename!r}; the files of a session need distinct names")
        names.add(f.filename)
    result = await _in_thread_cleaning_up(background_tasks, ml_session.create_session, False, expiry, files)
    return {"session_id": result["session_id"], "session_info": _public_session(result["session_info"])}


async def get_session(session_id: str, update_ts: bool = False, image: bool = False, user: User = Depends(USER)):
    info = await run_in_threadpool(ml_session.get_session, session_id, update_ts, False)
    if image:
        stored_info = app_instance().sessions().get_session(session_id, update_ts=False)
        if stored_info is None:  # expired since
            raise _bad(f"Session ({session_id}) Not Found", 404)
        stored = stored_info.image
        if not os.path.isfile(stored):
            raise _bad(f"session {session_id!r} holds a folder of {len(os.listdir(stored))} files (a DICOM series); "
                       f"image=true serves one-file sessions only")
        return FileResponse(stored, media_type=get_mime_type(stored), filename=os.path.basename(stored))
    return _public_session(info)


async def remove_session(session_id: str, user: User = Depends(USER)):
    return _public_session(await run_in_threadpool(ml_session.remove_session, session_id))


# -- active learning, image and label info ---------------------------------------------------------------
async def next_sample(strategy: str, request: Request, user: User = Depends(USER)):
    body = (await request.body()).decode("utf-8", "replace")
    try:
        params = parse_params(body or "{}", "body")
    except EngineInputError as e:
        raise _http(e) from e
    # an unknown strategy: 404 from Sam2App.next_sample
    return _without_path(await run_in_threadpool(ml_activelearning.sample, strategy, params, user.username))


async def image_info(image: str, user: User = Depends(USER)):
    return _without_path(await run_in_threadpool(ml_datastore.get_image_info, image))


async def label_info(label: str, tag: str, user: User = Depends(USER)):
    return _without_path(await run_in_threadpool(ml_datastore.get_label_info, label, tag))


# -- training ------------------------------------------------------------------------------------------------
async def train_all(request: Request, run_sync: Optional[bool] = False, user: User = Depends(ADMIN)):
    """OHIF's *Train* posts to ``/train/`` (every trainer): here that is sam2_finetune, whose parameters may
    come flat or under its name; both are checked before a process starts."""
    from ..trainers import endpoint

    body = (await request.body()).decode("utf-8", "replace")
    try:
        params = parse_params(body or "{}", "training parameters")
    except EngineInputError as e:
        raise _http(e) from e
    own = params.pop(endpoint.MODEL, None) or {}
    if not isinstance(own, dict):
        raise _bad(f"{endpoint.MODEL} parameters must be a JSON object, got {type(own).__name__}", 422)
    result = await endpoint.train_with_checked_params({**params, **own}, run_sync, False, user)
    return {endpoint.MODEL: {"result": result, "detail": None}}


async def train_unknown(model: str, user: User = Depends(ADMIN)):
    from ..trainers import endpoint

    raise _bad(f"unknown trainer {model!r}; known: {endpoint.MODEL}", 404)


# -- the bundled OHIF and its DICOMweb proxy ----------------------------------------------------------------
OHIF_DIR = os.path.join(os.path.dirname(os.path.realpath(ml_session.__file__)), "static", "ohif")


async def ohif_file(path: str, user: User = Depends(USER)):
    root = os.path.realpath(OHIF_DIR)
    file = os.path.realpath(os.path.join(root, path)) if path else os.path.join(root, "index.html")
    if file != root and not file.startswith(root + os.sep):
        raise _bad("Not Found", 404)
    if not os.path.isfile(file):
        if os.path.splitext(path)[1]:  # a missing asset
            raise _bad("Not Found", 404)
        file = os.path.join(root, "index.html")  # the viewer's own routes (/ohif/viewer?...)
    return FileResponse(file, media_type=get_mime_type(file))


def _dicomweb() -> bool:
    return settings.MONAI_LABEL_STUDIES.startswith(("http://", "https://"))


async def _proxy(op: str, path: str, request: Request):
    if not _dicomweb():
        raise _bad("no DICOMweb datastore: the DICOMweb proxy serves a server started on a PACS URL", 404)
    try:
        return await ml_proxy.proxy_dicom(request, op, path)
    except requests.RequestException as e:
        raise _bad(f"the PACS did not answer: {type(e).__name__}", 502) from e


async def proxy_qido(path: str, request: Request, user: User = Depends(USER)):
    return await _proxy("qido", path, request)


async def proxy_wado(path: str, request: Request, user: User = Depends(USER)):
    return await _proxy("wado", path, request)


ROUTES = [
    ("/session/", create_session, ["PUT"]),
    ("/session/{session_id}", get_session, ["GET"]),
    ("/session/{session_id}", remove_session, ["DELETE"]),
    ("/activelearning/{strategy}", next_sample, ["POST"]),
    ("/datastore/image/info", image_info, ["GET"]),
    ("/datastore/label/info", label_info, ["GET"]),
    ("/train/", train_all, ["POST"]),
    ("/train/{model}", train_unknown, ["POST"]),  # after the app's /train/sam2_finetune (lib/trainers/endpoint.py)
    ("/ohif/{path:path}", ohif_file, ["GET"]),
    ("/proxy/dicom/qido/{path:path}", proxy_qido, ["GET"]),
    ("/proxy/dicom/wado/{path:path}", proxy_wado, ["GET"]),  # after lib/datastore/wado_proxy.py's (DICOMweb)
]
