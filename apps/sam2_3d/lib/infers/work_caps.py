"""Caps on the work one request may ask of the inference thread, named in the 400 when exceeded.

The one torch thread serves every client in turn (``lib/engine/torch_thread.py``), so one request
with 20,000 clicks (a minute of prompt encoding) or a propagation through thousands of slices makes
everybody wait. ``--conf max_clicks`` (default 1000: clicks per request, foreground and background
together) and ``--conf max_slices`` (default 2048: slices one propagation may cover; give
``start_slice``/``end_slice`` for a longer volume) bound it.
"""

from __future__ import annotations

from ..engine.errors import BadRequestValue
from ..engine.options import option

DEFAULTS = {"max_clicks": 1000, "max_slices": 2048}
MAX_CLICKS = DEFAULTS["max_clicks"]
MAX_SLICES = DEFAULTS["max_slices"]


def configure(conf: dict) -> None:
    global MAX_CLICKS, MAX_SLICES
    MAX_CLICKS, MAX_SLICES = (option(conf, key, default) for key, default in DEFAULTS.items())


def check_click_count(request: dict) -> None:
    clicks = sum(len(v) for v in (request.get("foreground"), request.get("background")) if isinstance(v, list))
    if clicks > MAX_CLICKS:
        raise BadRequestValue(f"{clicks} clicks in one request; this server takes at most {MAX_CLICKS} (--conf max_clicks)")


def check_slice_count(lo: int, hi: int) -> None:
    slices = hi - lo + 1
    if slices > MAX_SLICES:
        raise BadRequestValue(
            f"the propagation would cover {slices} slices ({lo}..{hi}); this server propagates at most {MAX_SLICES} "
            f"per request (--conf max_slices): give start_slice/end_slice"
        )
