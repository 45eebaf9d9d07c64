"""Whose sessions a request works on, when the client sends no ``client_id`` (OHIF sends none).

With auth on, the authenticated user's; otherwise the browser's: a random token in an HttpOnly cookie that
the ``/infer`` answer sets on a browser's first request (OHIF is served from the same origin, so the
browser sends it back with every later request, without any change to OHIF). The key travels to the infer
task in ``params["client_key"]``, which clients may not set themselves (``request_checks.SERVER_KEYS``).

A client that keeps no cookies and sends no ``client_id`` (a script) gets a session of its own per request.
"""

from __future__ import annotations

import re
import secrets

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from monailabel.config import settings

COOKIE = "sam2_3d_client"
PARAM = "client_key"
COOKIE_DAYS = 30
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


def of_request(request, user) -> tuple[str, str | None]:
    """(the key, a new browser token to set as the cookie or None)."""
    if settings.MONAI_LABEL_AUTH_ENABLE and user is not None and getattr(user, "username", None):
        return f"user:{user.username}", None
    token = request.cookies.get(COOKIE, "")
    if _TOKEN.fullmatch(token):
        return f"browser:{token}", None
    token = secrets.token_urlsafe(18)
    return f"browser:{token}", token


def with_cookie(response, token: str | None, request):
    """The answer, carrying the browser's new token (a JSON-only answer becomes a response to carry it)."""
    if token is None:
        return response
    if isinstance(response, dict):
        response = JSONResponse(content=jsonable_encoder(response))
    response.set_cookie(COOKIE, token, max_age=COOKIE_DAYS * 86400, path="/", httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")
    return response
