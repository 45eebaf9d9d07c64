"""MONAI Label's token check, made to work with the PyJWT this app installs, and made strict.

monailabel 0.8.5's ``from_token`` calls ``jwt.decode`` without ``algorithms``; PyJWT 2 refuses that, so
with ``MONAI_LABEL_AUTH_ENABLE=true`` every token, valid or not, was answered 401. This is the same
function with the algorithm named (RS256, what Keycloak signs with unless configured otherwise; set
``SAM2_3D_AUTH_ALGORITHMS`` to change it), put in place of monailabel's when the server starts. It also
checks what monailabel did not (each a 401 naming it, where monailabel accepted the token or answered 500):

* **audience**: the token must be for this server's client (``MONAI_LABEL_AUTH_CLIENT_ID``) as its
  ``azp`` (Keycloak's "authorized party") or in its ``aud``; a token another client of the same realm
  obtained is refused;
* **expiry**: ``exp`` is required (a token without one would never expire);
* **claim types**: the roles claim must be a list of names, the user name a string.

An identity provider that cannot be reached (or answers nonsense) gives 502 naming it, not 500; and
``POST /auth/token`` (Slicer's log-in) answers 401 when the provider refuses the user name or password.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import jwt
import requests
from fastapi import Depends, HTTPException
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordRequestForm
from monailabel.config import settings
from monailabel.endpoints.user import auth as ml_auth
from starlette.concurrency import run_in_threadpool

logger = logging.getLogger(__name__)

ALGORITHMS = [a.strip() for a in os.environ.get("SAM2_3D_AUTH_ALGORITHMS", "RS256").split(",") if a.strip()]


def _refused(why: str) -> HTTPException:
    return HTTPException(status_code=401, detail=f"invalid token: {why}", headers={"WWW-Authenticate": "Bearer"})


def _provider_down(what: str, e: Exception) -> HTTPException:
    logger.warning(f"identity provider unusable ({what}): {e}")
    return HTTPException(status_code=502, detail=f"the identity provider could not be used to {what} "
                                                 f"({type(e).__name__}); try again later or tell the administrator")


def _public_key() -> str:
    try:
        return ml_auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    except (requests.RequestException, ValueError, KeyError, TypeError) as e:  # unreachable, HTTP error, no key
        raise _provider_down("check the token", e) from e


def _audience_ok(payload: dict) -> bool:
    client = settings.MONAI_LABEL_AUTH_CLIENT_ID
    aud = payload.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    return payload.get("azp") == client or client in audiences


def _text(payload: dict, claim: str) -> Optional[str]:
    value = payload.get(claim)
    return value if isinstance(value, str) else None


def from_token(token: str):
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return ml_auth.DEFAULT_USER
    key = _public_key()
    # InvalidTokenError (bad signature, expired, no exp, malformed) -> monailabel's get_current_user answers 401
    payload = jwt.decode(token, key, algorithms=ALGORITHMS,
                         options={"verify_signature": True, "verify_aud": False, "verify_exp": True, "require": ["exp"]})
    if not _audience_ok(payload):
        raise _refused(f"it was issued for another client (azp {payload.get('azp')!r}, aud {payload.get('aud')!r}), "
                       f"not {settings.MONAI_LABEL_AUTH_CLIENT_ID!r}")
    roles = payload
    for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):  # e.g. realm_access#roles
        roles = roles.get(part) if isinstance(roles, dict) else None
    if roles is None:
        roles = []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise _refused(f"its roles claim ({settings.MONAI_LABEL_AUTH_TOKEN_ROLES}) is a {type(roles).__name__}, "
                       f"not a list of role names")
    username = _text(payload, settings.MONAI_LABEL_AUTH_TOKEN_USERNAME)
    if not username:
        raise _refused(f"it has no user name ({settings.MONAI_LABEL_AUTH_TOKEN_USERNAME!r} claim)")
    return ml_auth.User(
        username=username,
        email=_text(payload, settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=_text(payload, settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=roles,
    )


async def access_token(form_data: OAuth2PasswordRequestForm = Depends()):
    """``POST /auth/token``: monailabel's password log-in, with the provider's answers mapped to 401/502."""
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return {"access_token": None, "token_type": None}
    try:
        url = await run_in_threadpool(ml_auth.token_uri)
    except (requests.RequestException, ValueError) as e:
        raise _provider_down("log in", e) from e
    if not url:
        raise _provider_down("log in", ValueError("its openid-configuration names no token_endpoint"))
    data = {"client_id": settings.MONAI_LABEL_AUTH_CLIENT_ID, "username": form_data.username,
            "password": form_data.password, "grant_type": "password"}
    try:
        response = await run_in_threadpool(
            lambda: requests.post(url, data=data, timeout=settings.MONAI_LABEL_AUTH_TIMEOUT,
                                  headers={"Content-Type": "application/x-www-form-urlencoded"}))
    except requests.RequestException as e:
        raise _provider_down("log in", e) from e
    if response.status_code in (400, 401, 403):
        raise HTTPException(status_code=401, detail="the identity provider refused the user name or password",
                            headers={"WWW-Authenticate": "Bearer"})
    try:
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError) as e:
        raise _provider_down("log in", e) from e


def install(web_app=None) -> None:
    ml_auth.from_token = from_token  # get_current_user looks it up at each request
    if web_app is not None and not any(getattr(r, "endpoint", None) is access_token for r in web_app.router.routes):
        web_app.router.routes.insert(0, APIRoute("/auth/token", access_token, methods=["POST"], include_in_schema=False))
