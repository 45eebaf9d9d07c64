"""What the app changes in monailabel's running web app (installed from ``Sam2App.on_init_complete``).

monailabel 0.8.5's endpoints answer a bare 500 to much bad input, run inference on the event loop
(``/info/`` then waits for every propagation), leave the temporary copies of rejected uploads behind,
and allow any origin *with credentials* by default. Without forking monailabel:

* routes in front of monailabel's own (same paths, same auth dependency) for the endpoints that take a
  JSON form field or uploads: they check the request (``lib/infers/request_checks.py``), call monailabel's
  own endpoint function in a worker thread, and remove the uploads' temporary copies if it fails;
* exception handlers: the app's ``EngineInputError`` (4xx with its message) and monailabel's
  ``ImageNotFoundException`` / ``LabelNotFoundException`` (404) instead of 500;
* auth: monailabel's token check, fixed for PyJWT 2 (``auth.py``);
* CORS: origins from ``SAM2_3D_CORS_ORIGINS`` (comma-separated) are honoured with credentials; without
  it any origin may read, never with credentials (cookies or HTTP auth); writes from other origins are
  refused by ``gate.py``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
from functools import partial
from typing import List, Optional

from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from monailabel.config import settings
from monailabel.endpoints import datastore as ml_datastore
from monailabel.endpoints import infer as ml_infer
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException
from monailabel.interfaces.utils.app import app_instance
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware

from ..datastore.label_checks import label_extension, refuse_empty_upload
from ..datastore.names import check_name
from ..engine import torch_thread
from ..engine.errors import EngineInputError, ImageNotFound
from ..infers.request_checks import check_http_infer, parse_params
from . import client_gone, client_key
from .monailabel_adapter import install_routes_first

logger = logging.getLogger(__name__)


def _http(e: EngineInputError) -> HTTPException:
    return HTTPException(status_code=e.status_code, detail=str(e))


async def _in_thread_cleaning_up(background_tasks: BackgroundTasks, func, *args, executor=None, request=None):
    """Run a monailabel endpoint function off the event loop (in ``executor``, else a worker thread);
    on failure remove its temp files.

    monailabel queues the removal of its temporary copies of the uploads as background tasks, which
    Starlette runs only after a successful answer: a rejected upload would stay in the temp folder.
    """
    try:
        if request is not None:  # on the torch thread, dropped once the client disconnects (client_gone.py)
            return await client_gone.on_torch_thread_while_connected(request, func, background_tasks, *args)
        if executor is not None:
            # with the request's context, so the request log (request_log.py) gets what the task notes
            return await asyncio.get_running_loop().run_in_executor(
                executor, contextvars.copy_context().run, partial(func, background_tasks, *args))
        return await run_in_threadpool(func, background_tasks, *args)
    except BaseException:
        for task in background_tasks.tasks:
            try:
                task.func(*task.args, **task.kwargs)
            except Exception as e:  # cleaning up must not hide the request's own error
                logger.warning(f"could not remove a temporary upload: {e}")
        background_tasks.tasks.clear()
        raise


# -- routes -----------------------------------------------------------------------------------------
async def infer(
    request: Request,
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: Optional[ml_infer.ResultType] = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    app = app_instance()
    try:
        p = parse_params(params)
        check_http_infer(app, model, image, session_id, p, output,
                         (file.filename or "image.nii.gz") if file else None,
                         (label.filename or "label.nii.gz") if label else None)
        if session_id and app.sessions() is not None and not app.sessions().get_session(session_id):
            raise ImageNotFound(f"session {session_id!r} is unknown or has expired: upload the image again (PUT /session/)")
    except EngineInputError as e:
        raise _http(e) from e
    p[client_key.PARAM], new_token = client_key.of_request(request, user)  # whose sessions (lib/web/client_key.py)
    # on the torch thread (lib/engine/torch_thread.py): the thread the model was built on runs it fastest
    run = ml_infer.run_inference
    if output is not None and output.value == "dicom_seg":  # monailabel's own needs dcmqi (absent: 500)
        from ..datastore.seg_output import run_inference_as_seg as run
    answer = await _in_thread_cleaning_up(
        background_tasks, run, model, image, session_id, json.dumps(p), file, label, output,
        request=request,
    )
    return client_key.with_cookie(answer, new_token, request)


async def save_label(
    background_tasks: BackgroundTasks,
    image: str,
    params: str = Form("{}"),
    tag: str = DefaultLabelTag.FINAL.value,
    label: UploadFile = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    try:
        check_name(image, "image id")
        check_name(tag or DefaultLabelTag.FINAL.value, "label tag")
        p = parse_params(params)
        label_extension(label.filename or "label.nii.gz")
        if (tag or DefaultLabelTag.FINAL.value) == DefaultLabelTag.FINAL.value:
            await run_in_threadpool(refuse_empty_upload, label.file, label.filename, p)
    except EngineInputError as e:
        raise _http(e) from e
    return await _in_thread_cleaning_up(
        background_tasks, ml_datastore.save_label, image, json.dumps(p), tag, label, user.username
    )


async def add_image(
    background_tasks: BackgroundTasks,
    image: Optional[str] = None,
    params: str = Form("{}"),
    file: UploadFile = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    try:
        if image:
            check_name(image, "image id")
        p = parse_params(params)
    except EngineInputError as e:
        raise _http(e) from e
    return await _in_thread_cleaning_up(background_tasks, ml_datastore.add_image, image, json.dumps(p), file, user.username)


def _info_route(func, field: str, *names: str):
    """PUT image/label info: monailabel answers 500 to a malformed or non-object ``info``."""

    async def route(request: Request, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
        form = await request.form()
        query = request.query_params
        try:
            values = [check_name(query.get(n, ""), n) for n in names]
            info = parse_params(form.get(field) or query.get(field) or "{}", field)
        except EngineInputError as e:
            raise _http(e) from e
        return await run_in_threadpool(func, *values, json.dumps(info), user.username)

    return route


ROUTES = [
    ("/infer/{model}", infer, ["POST"]),
    ("/datastore/label", save_label, ["PUT"]),
    ("/datastore/image", add_image, ["PUT"]),
    ("/datastore/", add_image, ["PUT"]),
    ("/datastore/image/info", _info_route(ml_datastore.update_image_info, "info", "image"), ["PUT"]),
    ("/datastore/label/info", _info_route(ml_datastore.update_label_info, "info", "label", "tag"), ["PUT"]),
    ("/datastore/updatelabelinfo", _info_route(ml_datastore.update_label_info, "params", "label", "tag"), ["PUT"]),
]


# -- exception handlers and CORS ------------------------------------------------------------------------
async def _engine_input_error(request, exc: EngineInputError):
    return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)})


async def _not_found(request, exc):
    return JSONResponse(status_code=404, content={"detail": getattr(exc, "msg", str(exc))})


def cors_middleware(origins: List[str]) -> Middleware:
    if origins:
        # pydantic writes configured origins with a trailing '/', which no browser's Origin header has
        origins = [o.rstrip("/") for o in origins]
        return Middleware(CORSMiddleware, allow_origins=origins, allow_credentials=True,
                          allow_methods=["*"], allow_headers=["*"])
    return Middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=False,
                      allow_methods=["*"], allow_headers=["*"])


CORS_ENV = "SAM2_3D_CORS_ORIGINS"


def cors_origins() -> list[str]:
    """Origins allowed to call with credentials: ``SAM2_3D_CORS_ORIGINS`` (comma-separated), else
    monailabel's ``MONAI_LABEL_CORS_ORIGINS``. The latter cannot actually be set for ``monailabel
    start_server`` 0.8.5: its start-up JSON-dumps the parsed URLs and exits with "Object of type AnyHttpUrl
    is not JSON serializable" (tests/test_auth.py runs the server with ours)."""
    ours = [o.strip().rstrip("/") for o in os.environ.get(CORS_ENV, "").split(",") if o.strip()]
    return ours or [str(o).rstrip("/") for o in settings.MONAI_LABEL_CORS_ORIGINS or []]


def install(web_app) -> None:
    if not install_routes_first(web_app, ROUTES):
        return
    from . import auth

    auth.install(web_app)  # strict token checks; POST /auth/token answers 401/502
    web_app.exception_handlers[EngineInputError] = _engine_input_error
    web_app.exception_handlers[ImageNotFoundException] = _not_found
    web_app.exception_handlers[LabelNotFoundException] = _not_found
    web_app.exception_handlers[torch_thread.ClientGone] = _engine_input_error
    origins = cors_origins()
    web_app.user_middleware = [m for m in web_app.user_middleware if m.cls is not CORSMiddleware]
    web_app.user_middleware.insert(0, cors_middleware(origins))
    from . import request_log

    request_log.install(web_app)  # one log line per request
    # Starlette builds its middleware stack once, before start-up; rebuild it with the above.
    web_app.middleware_stack = web_app.build_middleware_stack()
    logger.info(
        f"request checks, off-loop inference and temp-file clean-up on {len(ROUTES)} routes; CORS: "
        + (f"origins {origins} with credentials" if origins else "any origin, without credentials")
    )
