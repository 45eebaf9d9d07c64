"""One log line per HTTP request: method, path, model, image, slices, seconds, status.

monailabel 0.8.5 runs uvicorn without an access log, so nothing in the server log said when a request
finished, how long it took, or whether it failed (an OHIF user sees only a fixed "Failed to ..." string).
This is a plain ASGI middleware (streaming responses pass through untouched). What only the inference
knows (which slices were processed) is added by ``note()`` from the request's own context: the
middleware puts a dict in a context variable, and the infer task fills it from whatever thread it runs
on, as long as that thread was started with a copy of the request's context (``run_in_threadpool``
does this; the torch thread is called through ``contextvars.copy_context().run``).

    request POST /infer/sam2_point model=sam2_point image=1.2.3 slices=0-19 seconds=3.42 status=200
"""

from __future__ import annotations

import contextvars
import logging
import time
from urllib.parse import parse_qs

logger = logging.getLogger("sam2_3d.requests")

_fields: contextvars.ContextVar[dict | None] = contextvars.ContextVar("sam2_3d_request_fields", default=None)


def note(**fields) -> None:
    """Add fields to the current request's log line (no-op outside a request)."""
    current = _fields.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


def slices_text(params: dict) -> str | None:
    """``lo-hi`` of the processed slices from an infer result's params (or the single slice of a 2D click)."""
    span = params.get("processed_range") or params.get("slice_range")
    if isinstance(span, (list, tuple)) and len(span) == 2:
        return f"{span[0]}-{span[1]}"
    return None


def _model(path: str) -> str | None:
    parts = path.strip("/").split("/")
    if len(parts) >= 2 and parts[0] == "infer":
        return parts[1]
    return None


def format_line(method: str, path: str, fields: dict, seconds: float, status: int) -> str:
    extras = " ".join(f"{k}={fields[k]}" for k in ("model", "image", "slices", "client") if fields.get(k))
    return f"request {method} {path} {extras + ' ' if extras else ''}seconds={seconds:.2f} status={status}"


class RequestLogMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        query = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
        path = scope.get("path", "")
        fields = {"model": _model(path), "image": (query.get("image") or [None])[0]}
        token = _fields.set(fields)
        status = {"code": 500}

        async def send_status(message):
            if message.get("type") == "http.response.start":
                status["code"] = message.get("status", 500)
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            _fields.reset(token)
            logger.info(format_line(scope.get("method", ""), path, fields, time.perf_counter() - t0, status["code"]))


def install(web_app) -> None:
    """Wrap the web app's middleware stack (once); call before ``build_middleware_stack``."""
    from starlette.middleware import Middleware

    if any(m.cls is RequestLogMiddleware for m in web_app.user_middleware):
        return
    web_app.user_middleware.insert(0, Middleware(RequestLogMiddleware))
