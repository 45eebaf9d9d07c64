"""A WADO-RS proxy route that forwards the viewer's ``Accept`` header to the PACS.

monailabel 0.8.5's ``/proxy/dicom/wado/...`` (what its bundled OHIF reads images through) forwards GET
requests *without* the browser's headers. OHIF asks for each frame in its stored transfer syntax (e.g.
``type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90``); the PACS instead sees ``Accept: */*``, whose
DICOMweb default for frames is uncompressed little endian, and must transcode. Debian 12's Orthanc 1.10
cannot decode JPEG 2000 ("Cannot transcode image", HTTP 500: the viewport stays black), and with its
GDCM plugin 1.5 it segfaulted after a dozen such transcodes here. Forwarding ``Accept`` asks for what the
PACS already stores, so nothing is transcoded and OHIF decodes the frames itself.

The route is put in front of monailabel's own one (same path) when the server starts; every other proxy
path, and POST, stay monailabel's.
"""

from __future__ import annotations

import logging

import requests
from fastapi import Depends, Request, Response
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

from ..web.monailabel_adapter import install_routes_first

logger = logging.getLogger(__name__)

PATH = "/proxy/dicom/wado/{path:path}"
FORWARDED = ("accept",)


async def wado_get(request: Request, path: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    # the role monailabel's own route requires (without it, auth on left the PACS's images open to anyone)
    auth = None
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        auth = (settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD)
    server = settings.MONAI_LABEL_STUDIES.rstrip("/")
    prefix = settings.MONAI_LABEL_WADO_PREFIX
    url = f"{server}/{prefix}/{path}" if prefix else f"{server}/{path}"
    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
    r = requests.get(url, params=request.query_params, auth=auth, headers=headers, stream=True, timeout=120)
    return Response(content=r.raw.read(), status_code=r.status_code, headers=r.headers)


def install(fastapi_app) -> bool:
    """Put the route first in the web app's routing table (once)."""
    if not install_routes_first(fastapi_app, [(PATH, wado_get, ["GET"])]):
        return False
    logger.info(f"{settings.MONAI_LABEL_API_STR + PATH}: WADO-RS proxy forwarding the viewer's Accept header (no transcoding in the PACS)")
    return True
