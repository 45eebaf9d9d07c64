"""HTTP for fine-tuning beyond monailabel's own: checked train requests, and the versions.

monailabel's train endpoints start the child process at once and answer 200 whatever the parameters; a
bad value would only show up as an ERROR status later. These routes, put ahead of monailabel's, answer
4xx before any process starts (422 naming every bad parameter; 409 when no image has a final label), and
otherwise hand the request to monailabel's own functions. ``POST /train/`` with a body comes here through
``lib/web/wrapped.py``.

Versions (``lib/engine/weights.py``): ``GET .../versions`` lists them (with the broken ones and the one in
use), ``PUT .../versions/in_use?version=v0002|base|newest`` rolls back or forward at once (admin),
``GET .../versions/{name}/export`` downloads a standalone SAM 2 checkpoint (admin).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Optional

from fastapi import Depends, HTTPException
from fastapi.responses import FileResponse
from monailabel.config import settings
from monailabel.endpoints.train import run_model
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from lib.engine import torch_thread
from lib.engine.errors import EngineInputError
from lib.engine.weights import list_versions, manager_of, standalone_state_dict, summary, weights_served_next
from lib.replicas import training_lock
from lib.training.params import TRAINER_NAME, TrainParamError, check_for_server, parse

from ..web.monailabel_adapter import install_routes_first

logger = logging.getLogger(__name__)

MODEL = TRAINER_NAME


def _check(request: dict) -> None:
    app = app_instance()
    try:
        check_for_server(parse(request), app.model_config.engine.image_size, str(app.model_config.engine.device))
    except TrainParamError as e:
        raise HTTPException(status_code=e.status_code, detail=str(e)) from e
    store = app.datastore()
    # what training reads: a local store's datalist (it leaves out pairs linking outside the folder); a
    # DICOMweb store's labelled ids only, so that nothing is downloaded here
    dicomweb = app.studies.startswith(("http://", "https://"))
    if not (store.get_labeled_images() if dicomweb else store.datalist()):
        raise HTTPException(status_code=409, detail="no image in the datastore has a final label: save labels "
                                                    "(PUT /datastore/label?tag=final) before training")


async def train_with_checked_params(
    params: Optional[dict] = None,
    run_sync: Optional[bool] = False,
    enqueue: Optional[bool] = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    await run_in_threadpool(_check, params or {})
    # one replica trains at a time on a shared model store: taken here, taken over by the training process
    model_dir = app_instance().model_config.versions_dir
    try:
        lock = training_lock.acquire(model_dir, phase="starting")
    except training_lock.TrainingLocked as e:
        raise HTTPException(status_code=e.status_code, detail=str(e)) from e
    try:
        # in a worker thread: with run_sync monailabel waits here for the whole training run, which on the
        # event loop froze every other request (/info/ took 83 s in the report of issue 16)
        return await run_in_threadpool(run_model, MODEL, params, run_sync, enqueue)
    except BaseException:
        training_lock.release(model_dir, lock)  # nothing started (monailabel's 429: one is already running)
        raise


def _manager():
    manager = manager_of(app_instance().model_config.engine)
    if manager is None:
        raise HTTPException(status_code=404, detail="this server has no fine-tuned version manager")
    return manager


def _listing(manager) -> dict:
    broken = {b["name"]: b["error"] for b in manager.broken_list()}
    return {
        "versions": [{**summary(v), "broken": broken.get(v["name"])} for v in list_versions(manager.root)],
        "weights_in_use": weights_served_next(manager.engine),
        "pinned": manager.pin,
        "broken_versions": manager.broken_list(),
    }


async def list_model_versions(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    manager = _manager()
    return await run_in_threadpool(_listing, manager)


async def set_version_in_use(version: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
    manager = _manager()
    try:
        await run_in_threadpool(torch_thread.run, manager.set_pin, version)
    except EngineInputError as e:
        raise HTTPException(status_code=e.status_code, detail=str(e)) from e
    logger.info(f"fine-tuned version in use set to {version!r} by {user.username}")
    return _listing(manager)


async def export_version(name: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
    import torch

    manager = _manager()
    try:
        state = await run_in_threadpool(torch_thread.run, standalone_state_dict, manager, name)
    except EngineInputError as e:
        raise HTTPException(status_code=e.status_code, detail=str(e)) from e
    fd, path = tempfile.mkstemp(suffix=".pt", prefix=f"sam2-{name}-")
    os.close(fd)
    await run_in_threadpool(torch.save, {"model": state}, path)
    engine = app_instance().model_config.engine
    filename = f"{engine.checkpoint_name}-{name}.pt"
    return FileResponse(path, filename=filename, media_type="application/octet-stream",
                        background=BackgroundTask(os.unlink, path))


ROUTES = [
    (f"/train/{MODEL}", train_with_checked_params, ["POST"]),
    (f"/train/{MODEL}/versions", list_model_versions, ["GET"]),
    (f"/train/{MODEL}/versions/in_use", set_version_in_use, ["PUT"]),
    (f"/train/{MODEL}/versions/{{name}}/export", export_version, ["GET"]),
]


def install(fastapi_app) -> bool:
    return install_routes_first(fastapi_app, ROUTES)
