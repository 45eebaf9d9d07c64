"""``GET /ohif/app-config.js``: the app's OHIF configuration (``ohif/app-config.js``) instead of monailabel's.

monailabel's has no place to store to and offers DICOM upload and "reject" (delete) to every viewer; the
app's stores SEGs through its checking STOW route and offers neither upload nor reject. The OHIF bundle
itself is monailabel's, unchanged (a prebuilt viewer; its configuration is the part meant to be edited).
"""

from __future__ import annotations

import logging
import os

from fastapi import Depends
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute

from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

logger = logging.getLogger(__name__)

CONFIG = os.path.join(os.path.dirname(__file__), "ohif", "app-config.js")


async def app_config(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    return FileResponse(CONFIG, media_type="application/javascript", headers={"Cache-Control": "no-cache"})


def install(fastapi_app) -> None:
    routes = fastapi_app.router.routes
    if any(getattr(r, "endpoint", None) is app_config for r in routes):
        return
    routes.insert(0, APIRoute(settings.MONAI_LABEL_API_STR + "/ohif/app-config.js", app_config, methods=["GET"],
                              include_in_schema=False))
    logger.info(f"/ohif/app-config.js served from {CONFIG}")
