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
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

import jwt
import pytest
import requests
from conftest import Server
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hostile_support import write_label_like, write_volume

USER, ANNOTATOR, REVIEWER, ADMIN = "monailabel-user", "monailabel-annotator", "monailabel-reviewer", "monailabel-admin"
CLIENT_ID = "monailabel-app"  # MONAI_LABEL_AUTH_CLIENT_ID's default
PASSWORD = "correct horse"


class StandInIdentityProvider:
    """Serves ``GET <realm>`` -> ``{"public_key": ...}`` like Keycloak's realm endpoint (stand-in, not Keycloak)."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        body = json.dumps({"realm": "monailabel", "public_key": base64.b64encode(der).decode()}).encode()

        provider = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, status, payload: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path.endswith("/.well-known/openid-configuration"):  # where Slicer's log-in posts
                    return self._json(200, json.dumps({"token_endpoint": provider.realm + "/protocol/openid-connect/token"}).encode())
                self._json(200, body)

            def do_POST(self):  # Keycloak's password grant: 401 invalid_grant for a wrong password
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                if form.get("password") != PASSWORD or form.get("client_id") != CLIENT_ID:
                    return self._json(401, b'{"error":"invalid_grant","error_description":"Invalid user credentials"}')
                token = provider.token([USER], form.get("username", "alice"))
                self._json(200, json.dumps({"access_token": token, "token_type": "Bearer"}).encode())

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_port}/realms/monailabel"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, roles, username="alice", expires_in=600, key=None, **claims) -> str:
        """A token as Keycloak issues it to the server's client (``azp``); ``claims`` override or, set to
        None, remove claims."""
        payload = {"preferred_username": username, "email": f"{username}@example.org", "name": username,
                   "realm_access": {"roles": roles}, "exp": int(time.time()) + expires_in,
                   "azp": CLIENT_ID, "aud": "account"}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
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


# -- issue 16: admin routes, closed routes and archives with auth on ------------------------------------------
def _concrete(path):
    return (path.replace("{path:path}", "x").replace("{model}", "sam2_finetune").replace("{strategy}", "first")
            .replace("{session_id}", "s1"))


def test_every_admin_and_annotator_route_refuses_lower_roles(auth_server, idp):
    """Driven by the route table: each open route's role is enforced (401 without a token, 403 below it)."""
    from lib.web import routes_table

    user, annotator = bearer(idp.token([USER], "ursula")), bearer(idp.token([USER, ANNOTATOR], "anna"))
    checked = []
    for row in routes_table.open_routes():
        if row.role not in ("admin", "annotator"):
            continue
        lower = [user, annotator] if row.role == "admin" else [user]
        for method in row.methods:
            url = auth_server.url + _concrete(row.path)
            assert requests.request(method, url, timeout=30).status_code == 401, (method, row.path)
            for who in lower:
                resp = requests.request(method, url, headers=who, timeout=30)
                assert resp.status_code == 403, (method, row.path, resp.status_code, resp.text[:200])
            checked.append((method, row.path))
    # 4 of monailabel's train routes + the fine-tuned versions' rollback and export (lib/trainers/endpoint.py)
    assert len([c for c in checked if c[1].startswith("/train/")]) == 6 and len(checked) >= 10, checked
    # an admin reaches them: the checks answer (nothing is started or deleted here)
    admin = bearer(idp.token([USER, ADMIN], "adam"))
    resp = requests.post(auth_server.url + "/train/", json={"epochs": "abc"}, headers=admin, timeout=30)
    assert resp.status_code == 422, resp.text
    assert requests.post(auth_server.url + "/train/nope", json={}, headers=admin, timeout=30).status_code == 404


def test_reload_and_closed_routes_are_404_for_everyone(auth_server, idp):
    """``POST /reload`` needed no login (auth on or off) and leaked ~150 MB per call: now closed, like every
    route no client needs, even for an admin."""
    admin = bearer(idp.token([USER, ANNOTATOR, ADMIN], "adam"))
    for method, path in [("POST", "/reload"), ("GET", "/logs/"), ("GET", "/logs/gpu"), ("PUT", "/model/sam2_point"),
                         ("GET", "/model/sam2_point"), ("POST", "/scoring/nope"), ("POST", "/batch/infer/nope"),
                         ("GET", "/datastore/dataset"), ("GET", "/openapi.json"), ("POST", "/infer/wsi/sam2_point")]:
        for headers in ({}, admin):
            resp = requests.request(method, auth_server.url + path, headers=headers, timeout=30)
            assert resp.status_code == 404, (method, path, resp.status_code, resp.text[:200])


