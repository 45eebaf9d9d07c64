"""Every route monailabel 0.8.5 and this app mount, and what may reach it (deny by default).

A route is *open* only if Slicer, OHIF or the README needs it; then the app checks it as the row says
(``lib/web/gate.py`` lets a request through only when its method and path match an open row). Every
other route monailabel mounts answers 404 (405 where another method of the same path is open) and
never runs. docs/security.md holds the same table (``markdown_table()``; a test keeps them equal), and
``tests/test_security_routes.py`` fails on any route the live app mounts that is missing here.

``role`` is the MONAI Label role a route requires when auth is on (``MONAI_LABEL_AUTH_ENABLE``):
``user``, ``annotator`` or ``admin`` (``settings.MONAI_LABEL_AUTH_ROLE_*``), ``none`` (login itself).
"""

from __future__ import annotations

from dataclasses import dataclass

SLICER, OHIF, README = "Slicer", "OHIF", "README"


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    path: str  # as mounted (FastAPI path template), without MONAI_LABEL_API_STR
    callers: str  # who calls it ("-": nobody this app serves)
    role: str  # role needed with auth on; "-" for a closed route
    checks: str  # what the app checks before monailabel's code runs (or why the route is closed)
    open: bool = True


def _closed(methods, path, why):
    return Route(tuple(methods), path, "-", "-", why, open=False)


NAMES = "ids, tags and session ids are plain names (lib/datastore/names.py)"

