"""MONAI Label's token check, made to work with the PyJWT this app installs.

monailabel 0.8.5's ``from_token`` calls ``jwt.decode`` without ``algorithms``; PyJWT 2 refuses that, so
with ``MONAI_LABEL_AUTH_ENABLE=true`` every token, valid or not, was answered 401. This is the same
function with the algorithm named (RS256, what Keycloak signs with unless configured otherwise; set
``SAM2_3D_AUTH_ALGORITHMS`` to change it), put in place of monailabel's when the server starts.
"""

from __future__ import annotations

import os

import jwt

from monailabel.config import settings
from monailabel.endpoints.user import auth as ml_auth

ALGORITHMS = [a.strip() for a in os.environ.get("SAM2_3D_AUTH_ALGORITHMS", "RS256").split(",") if a.strip()]


def from_token(token: str):
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return ml_auth.DEFAULT_USER
    key = ml_auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    payload = jwt.decode(token, key, algorithms=ALGORITHMS,
                         options={"verify_signature": True, "verify_aud": False, "verify_exp": True})
    roles = payload
    for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):  # e.g. realm_access#roles
        roles = roles.get(part) if isinstance(roles, dict) else None
    return ml_auth.User(
        username=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME),
        email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=roles or [],
    )


def install() -> None:
    ml_auth.from_token = from_token  # get_current_user looks it up at each request