def test_archives_and_cross_origin_writes_with_auth_on(auth_server, idp, tmp_path):
    import io
    import tarfile

    user = bearer(idp.token([USER], "ursula"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo(str(tmp_path / "PWNED"))
        info.size = 2
        t.addfile(info, io.BytesIO(b"x\n"))
    resp = requests.put(auth_server.url + "/session/?uncompress=true", files={"files": ("e.tar", buf.getvalue())},
                        headers=user, timeout=30)
    assert resp.status_code == 400 and not (tmp_path / "PWNED").exists(), resp.text
    # a page of another origin holding a valid token still cannot write; the configured viewer can
    evil = requests.post(auth_server.url + "/activelearning/first", json={"client_id": "x"},
                         headers={**user, "Origin": "http://evil.example"}, timeout=30)
    assert evil.status_code == 403
    viewer = requests.post(auth_server.url + "/activelearning/first", json={"client_id": "x"},
                           headers={**user, "Origin": VIEWER}, timeout=30)
    assert viewer.status_code == 200, viewer.text


# -- token checks (issue 16): each was accepted or answered 500 before ---------------------------------------
def test_a_token_for_another_client_of_the_realm_is_refused(auth_server, idp):
    other = idp.token([USER, ADMIN], azp="another-app", aud="another-app")
    resp = requests.get(auth_server.url + "/info/", headers=bearer(other), timeout=30)
    assert resp.status_code == 401 and "another client" in resp.json()["detail"], resp.text
    listed = idp.token([USER], azp="another-app", aud=["account", CLIENT_ID])  # named in aud: for this server
    assert requests.get(auth_server.url + "/info/", headers=bearer(listed), timeout=30).status_code == 200


def test_a_token_without_expiry_is_refused(auth_server, idp):
    forever = idp.token([USER, ADMIN], exp=None)
    assert requests.get(auth_server.url + "/info/", headers=bearer(forever), timeout=30).status_code == 401


@pytest.mark.parametrize("roles_claim", [USER, {"r": USER}, [USER, 3]], ids=["string", "object", "list-with-number"])
def test_a_roles_claim_of_the_wrong_type_is_401_not_500(auth_server, idp, roles_claim):
    token = idp.token([], realm_access={"roles": roles_claim})
    resp = requests.get(auth_server.url + "/info/", headers=bearer(token), timeout=30)
    assert resp.status_code == 401 and "roles claim" in resp.json()["detail"], resp.text
    nameless = idp.token([USER], preferred_username=None)
    assert requests.get(auth_server.url + "/info/", headers=bearer(nameless), timeout=30).status_code == 401


def test_log_in_with_a_refused_password_is_401_and_a_good_one_a_token(auth_server, idp):
    resp = requests.post(auth_server.url + "/auth/token", data={"username": "alice", "password": "wrong"}, timeout=30)
    assert resp.status_code == 401 and "refused" in resp.json()["detail"], resp.text
    resp = requests.post(auth_server.url + "/auth/token", data={"username": "alice", "password": PASSWORD}, timeout=30)
    assert resp.status_code == 200, resp.text
    token = resp.json()["access_token"]
    assert requests.get(auth_server.url + "/info/", headers=bearer(token), timeout=30).status_code == 200


def test_an_unreachable_identity_provider_is_502_with_a_message(idp, tmp_path_factory):
    root = tmp_path_factory.mktemp("auth-down")
    (root / "studies").mkdir()
    from conftest import free_port

    down = f"http://127.0.0.1:{free_port()}/realms/monailabel"  # nothing listens there
    srv = AuthServer(str(root / "studies"), str(root), env={"MONAI_LABEL_AUTH_ENABLE": "true",
                                                            "MONAI_LABEL_AUTH_REALM_URI": down,
                                                            "MONAI_LABEL_AUTH_TIMEOUT": "3"})
    try:
        resp = requests.get(srv.url + "/info/", headers=bearer(idp.token([USER])), timeout=60)
        assert resp.status_code == 502 and "identity provider" in resp.json()["detail"], resp.text
        resp = requests.post(srv.url + "/auth/token", data={"username": "alice", "password": PASSWORD}, timeout=60)
        assert resp.status_code == 502 and "identity provider" in resp.json()["detail"], resp.text
        assert requests.get(srv.url + "/auth/", timeout=30).status_code == 200  # the server stays up
    finally:
        srv.stop()
