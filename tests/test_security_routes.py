"""Issue 16 (routes, archives, CORS, 500s, server paths) against the real server over HTTP.

* the route table (``lib/web/routes_table.py``) lists every route the live app mounts, its roles match
  the endpoints' own, docs/security.md shows the same table, and every closed route answers 404/405;
* ``PUT /session/?uncompress=true`` never unpacks anything (the issue's three tars);
* the issue's bare 500s, and routes that started a process for any name, are named 4xx now;
* no answer names a server folder; cross-origin pages cannot write; ``/reload`` is closed.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import uuid

import pytest
import requests
from conftest import APP_DIR, MEASURED, REPO, shared

IMAGE = "spinalcord_t2"
EVIL = "http://evil.example"

if APP_DIR not in sys.path:
    sys.path.insert(0, APP_DIR)
from lib.web import routes_table  # noqa: E402

COUNTS = {"named regressions": 0, "closed-route requests": 0, "4xx": 0, "5xx": 0, "archive escape attempts": 0,
          "escapes": 0}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    MEASURED["security routes (issue 16)"] = dict(COUNTS)


def tally(resp):
    COUNTS["4xx"] += 400 <= resp.status_code < 500
    COUNTS["5xx"] += resp.status_code >= 500
    return resp


def raw(method, url, **kw):
    """A request whose path is sent as written (requests would normalise '..' away)."""
    req = requests.Request(method, url, **kw).prepare()
    req.url = url
    return tally(requests.Session().send(req, timeout=60))


def datastore(server):
    return requests.get(server.url + "/datastore/?output=all", timeout=30).json()


# -- the route table -----------------------------------------------------------------------------------------
ENUMERATE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import monailabel.app as web
from fastapi.routing import APIRoute, iter_route_contexts
from monailabel.endpoints.user.auth import RBAC
from lib.web import guard, gate
from lib.datastore import stow_proxy, wado_proxy
from lib.trainers import endpoint
from lib.web import ohif_config
# the installers Sam2App.on_init_complete runs, in its order (wado_proxy: DICOMweb datastores)
guard.install(web.app); wado_proxy.install(web.app); stow_proxy.install(web.app); endpoint.install(web.app)
ohif_config.install(web.app); gate.install(web.app)
roles = {}
for ctx in iter_route_contexts(web.app.router.routes):
    route = ctx.original_route
    if not isinstance(route, APIRoute):
        continue
    found = [d.call.roles for d in route.dependant.dependencies if isinstance(d.call, RBAC)]
    for m in sorted(getattr(ctx, "methods", None) or route.methods):
        roles.setdefault(f"{m} {ctx.path}", found[0] if found else None)  # the first route of a path wins
print(json.dumps({"mounted": gate.mounted_routes(web.app), "missing": gate.not_in_table(web.app), "roles": roles}))
"""


@pytest.fixture(scope="module")
def mounted():
    """monailabel's web app with every router it can mount (auth on adds /auth/*) and the app's routes."""
    env = dict(os.environ, MONAI_LABEL_AUTH_ENABLE="true")
    out = subprocess.run([sys.executable, "-c", ENUMERATE, APP_DIR], capture_output=True, text=True, env=env,
                         timeout=300, cwd=APP_DIR)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_route_the_app_mounts_is_in_the_table(mounted, server):
    assert len(mounted["mounted"]) > 60, mounted["mounted"]
    assert mounted["missing"] == [], f"routes missing from lib/web/routes_table.py: {mounted['missing']}"
    # the live server (auth off) says the same of the routes it mounted
    with open(server.log_path) as f:
        log = f.read()
    line = re.search(r"route table: (\d+) open routes.*?; (\d+) mounted routes not in the table", log)
    assert line, "the server did not log its route table"
    assert int(line.group(1)) == len(routes_table.open_routes()) and line.group(2) == "0", line.group(0)


def test_roles_in_the_table_are_the_endpoints_own(mounted):
    from monailabel.config import settings

    names = {settings.MONAI_LABEL_AUTH_ROLE_USER: "user", settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR: "annotator",
             settings.MONAI_LABEL_AUTH_ROLE_ADMIN: "admin"}
    checked = 0
    for row in routes_table.open_routes():
        for method in row.methods:
            key = f"{method} {row.path}"
            assert key in mounted["roles"], f"open route {key} is not mounted"
            role = mounted["roles"][key]
            got = names.get(role, role) if isinstance(role, str) else ("none" if role is None else str(role))
            if row.path.startswith("/auth/") and row.path != "/auth/token/valid":
                assert got == "none", (key, role)
            elif row.path == "/auth/token/valid":
                continue  # monailabel checks the token itself (get_current_user), no role
            else:
                assert got == row.role, f"{key}: the table says {row.role}, the endpoint requires {role}"
            checked += 1
    assert checked >= 25


