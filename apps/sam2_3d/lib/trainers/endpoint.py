"""Validate ``POST /train/sam2_finetune`` parameters before monailabel starts a process for them.

monailabel's train endpoint starts the child process at once and answers 200 whatever the parameters; a
bad value would only show up as an ERROR status later. This route, put ahead of monailabel's, answers
422 naming every bad parameter, and otherwise hands the request to monailabel's own ``run_model``."""

from __future__ import annotations

import logging
from typing import Optional

from fastapi import Depends, HTTPException
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from monailabel.config import settings
from monailabel.endpoints.train import run_model
from monailabel.endpoints.user.auth import RBAC, User

from monailabel.interfaces.utils.app import app_instance

from lib.training.params import TrainParamError, check_for_server, parse

logger = logging.getLogger(__name__)

MODEL = "sam2_finetune"


async def train_with_checked_params(
    params: Optional[dict] = None,
    run_sync: Optional[bool] = False,
    enqueue: Optional[bool] = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    try:
        check_for_server(parse(params or {}), app_instance().model_config.engine.image_size)
    except TrainParamError as e:
        raise HTTPException(status_code=e.status_code, detail=str(e)) from e
    if run_sync and not await run_in_threadpool(app_instance().datastore().datalist):
        # run in this request, the training's own "no final label" error would be a bare 500
        raise HTTPException(status_code=409, detail="no image in the datastore has a final label: save labels before training")
    # in a worker thread: with run_sync monailabel waits here for the whole training run, which on the event
    # loop froze every other request (/info/ took 83 s in the report of issue 16)
    return await run_in_threadpool(run_model, MODEL, params, run_sync, enqueue)


def install(fastapi_app) -> bool:
    path = settings.MONAI_LABEL_API_STR + f"/train/{MODEL}"
    routes = fastapi_app.router.routes
    if any(getattr(r, "endpoint", None) is train_with_checked_params for r in routes):
        return False
    routes.insert(0, APIRoute(path, train_with_checked_params, methods=["POST"], include_in_schema=False))
    return True
