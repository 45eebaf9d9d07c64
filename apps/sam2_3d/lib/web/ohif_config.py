"""What the OHIF viewer monailabel serves at ``/ohif/`` gets from the app, beyond monailabel's defaults.

* ``GET /ohif/app-config.js``: the app's configuration (``ohif/app-config.js``) instead of monailabel's,
  whose store went to the PACS unchecked and unseen by the app, and which offered "reject" (delete).
  Everything the viewer stores (its study list's Upload, a Segmentation-mode export) goes through the
  app's checking STOW route (``lib/datastore/stow_proxy.py``), which makes a SEG the final label. The
  bundle itself is monailabel's, unchanged (a prebuilt viewer; its configuration is meant to be edited).
* ``GET /ohif/sam2-3d/extension.mjs``: the app's OHIF extension (``ohif/sam2-3d-extension.mjs``), listed in
  that configuration and imported by the viewer at start-up: Save label / Brush / Eraser buttons in the MONAI
  Label mode, a running toast for every ``/infer/`` request and the server's ``detail`` when one is refused.
* ``GET /info/`` asked by that viewer (its page, under ``/ohif/``, is the request's ``Referer``):
  - the app's ``name`` says which weights are served: it is the one line of ``/info/`` OHIF's MONAI Label
    panel displays (model descriptions never appear there), and an untrained network must not pass
    for a model;
  - models OHIF cannot drive are left out: ``sam2_propagate`` needs a mask file, and the panel sends
    clicks only (it answered 400 "needs a mask" to every Run). ``sam2_box`` stays: without a ``roi`` it
    reads two foreground clicks as the box's corners (``lib/infers/corner_box.py``).
  Every other client (Slicer, scripts) gets monailabel's ``/info/`` unchanged.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

from fastapi import Depends, Request
from fastapi.responses import FileResponse
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from starlette.concurrency import run_in_threadpool

from .monailabel_adapter import install_routes_first

logger = logging.getLogger(__name__)

CONFIG = os.path.join(os.path.dirname(__file__), "ohif", "app-config.js")
EXTENSION = os.path.join(os.path.dirname(__file__), "ohif", "sam2-3d-extension.mjs")
NOT_FOR_OHIF = {"sam2_propagate": "needs a mask file; OHIF's MONAI Label panel sends clicks only"}


async def app_config(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    return FileResponse(CONFIG, media_type="application/javascript", headers={"Cache-Control": "no-cache"})


async def extension(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    """The app's OHIF extension (save, brush, progress, error text), imported by OHIF as an ES module."""
    return FileResponse(EXTENSION, media_type="text/javascript", headers={"Cache-Control": "no-cache"})


def from_ohif(request: Request) -> bool:
    referer = request.headers.get("referer") or ""
    return urlparse(referer).path.startswith(settings.MONAI_LABEL_API_STR + "/ohif/")


def served_weights() -> str:
    """e.g. ``sam2.1_hiera_tiny, fine-tuned v0002`` or ``sam2.1_hiera_tiny, RANDOM WEIGHTS (untrained: ...)``."""
    from ..engine.weights import weights_in_use

    engine = app_instance().model_config.engine
    text = str(engine.checkpoint_name)
    weights = weights_in_use(engine)
    if weights != "base":
        text += f", fine-tuned {weights.split('/', 1)[-1]}"
    if engine.random_weights:
        text += ", RANDOM WEIGHTS (untrained: masks are noise)"
    return text


async def info(request: Request, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    meta = await run_in_threadpool(app_instance().info)
    if not from_ohif(request):
        return meta
    meta = dict(meta)
    meta["models"] = {k: v for k, v in meta["models"].items() if k not in NOT_FOR_OHIF}
    meta["name"] = f"{meta['name']}: {served_weights()}"
    return meta


def install(fastapi_app) -> None:
    if not install_routes_first(fastapi_app, [("/info/", info, ["GET"]), ("/ohif/sam2-3d/extension.mjs", extension, ["GET"]),
                                              ("/ohif/app-config.js", app_config, ["GET"])]):
        return
    logger.info(f"/ohif/app-config.js served from {CONFIG}; /info/ for OHIF names the weights, without {list(NOT_FOR_OHIF)}")