ROUTES: list[Route] = [
    # -- login (mounted by monailabel only when auth is on) --
    Route(("GET",), "/auth/", f"{SLICER}", "none", "says whether auth is on (Slicer asks for a password when it is)"),
    Route(("POST",), "/auth/token", f"{SLICER}", "none", "password grant forwarded to the identity provider"),
    Route(("GET",), "/auth/token/valid", f"{SLICER}", "user", "token signature, expiry (lib/web/auth.py)"),
    # -- app --
    Route(("GET",), "/info/", f"{SLICER}, {OHIF}", "user", "none needed (read-only); no server path in the answer"),
    Route(("POST",), "/infer/{model}", f"{SLICER}, {OHIF}", "user",
          f"model known; params a bounded JSON object; prompts, slices, files, {NAMES} (lib/web/guard.py)"),
    Route(("POST",), "/activelearning/{strategy}", f"{SLICER}, {OHIF}", "user",
          "strategy known (404); body a bounded JSON object; no `path` in the answer (lib/web/wrapped.py)"),
    Route(("PUT",), "/session/", SLICER, "user",
          "no `uncompress` (400: archives are never unpacked); upload file names plain; no server path in the answer"),
    Route(("GET",), "/session/{session_id}", SLICER, "user",
          f"{NAMES}; `image=true` only for a one-file session (400); no server path in the answer"),
    Route(("DELETE",), "/session/{session_id}", SLICER, "user", f"{NAMES}; no server path in the answer"),
    # -- datastore --
    Route(("GET",), "/datastore/", SLICER, "user", "`output` one of all/stats/train (422)"),
    Route(("PUT",), "/datastore/", SLICER, "annotator", f"upload image: {NAMES}; params a JSON object (lib/web/guard.py)"),
    Route(("PUT",), "/datastore/image", README, "annotator", "as PUT /datastore/ (lib/web/guard.py)"),
    Route(("GET", "HEAD"), "/datastore/image", SLICER, "user", f"{NAMES} (lib/datastore/history.py)"),
    Route(("DELETE",), "/datastore/image", README, "admin", f"{NAMES} (lib/datastore/history.py)"),
    Route(("GET",), "/datastore/image/info", README, "user", f"{NAMES}; no `path` in the answer"),
    Route(("PUT",), "/datastore/image/info", README, "annotator", f"{NAMES}; `info` a JSON object (lib/web/guard.py)"),
    Route(("PUT",), "/datastore/label", f"{SLICER}, {OHIF}", "annotator",
          f"{NAMES}; the label read and checked against the image (lib/web/guard.py, lib/datastore/label_checks.py)"),
    Route(("GET", "HEAD"), "/datastore/label", SLICER, "user", f"{NAMES} (lib/datastore/history.py)"),
    Route(("DELETE",), "/datastore/label", README, "admin", f"{NAMES} (lib/datastore/history.py)"),
    Route(("GET",), "/datastore/label/info", README, "user", f"{NAMES}; no `path` in the answer"),
    Route(("PUT",), "/datastore/label/info", README, "annotator", f"{NAMES}; `info` a JSON object (lib/web/guard.py)"),
    # -- training --
    Route(("GET",), "/train/", f"{SLICER}, {OHIF}, {README}", "user", "none needed (read-only status)"),
    Route(("POST",), "/train/", OHIF, "admin",
          "parameters of sam2_finetune checked (422) before a process starts (lib/web/wrapped.py)"),
    Route(("POST",), "/train/{model}", f"{SLICER}, {README}", "admin",
          "trainer known (404); parameters checked (422) before a process starts (lib/trainers/endpoint.py)"),
    Route(("POST",), "/train/sam2_finetune", f"{SLICER}, {README}", "admin",
          "parameters checked (422) before a process starts (lib/trainers/endpoint.py)"),
    Route(("DELETE",), "/train/", f"{SLICER}, {OHIF}, {README}", "admin", "none needed (stops training)"),
    Route(("GET",), "/train/sam2_finetune/versions", README, "user",
          "none needed (read-only list; no server paths) (lib/trainers/endpoint.py)"),
    Route(("PUT",), "/train/sam2_finetune/versions/in_use", README, "admin",
          "`version` a known, loadable version, `base` or `newest` (400/409) (lib/engine/weights.py)"),
    Route(("GET",), "/train/sam2_finetune/versions/{name}/export", README, "admin",
          "`name` a known, loadable version or `base` (400/409); a temporary file, removed after sending"),
    # -- OHIF bundled with monailabel, and its DICOMweb proxy --
    Route(("GET",), "/ohif/{path:path}", OHIF, "user",
          "files inside monailabel's OHIF folder only (404 for `..` and anything outside)"),
    Route(("GET",), "/ohif/app-config.js", OHIF, "user",
          "none needed: the app's own OHIF configuration (lib/web/ohif_config.py)"),
    Route(("GET",), "/ohif/sam2-3d/extension.mjs", OHIF, "user",
          "none needed: the app's own OHIF extension, one fixed file (lib/web/ohif_config.py)"),
    *[Route(("POST",), p, OHIF, "annotator",
            "404 unless the datastore is DICOMweb; multipart DICOM only (415); a SEG must reference a series of the "
            "datastore and lie on its grid (400/422) before the PACS sees it (lib/datastore/stow_proxy.py)")
      for p in ("/proxy/dicom/wado/studies", "/proxy/dicom/wado/studies/{study}",
                "/proxy/dicom/stow/studies", "/proxy/dicom/stow/studies/{study}")],
    Route(("GET",), "/proxy/dicom/qido/{path:path}", OHIF, "user", "404 unless the datastore is DICOMweb; 502 if the PACS fails"),
    Route(("GET",), "/proxy/dicom/wado/{path:path}", OHIF, "user",
          "404 unless the datastore is DICOMweb; 502 if the PACS fails (lib/datastore/wado_proxy.py)"),
    # -- closed: nothing this app serves calls them --
    _closed(("GET", "HEAD"), "/openapi.json", "API schema: not needed by any client"),
    _closed(("GET", "HEAD"), "/docs", "API docs page (loads scripts from a CDN)"),
    _closed(("GET",), "/", "Swagger page (loads scripts from a CDN)"),
    _closed(("GET",), "/favicon.ico", "icon of the docs pages"),
    _closed(("GET", "HEAD"), "/static", "monailabel's static folder (OHIF is served at /ohif/)"),
    _closed(("POST",), "/reload", "drops the app instance (leaked ~150 MB per call); admin-only in intent, needed by nobody"),
    _closed(("GET",), "/model/{model}", "weights download: no client; the app's weights live in model_dir"),
    _closed(("GET",), "/model/info/{model}", "no client"),
    _closed(("PUT",), "/model/{model}", "weights upload: would replace the served model (answered 500)"),
    _closed(("DELETE",), "/model/{model}", "no client"),
    _closed(("POST",), "/infer/wsi/{model}", "pathology (whole-slide) inference: not this app"),
    _closed(("POST",), "/infer/wsi_v2/{model}", "pathology (whole-slide) inference: not this app"),
    _closed(("GET",), "/batch/infer", "no batch inference task in this app"),
    _closed(("POST",), "/batch/infer/{model}", "started a process for any model name; 500 with run_sync"),
    _closed(("DELETE",), "/batch/infer", "no batch inference task in this app"),
    _closed(("GET",), "/scoring/", "no scoring method in this app"),
    _closed(("POST",), "/scoring/", "no scoring method in this app"),
    _closed(("POST",), "/scoring/{method}", "started a process for any method name"),
    _closed(("DELETE",), "/scoring/", "no scoring method in this app"),
    _closed(("DELETE",), "/datastore/", "deprecated duplicate of DELETE /datastore/image"),
    _closed(("PUT",), "/datastore/updatelabelinfo", "deprecated duplicate of PUT /datastore/label/info"),
    _closed(("GET",), "/datastore/dataset", "zip of the whole datastore: no client; 500 without final labels, zip left in /tmp"),
    _closed(("GET",), "/logs/", "server log (names server paths): no client"),
    _closed(("GET",), "/logs/gpu", "nvidia-smi output: no client; 500 without nvidia-smi"),
    _closed(("GET", "POST"), "/proxy/dicom/{path:path}", "untyped DICOMweb proxy: OHIF uses qido/wado only"),
    _closed(("POST",), "/proxy/dicom/qido/{path:path}", "OHIF only GETs"),
    _closed(("POST",), "/proxy/dicom/wado/{path:path}", "OHIF only GETs, and POSTs a SEG to wado/studies (open above)"),
    _closed(("GET", "POST"), "/proxy/dicom/stow/{path:path}", "monailabel's untyped STOW proxy: the app's own STOW route "
            "(stow/studies, open above) checks what it stores"),
]


def open_routes() -> list[Route]:
    return [r for r in ROUTES if r.open]


def lookup(method: str, path: str) -> Route | None:
    """The row for a mounted route (its method and path template), open rows first."""
    rows = [r for r in ROUTES if r.path == path and method in r.methods]
    rows.sort(key=lambda r: not r.open)
    return rows[0] if rows else None


def markdown_table() -> str:
    lines = ["| method | route | called by | role (auth on) | what the app checks |", "|---|---|---|---|---|"]
    for r in ROUTES:
        if r.open:
            lines.append(f"| {' '.join(r.methods)} | `{r.path}` | {r.callers} | {r.role} | {r.checks} |")
    lines.append("| | **closed (404/405)** | | | **why** |")
    for r in ROUTES:
        if not r.open:
            lines.append(f"| {' '.join(r.methods)} | `{r.path}` | - | - | {r.checks} |")
    return "\n".join(lines) + "\n"