def test_docs_show_the_route_table():
    with open(os.path.join(REPO, "docs", "security.md")) as f:
        doc = f.read()
    assert routes_table.markdown_table() in doc, "docs/security.md: paste routes_table.markdown_table() again"


def _concrete(path: str) -> str:
    return (path.replace("{path:path}", "x/y").replace("{model}", "sam2_point").replace("{method}", "nope")
            .replace("{strategy}", "first").replace("{session_id}", "s1"))


def test_every_closed_route_answers_404_or_405_and_never_runs(server):
    before = datastore(server)
    tried = []
    for row in routes_table.ROUTES:
        if row.open:
            continue
        for method in row.methods:
            path = _concrete(row.path) + ("/" if row.path == "/static" else "")
            for headers in ({}, {"Origin": server.url}):  # Slicer; the same-origin OHIF
                resp = tally(requests.request(method, server.url + path, timeout=30, headers=headers))
                COUNTS["closed-route requests"] += 1
                tried.append((method, path, resp.status_code))
                assert resp.status_code in (404, 405), (method, path, resp.status_code, resp.text[:200])
    assert datastore(server) == before
    assert requests.get(server.url + "/train/", params={"check_if_running": "true"}, timeout=30).status_code == 404
    assert len(tried) >= 60


# -- archives ------------------------------------------------------------------------------------------------
def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                t.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
                t.addfile(info)
    return buf.getvalue()


def test_archives_are_never_unpacked(server, tmp_path):
    """Issue 16: a tar with an absolute member, a '../' member, or a symlink to a folder then a file written
    through it, all landed outside monailabel's extraction folder (as root: any file on the machine)."""
    tag = uuid.uuid4().hex[:10]
    target = tmp_path / "link_target"
    target.mkdir()
    outside_abs = os.path.join(tempfile.gettempdir(), f"sam2_3d_abs_{tag}")
    outside_rel = os.path.join(tempfile.gettempdir(), f"sam2_3d_rel_{tag}")
    studies_before = sorted(os.path.join(d, f) for d, _, fs in os.walk(server.studies) for f in fs)
    archives = {
        "absolute member": _tar([(outside_abs, "file", b"x\n")]),
        "../ member": _tar([(f"../sam2_3d_rel_{tag}", "file", b"x\n"), (f"../../sam2_3d_rel_{tag}", "file", b"x\n")]),
        "symlink then write-through": _tar([("link", "symlink", str(target)), ("link/owned.txt", "file", b"x\n")]),
        "hard link to a server file": _tar([("h", "hardlink", "/etc/passwd")]),
        "final label planted": _tar([(f"../../{os.path.basename(server.studies)}/labels/final/{IMAGE}.nii.gz",
                                      "file", b"junk")]),
    }
    for what, data in archives.items():
        for flag in ("true", "1", "True", "yes"):
            COUNTS["archive escape attempts"] += 1
            resp = tally(requests.put(server.url + "/session/", params={"uncompress": flag},
                                      files={"files": ("e.tar", data)}, timeout=60))
            assert resp.status_code == 400, (what, flag, resp.status_code, resp.text)
            assert "uncompress is not supported" in resp.json()["detail"]
    escaped = [p for p in (outside_abs, outside_rel) if os.path.exists(p)] + [str(p) for p in target.iterdir()]
    COUNTS["escapes"] += len(escaped)
    assert escaped == []
    # nothing planted in the studies folder (no file added or replaced)
    assert sorted(os.path.join(d, f) for d, _, fs in os.walk(server.studies) for f in fs) == studies_before
    # a plain upload still makes a session (uncompress=false is what monailabel's default means)
    with open(shared("spinalcord_t2", "image.nii.gz"), "rb") as f:
        resp = requests.put(server.url + "/session/", params={"uncompress": "false"},
                            files={"files": ("t2.nii.gz", f)}, timeout=60)
    assert resp.status_code == 200, resp.text


