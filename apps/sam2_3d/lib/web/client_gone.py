"""Inference for a client that has gone is not run: never started if it was still queued, stopped at the
next propagated slice if it was running.

Every inference waits its turn on the one torch thread (``lib/engine/torch_thread.py``). Before this,
requests a client had abandoned (a closed browser tab, a Slicer time-out, a script killed) still ran to
the end: three dropped whole-volume propagations made the next click wait for all three (425 s instead
of 3 s in the report of issue 16). While a request waits or runs, a watcher polls Starlette's
``request.is_disconnected()`` and sets the job's cancel flag once the connection is closed; the job
checks the flag when the torch thread picks it up and before each propagated slice.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from functools import partial

from fastapi import Request

from ..engine import torch_thread

logger = logging.getLogger(__name__)

POLL_S = 0.25
COUNTS = {"dropped_before_start": 0, "stopped_while_running": 0}


async def _watch(request: Request, cancel: threading.Event) -> None:
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            logger.warning(f"client of {request.url.path} disconnected: its inference is dropped")
            return
        await asyncio.sleep(POLL_S)


def _job(cancel: threading.Event, fn, *args):
    try:
        return torch_thread.run_cancellable(cancel, fn, *args)
    except torch_thread.ClientGone as e:
        COUNTS["stopped_while_running" if "stopped" in str(e) else "dropped_before_start"] += 1
        raise


async def on_torch_thread_while_connected(request: Request, fn, *args):
    """``fn(*args)`` on the torch thread, dropped once ``request``'s client disconnects."""
    cancel = threading.Event()
    # with the request's context, so the request log (request_log.py) gets what the task notes
    job = asyncio.get_running_loop().run_in_executor(
        torch_thread.executor(), contextvars.copy_context().run, partial(_job, cancel, fn, *args))
    watcher = asyncio.create_task(_watch(request, cancel))
    try:
        return await job
    finally:
        watcher.cancel()
