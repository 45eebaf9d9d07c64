"""MONAI Label's own authentication (MONAI_LABEL_AUTH_ENABLE) in front of this app, with its roles.

monailabel checks a Keycloak-style bearer JWT (RS256) against the public key it fetches from
``MONAI_LABEL_AUTH_REALM_URI``. No Keycloak can run here, so a **stand-in identity provider** (a tiny
HTTP server on loopback, named as such) publishes a key pair's public key; the tokens are signed with its
private key. Everything on the server side is monailabel's real auth code and this app's routes.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import Server
from hostile_support import put_label, write_label_like, write_volume

USER, ANNOTATOR, REVIEWER, ADMIN = "monailabel-user", "monailabel-annotator", "monailabel-reviewer", "monailabel-admin"


class StandInIdentityProvider:
    """Serves ``GET <realm>`` -> ``{"public_key": ...}`` like Keycloak's realm endpoint (stand-in, not Keycloak)."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        body = json.dumps({"realm": "monailabel", "public_key": base64.b64encode(der).decode()}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_port}/realms/monailabel"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, roles, username="alice", expires_in=600, key=None) -> str:
        payload = {"preferred_username": username, "email": f"{username}@example.org", "name": username,
                   "realm_access": {"roles": roles}, "exp": int(time.time()) + expires_in}
        return jwt.encode(payload, key or self.key, algorithm="RS256")


class AuthServer(Server):
    def wait_ready(self, timeout: float = 180.0) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; log:\n{self.tail()}")
            try:
                if requests.get(self.url + "/auth/", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"server not ready; log:\n{self.tail()}")


VIEWER = "https://viewer.example.org"


@pytest.fixture(scope="module")
def idp():
    provider = StandInIdentityProvider()
    yield provider
    provider.httpd.shutdown()


@pytest.fixture(scope="module")
def auth_server(idp, tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    studies = root / "studies"
    studies.mkdir()
    # exposed as the README says to: auth on, and one viewer origin allowed (with credentials)
    srv = AuthServer(str(studies), str(root), env={"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": idp.realm,
                                                   "SAM2_3D_CORS_ORIGINS": VIEWER})
    srv.image = write_volume(root / "img.nii.gz")
    with open(root / "img.nii.gz", "rb") as f:  # added through the API, as an admin
        resp = requests.put(srv.url + "/datastore/image", params={"image": "img"}, files={"file": ("img.nii.gz", f)},
                            headers={"Authorization": f"Bearer {idp.token([USER, ANNOTATOR, ADMIN])}"}, timeout=60)
    assert resp.status_code == 200, resp.text
    srv.label = write_label_like(srv.image, root / "label.nii.gz")
    yield srv
    srv.stop()


def test_a_configured_cors_origin_gets_credentials_and_others_none(auth_server):
    resp = requests.options(auth_server.url + "/datastore/", headers={
        "Origin": VIEWER, "Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "authorization"},
        timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("access-control-allow-origin") == VIEWER
    assert resp.headers.get("access-control-allow-credentials") == "true"
    evil = requests.options(auth_server.url + "/datastore/", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "PUT"}, timeout=30)
    # refused: no allow-origin, so a browser lets the page read nothing (Starlette answers the preflight 400)
    assert evil.status_code == 400 and evil.headers.get("access-control-allow-origin") is None


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_auth_is_announced_and_required(auth_server, idp):
    assert requests.get(auth_server.url + "/auth/", timeout=30).json()["enabled"] is True
    assert requests.get(auth_server.url + "/info/", timeout=30).status_code == 401
    assert requests.get(auth_server.url + "/datastore/", timeout=30).status_code == 401
    expired = idp.token([USER], expires_in=-60)
    assert requests.get(auth_server.url + "/info/", headers=bearer(expired), timeout=30).status_code == 401
    forged = idp.token([USER, ADMIN], key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert requests.get(auth_server.url + "/info/", headers=bearer(forged), timeout=30).status_code == 401
    resp = requests.post(auth_server.url + "/infer/sam2_2d", params={"image": "img"},
                         data={"params": json.dumps({"foreground": [[16, 16, 3]], "slice": 3})}, timeout=60)
    assert resp.status_code == 401  # this app's own /infer route keeps monailabel's auth dependency


def test_roles_user_annotator_reviewer_admin(auth_server, idp):
    url = auth_server.url
    user, annotator = bearer(idp.token([USER], "ursula")), bearer(idp.token([USER, ANNOTATOR], "anna"))
    reviewer, admin = bearer(idp.token([USER, REVIEWER], "rita")), bearer(idp.token([USER, ADMIN], "adam"))
    assert requests.get(url + "/info/", headers=user, timeout=30).status_code == 200
    resp = requests.post(url + "/infer/sam2_2d", params={"image": "img", "output": "json"}, headers=user,
                         data={"params": json.dumps({"foreground": [[16, 16, 3]], "slice": 3})}, timeout=120)
    assert resp.status_code == 200, resp.text  # any user may run the models
    with open(auth_server.label, "rb") as f:
        resp = requests.put(url + "/datastore/label", params={"image": "img", "tag": "final"}, headers=user,
                            files={"label": ("l.nii.gz", f)}, timeout=60)
    assert resp.status_code == 403 and ANNOTATOR in resp.json()["detail"]
    for who in (reviewer,):  # monailabel 0.8.5 gives the reviewer role no endpoint of its own
        with open(auth_server.label, "rb") as f:
            resp = requests.put(url + "/datastore/label", params={"image": "img"}, headers=who,
                                files={"label": ("l.nii.gz", f)}, timeout=60)
        assert resp.status_code == 403
    with open(auth_server.label, "rb") as f:
        resp = requests.put(url + "/datastore/label", params={"image": "img", "tag": "final"}, headers=annotator,
                            files={"label": ("l.nii.gz", f)}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert requests.delete(url + "/datastore/label", params={"id": "img", "tag": "final"}, headers=annotator,
                           timeout=30).status_code == 403
    resp = requests.delete(url + "/datastore/label", params={"id": "img", "tag": "final"}, headers=admin, timeout=30)
    assert resp.status_code == 200, resp.text
    # checks still apply behind auth
    resp = requests.delete(url + "/datastore/image", params={"id": "../x"}, headers=admin, timeout=30)
    assert resp.status_code == 400