# -- the issue's bare 500s, as named regressions ----------------------------------------------------------------
DEEP = "[" * 900 + "]" * 900
MULTIBYTE = "é" * 200  # 200 characters, 400 bytes: a file name longer than any file system allows


def _session_of_two_files(server):
    resp = requests.put(server.url + "/session/", files=[("files", ("a.dcm", b"a")), ("files", ("b.dcm", b"b"))],
                        timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()["session_id"]


def _label_file():
    return open(shared("spinalcord_t2", "image.nii.gz"), "rb").read()


REGRESSIONS = [
    # name, request builder (server -> response), status, fragment of the detail
    ("params nested 900 deep (infer)", lambda s: requests.post(
        f"{s.url}/infer/sam2_2d", params={"image": IMAGE}, data={"params": '{"y": ' + DEEP + "}"}, timeout=60),
     400, "nested more than"),
    ("info nested 900 deep (kept in datastore_v2.json, the server then failed to start)", lambda s: requests.put(
        f"{s.url}/datastore/image/info", params={"image": IMAGE}, data={"info": '{"y": ' + DEEP + "}"}, timeout=60),
     400, "nested more than"),
    ("body nested 900 deep (active learning)", lambda s: requests.post(
        f"{s.url}/activelearning/first", data='{"y": ' + DEEP + "}", headers={"Content-Type": "application/json"},
        timeout=60), 400, "nested more than"),
    ("label tag of 200 multibyte characters", lambda s: requests.put(
        f"{s.url}/datastore/label", params={"image": IMAGE, "tag": MULTIBYTE},
        files={"label": ("l.nii.gz", _label_file())}, timeout=60), 400, "bytes long in UTF-8"),
    ("image id of 200 multibyte characters", lambda s: requests.put(
        f"{s.url}/datastore/image", params={"image": MULTIBYTE}, files={"file": ("i.nii.gz", _label_file())},
        timeout=60), 400, "bytes long in UTF-8"),
    ("session upload named ..", lambda s: requests.put(
        f"{s.url}/session/", files={"files": ("..", b"abc")}, timeout=60), 400, "'..'"),
    ("session upload named /", lambda s: requests.put(
        f"{s.url}/session/", files={"files": ("/", b"abc")}, timeout=60), 400, "upload file name"),
    ("session upload of 200 multibyte characters", lambda s: requests.put(
        f"{s.url}/session/", files={"files": (MULTIBYTE + ".nii.gz", b"abc")}, timeout=60), 400, "bytes long"),
    ("uncompress of a non-archive", lambda s: requests.put(
        f"{s.url}/session/", params={"uncompress": "true"}, files={"files": ("x.nii.gz", b"abc")}, timeout=60),
     400, "uncompress is not supported"),
    ("image of a multi-file session", lambda s: requests.get(
        f"{s.url}/session/{_session_of_two_files(s)}", params={"image": "true"}, timeout=60), 400, "one-file sessions"),
    ("PUT /model/sam2_point", lambda s: requests.put(
        f"{s.url}/model/sam2_point", files={"file": ("m.pt", b"abc")}, timeout=60), 404, "Not Found"),
    ("GET /logs/gpu", lambda s: requests.get(f"{s.url}/logs/gpu", timeout=60), 404, "Not Found"),
    ("GET /ohif/..", lambda s: raw("GET", f"{s.url}/ohif/.."), 404, "Not Found"),
    ("GET /ohif/%2e%2e/%2e%2e/etc/passwd", lambda s: raw("GET", f"{s.url}/ohif/%2e%2e/%2e%2e/etc/passwd"),
     404, "Not Found"),
    ("/proxy/dicom/qido on a local datastore", lambda s: requests.get(
        f"{s.url}/proxy/dicom/qido/studies", timeout=60), 404, "no DICOMweb datastore"),
    ("/proxy/dicom/wado on a local datastore", lambda s: requests.get(
        f"{s.url}/proxy/dicom/wado/studies/1/series/2", timeout=60), 404, "no DICOMweb datastore"),
    ("POST /proxy/dicom/qido", lambda s: requests.post(f"{s.url}/proxy/dicom/qido/studies", timeout=60),
     405, "Method Not Allowed"),
    ("POST /batch/infer/sam2_2d?run_sync=true", lambda s: requests.post(
        f"{s.url}/batch/infer/sam2_2d", params={"run_sync": "true"}, timeout=60), 404, "Not Found"),
    ("GET /datastore/dataset with no final labels", lambda s: requests.get(
        f"{s.url}/datastore/dataset", timeout=60), 404, "Not Found"),
    ("POST /scoring/nope (started a process)", lambda s: requests.post(f"{s.url}/scoring/nope", timeout=60),
     404, "Not Found"),
    ("POST /batch/infer/nope (started a process)", lambda s: requests.post(
        f"{s.url}/batch/infer/nope", timeout=60), 404, "Not Found"),
    ("POST /train/nope (started a process)", lambda s: requests.post(f"{s.url}/train/nope", json={}, timeout=60),
     404, "unknown trainer 'nope'"),
    ("POST /train/ with epochs abc (started a process)", lambda s: requests.post(
        f"{s.url}/train/", json={"epochs": "abc"}, timeout=60), 422, "epochs"),
    ("POST /train/ with sam2_finetune's epochs abc", lambda s: requests.post(
        f"{s.url}/train/", json={"sam2_finetune": {"epochs": "abc"}}, timeout=60), 422, "epochs"),
    ("POST /reload", lambda s: requests.post(f"{s.url}/reload", timeout=60), 404, "Not Found"),
    ("GET /ohif/tin%00y (a NUL in monailabel's static-file path: 500)", lambda s: requests.get(
        f"{s.url}/ohif/tin%00y", timeout=60), 400, "control character"),
    ("GET /datastore/image?image=... with %01 in the path", lambda s: requests.get(
        f"{s.url}/datastore/ima%01ge", timeout=60), 400, "control character"),
]


@pytest.mark.parametrize("what,call,status,fragment", REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_issue_500s_are_named_4xx(server, what, call, status, fragment):
    COUNTS["named regressions"] += 1
    before = datastore(server)
    resp = tally(call(server))
    assert resp.status_code == status, (what, resp.status_code, resp.text[:300])
    assert fragment in resp.json()["detail"], (what, resp.text[:300])
    assert datastore(server) == before
    assert requests.get(server.url + "/info/", timeout=30).status_code == 200
    assert requests.get(server.url + "/train/", params={"check_if_running": "true"}, timeout=30).status_code == 404


# -- sessions, answers without server paths -------------------------------------------------------------------
def _server_folders(server):
    folders = {server.studies, os.path.realpath(server.studies), tempfile.gettempdir(), APP_DIR, sys.prefix,
               os.path.dirname(server.log_path)}
    return [f for f in folders if len(f) > 4]


def assert_no_server_path(server, text, what):
    leaked = [f for f in _server_folders(server) if f in text]
    assert not leaked, f"{what} names server folders {leaked}: {text[:400]}"


def test_sessions_name_no_server_path_and_serve_their_image(server):
    local = shared("spinalcord_t2", "image.nii.gz")
    with open(local, "rb") as f:  # Slicer sends its local path as the file name
        resp = requests.put(server.url + "/session/", files={"files": ("/home/me/Slicer/tmp/t2.nii.gz", f)},
                            data={"client_id": "slicer-user"}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert_no_server_path(server, resp.text, "PUT /session/")
    sid, info = resp.json()["session_id"], resp.json()["session_info"]
    assert info["image"] == "t2.nii.gz" and "path" not in info
    got = requests.get(f"{server.url}/session/{sid}", timeout=30)
    assert got.status_code == 200 and got.json()["image"] == "t2.nii.gz"
    assert_no_server_path(server, got.text, "GET /session/<id>")
    image = requests.get(f"{server.url}/session/{sid}", params={"image": "true"}, timeout=30)
    assert image.status_code == 200 and image.content == open(local, "rb").read()
    gone = requests.delete(f"{server.url}/session/{sid}", timeout=30)
    assert gone.status_code == 200 and "path" not in gone.json()
    assert_no_server_path(server, gone.text, "DELETE /session/<id>")
    assert requests.get(f"{server.url}/session/{sid}", timeout=30).status_code == 404


def test_no_answer_names_a_server_folder(server):
    answers = {
        "active learning": requests.post(server.url + "/activelearning/first", json={"client_id": "paths"}, timeout=30),
        "image info": requests.get(server.url + "/datastore/image/info", params={"image": IMAGE}, timeout=30),
        "label info (none)": requests.get(server.url + "/datastore/label/info",
                                          params={"label": IMAGE, "tag": "final"}, timeout=30),
        "info": requests.get(server.url + "/info/", timeout=30),
        "datastore": requests.get(server.url + "/datastore/?output=all", timeout=30),
        "label reader error": requests.put(server.url + "/datastore/label", params={"image": IMAGE},
                                           files={"label": ("l.nii.gz", b"not an image")}, timeout=30),
        "mask reader error": requests.post(server.url + "/infer/sam2_propagate", params={"image": IMAGE},
                                           files={"label": ("m.nii.gz", b"not an image")}, data={"params": "{}"},
                                           timeout=60),
        "image upload reader error": requests.post(server.url + "/infer/sam2_point", params={"image": ""},
                                                   files={"file": ("i.nii.gz", b"not an image")},
                                                   data={"params": json.dumps({"foreground": [[1, 1, 1]]})},
                                                   timeout=60),
    }
    assert answers["active learning"].status_code == 200 and answers["active learning"].json()["id"]
    assert "path" not in answers["active learning"].json()
    assert answers["image info"].status_code == 200 and "path" not in answers["image info"].json()
    for what, resp in answers.items():
        assert resp.status_code < 500, (what, resp.text)
        assert_no_server_path(server, resp.text, what)
    # the reader errors still say what went wrong (the header check names no file at all; ITK's errors, where
    # one still comes, have the folder replaced)
    assert "cannot read the label" in answers["label reader error"].json()["detail"]


# -- the bundled OHIF ---------------------------------------------------------------------------------------------
def test_ohif_files_are_served_from_its_folder_only(server):
    index = requests.get(server.url + "/ohif/", timeout=30)
    assert index.status_code == 200 and "<html" in index.text.lower()
    config = requests.get(server.url + "/ohif/app-config.js", timeout=30)
    assert config.status_code == 200 and "window.config" in config.text
    route = requests.get(server.url + "/ohif/viewer", params={"StudyInstanceUIDs": "1.2"}, timeout=30)
    assert route.status_code == 200 and route.text == index.text  # the viewer's own routes get index.html
    for path in ("/ohif/..", "/ohif/../../etc/passwd", "/ohif/%2e%2e/main.py", "/ohif/nope.js", "/ohif//etc/passwd"):
        resp = raw("GET", server.url + path)
        assert resp.status_code == 404 or (resp.status_code == 200 and resp.text == index.text), (path, resp.text[:200])
        assert "root:" not in resp.text


# -- cross-origin pages -------------------------------------------------------------------------------------------
def test_other_origins_may_read_but_not_write(server):
    for method in ("PUT", "POST", "DELETE"):
        pre = tally(requests.options(server.url + "/datastore/label", timeout=30, headers={
            "Origin": EVIL, "Access-Control-Request-Method": method}))
        assert pre.status_code == 403, (method, pre.status_code, pre.text)
        assert "access-control-allow-origin" not in pre.headers and "*" not in str(pre.headers)
    ok = requests.options(server.url + "/datastore/", timeout=30, headers={
        "Origin": EVIL, "Access-Control-Request-Method": "GET"})
    assert ok.status_code == 200 and ok.headers.get("access-control-allow-origin") == "*"
    got = requests.get(server.url + "/info/", headers={"Origin": EVIL}, timeout=30)
    assert got.status_code == 200 and got.headers.get("access-control-allow-origin") == "*"
    before = datastore(server)
    # a form POST needs no preflight: the browser sends it, so the server itself must refuse it
    form = tally(requests.post(server.url + "/infer/sam2_2d", params={"image": IMAGE}, headers={"Origin": EVIL},
                               data={"params": json.dumps({"foreground": [[30, 27, 26]], "slice": 26,
                                                           "save_label": True, "label_tag": "final"})}, timeout=60))
    assert form.status_code == 403 and "SAM2_3D_CORS_ORIGINS" in form.text
    for origin in (EVIL, "null"):
        resp = tally(requests.post(server.url + "/activelearning/first", headers={"Origin": origin},
                                   json={"client_id": "page"}, timeout=30))
        assert resp.status_code == 403, (origin, resp.text)
    assert datastore(server) == before
    # same origin (the OHIF at /ohif/) and no Origin at all (Slicer) may write
    same = requests.post(server.url + "/activelearning/first", headers={"Origin": server.url},
                         json={"client_id": "ohif"}, timeout=30)
    assert same.status_code == 200, same.text
    assert requests.post(server.url + "/activelearning/first", json={"client_id": "slicer"},
                         timeout=30).status_code == 200
