"""``GET /datastore/dataset``: the zip of images and final labels, removed once it has been sent.

monailabel writes the archive to the temp folder and answers it with a ``FileResponse`` that never
deletes it: every download left a copy of the whole dataset behind. This route, put ahead of
monailabel's (same path, same role), hands the same archive and removes it after the answer (or at
once if building it fails); a datastore without final labels answers 404 naming that, not a bare 500.
The archive holds only pairs inside the studies folder (``lib/datastore/confined.py``).
"""

from __future__ import annotations

import os
from typing import Optional

from fastapi import Depends, HTTPException
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance


def _remove(path: str) -> None:
    if path and os.path.isfile(path):
        os.unlink(path)


async def download_dataset(limit_cases: Optional[int] = None,
                           user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
    store = app_instance().datastore()
    if not store.datalist():
        raise HTTPException(status_code=404, detail="no image has a final label yet: there is no dataset to download")
    path = await run_in_threadpool(store.get_dataset_archive, limit_cases)
    return FileResponse(path, media_type="application/zip", filename="dataset.zip", background=BackgroundTask(_remove, path))


def install(web_app) -> bool:
    path = settings.MONAI_LABEL_API_STR + "/datastore/dataset"
    routes = web_app.router.routes
    if any(getattr(r, "endpoint", None) is download_dataset for r in routes):
        return False
    routes.insert(0, APIRoute(path, download_dataset, methods=["GET"], include_in_schema=False))
    return True
