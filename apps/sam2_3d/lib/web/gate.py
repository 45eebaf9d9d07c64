"""One gate in front of every route (installed last, from ``Sam2App.on_init_complete``).

* **Deny by default**: a request reaches a route only if its method and path match an open row of
  ``routes_table.ROUTES``; any other path answers 404, another method of an open path 405. Routes
  monailabel mounts and no client needs (``/reload``, ``/model/*``, ``/batch/*``, ``/scoring/*``,
  ``/logs/*``, ...) never run. Routes the live app mounts that the table does not list are logged.
* **Cross-origin writes**: a request that can change state (any method but GET/HEAD/OPTIONS) from a
  browser page of another origin is refused (403), and so is its CORS preflight, unless that origin is
  in ``SAM2_3D_CORS_ORIGINS``. Browsers send ``Origin`` on such requests; Slicer sends none; the OHIF
  served at ``/ohif/`` is same-origin. This also covers the form POSTs a page may send without a
  preflight. Read-only GETs stay open to any origin (without credentials).
* **No server paths in answers**: JSON and text answers have the server's folders (temp, studies,
  sessions, app, Python) replaced by placeholders such as ``<temp>``.
* The app's versions of monailabel routes (``wrapped.py``) are registered in front of monailabel's.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from urllib.parse import urlsplit

from fastapi.routing import iter_route_contexts
from monailabel.config import settings
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import compile_path

from . import routes_table, wrapped
from .guard import cors_origins
from .monailabel_adapter import install_routes_first

logger = logging.getLogger(__name__)

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def mounted_routes(web_app) -> list[tuple[str, str, str]]:
    """(method, path, endpoint) of every route the web app mounts, in routing order (a mount: method '*')."""
    prefix = settings.MONAI_LABEL_API_STR
    out = []
    for ctx in iter_route_contexts(web_app.router.routes):
        route = ctx.original_route
        path = ctx.path or ""
        if prefix and path.startswith(prefix):
            path = path[len(prefix):] or "/"
        endpoint = getattr(route, "endpoint", None)
        name = f"{endpoint.__module__}.{endpoint.__name__}" if endpoint else type(route).__name__
        methods = getattr(ctx, "methods", None) or getattr(route, "methods", None)
        for method in sorted(methods) if methods else ["*"]:
            out.append((method, path, name))
    return out


def not_in_table(web_app) -> list[tuple[str, str, str]]:
    missing = []
    for method, path, name in mounted_routes(web_app):
        if method == "*":  # a mount (monailabel's /static): listed with GET/HEAD
            if routes_table.lookup("GET", path) is None:
                missing.append((method, path, name))
        elif routes_table.lookup(method, path) is None:
            missing.append((method, path, name))
    return missing


def _server_folders(app=None) -> list[tuple[str, str]]:
    folders = {
        tempfile.gettempdir(): "<temp>",
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))): "<app>/lib",
        sys.prefix: "<python>",
        os.path.expanduser("~"): "<home>",
    }
    studies = settings.MONAI_LABEL_STUDIES or ""
    if studies and not studies.startswith(("http://", "https://")):
        folders[studies] = "<studies>"
    if settings.MONAI_LABEL_SESSION_PATH:
        folders[settings.MONAI_LABEL_SESSION_PATH] = "<sessions>"
    if app is not None:
        folders[app.app_dir] = "<app>"
        versions = getattr(getattr(app, "model_config", None), "versions_dir", None)
        if versions:
            folders[versions] = "<model_dir>"
        folders[app.studies] = folders.get(app.studies, "<studies>")
        sessions = app.sessions()
        if sessions is not None:
            folders[sessions.store_path] = "<sessions>"
    pairs = {}
    for folder, label in folders.items():
        if not folder or folder.startswith(("http://", "https://")) or len(folder) < 4:
            continue
        for variant in {folder.rstrip("/"), os.path.realpath(folder).rstrip("/")}:
            if len(variant) >= 4:
                pairs[variant] = label
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))  # inner folders first


class Gate:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app, origins=(), folders=()):
        self.app = app
        self.origins = set(origins)
        prefix = settings.MONAI_LABEL_API_STR
        self.rules = [(compile_path(prefix + r.path)[0], r) for r in routes_table.open_routes()]
        self.folders = [(a.encode(), b.encode()) for a, b in folders]

    def _foreign(self, headers: dict) -> str | None:
        origin = headers.get("origin")
        if origin is None or origin in self.origins:
            return None
        if origin != "null" and urlsplit(origin).netloc == headers.get("host", ""):
            return None  # same origin (e.g. the OHIF served at /ohif/)
        return origin

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope["method"]
        requested = headers.get("access-control-request-method", "").upper()
        if method == "OPTIONS" and "origin" in headers and requested:
            # with SAM2_3D_CORS_ORIGINS set, CORS itself refuses other origins' preflights (400)
            if requested not in SAFE_METHODS and not self.origins and self._foreign(headers):
                return await self._refuse_cross_origin(headers["origin"], scope, receive, send)
            return await self.app(scope, receive, send)  # CORS answers the preflight
        if method not in SAFE_METHODS and self._foreign(headers):
            return await self._refuse_cross_origin(headers["origin"], scope, receive, send)
        path = scope["path"]
        if any(ord(c) < 32 or c == "\x7f" for c in path):
            # no route has a use for control characters, and a NUL makes the file routes' os calls raise (500)
            return await JSONResponse({"detail": "the URL path holds a control character (e.g. %00)"}, 400)(
                scope, receive, send)
        matching = [rule for regex, rule in self.rules if regex.match(path)]
        if not matching:
            return await JSONResponse({"detail": "Not Found"}, 404)(scope, receive, send)
        allowed = sorted({m for rule in matching for m in rule.methods})
        if method not in allowed:
            return await JSONResponse({"detail": "Method Not Allowed"}, 405,
                                      headers={"Allow": ", ".join(allowed)})(scope, receive, send)
        await self.app(scope, receive, self._scrubbing(send) if self.folders else send)

    async def _refuse_cross_origin(self, origin, scope, receive, send):
        response = PlainTextResponse(
            f"cross-origin request from {origin} refused: only GET is open to other origins; "
            f"list the origin in SAM2_3D_CORS_ORIGINS (with auth on) to allow it", status_code=403)
        await response(scope, receive, send)

    def _scrubbing(self, send):
        """Replace server folders in JSON/text answers (buffered; files and multipart pass untouched)."""
        state = {"start": None, "body": []}

        async def wrapped_send(message):
            if message["type"] == "http.response.start":
                ctype = dict(message.get("headers", [])).get(b"content-type", b"")
                if ctype.startswith((b"application/json", b"text/plain")):
                    state["start"] = message
                    return
                return await send(message)
            if message["type"] == "http.response.body" and state["start"] is not None:
                state["body"].append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = b"".join(state["body"])
                for folder, label in self.folders:
                    body = body.replace(folder, label)
                start = state["start"]
                start["headers"] = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                start["headers"].append((b"content-length", str(len(body)).encode()))
                state["start"] = None
                await send(start)
                return await send({"type": "http.response.body", "body": body})
            await send(message)

        return wrapped_send


def _insert_position(routes) -> int:
    """After the app's own routes (they come first), before monailabel's."""
    n = 0
    while n < len(routes) and getattr(getattr(routes[n], "endpoint", None), "__module__", "").startswith("lib."):
        n += 1
    return n


def install(web_app, app=None) -> None:
    """``app``: the running Sam2App (its folders are hidden in answers)."""
    routes = web_app.router.routes
    if not install_routes_first(web_app, wrapped.ROUTES, at=_insert_position(routes)):
        return
    folders = _server_folders(app)
    web_app.user_middleware.insert(0, Middleware(Gate, origins=cors_origins(), folders=folders))
    web_app.middleware_stack = web_app.build_middleware_stack()
    missing = not_in_table(web_app)
    if missing:
        logger.warning(f"routes not in lib/web/routes_table.py (closed: 404/405): {missing}")
    logger.info(f"route table: {len(routes_table.open_routes())} open routes, everything else 404/405; "
                f"{len(missing)} mounted routes not in the table; cross-origin writes refused "
                f"(allowed origins: {sorted(cors_origins()) or 'none'}); server folders hidden in answers: "
                f"{[label for _, label in folders]}")
