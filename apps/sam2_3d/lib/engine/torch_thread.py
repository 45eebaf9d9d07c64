"""The one thread that makes every torch call of a server process: the model's build, inference, training.

PyTorch's CPU build on Linux runs its ops on libgomp (GNU OpenMP). Each thread that runs torch ops gets an
OpenMP team of its own, and once the teams together hold more threads than there are CPUs, libgomp
throttles its threads' spin-wait between parallel regions, so every op pays a sleep and a wake-up. In
the server the model was built on the main thread and requests ran in monailabel's worker threads: on a
2-core machine a propagation ran about twice as slow as the same call on the thread that built the model
(``benchmarks/bench_torch_thread.py``; its figures in docs/benchmark.md). Everything of the engine therefore runs here: a
request waits for this thread, as it waited for the engine's lock before.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

NAME = "sam2-torch"
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=NAME)


def on_torch_thread() -> bool:
    return threading.current_thread().name.startswith(NAME)


def run(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the torch thread, waiting for its result (called there: directly)."""
    if on_torch_thread():
        return fn(*args, **kwargs)
    return _executor.submit(fn, *args, **kwargs).result()


def executor() -> ThreadPoolExecutor:
    """For ``loop.run_in_executor``: an async endpoint awaits the torch thread without blocking the loop."""
    return _executor


# -- work whose client has gone ---------------------------------------------------------------------
class ClientGone(Exception):
    """The client that asked for this work has disconnected: the work is dropped (never started, or
    stopped at the next slice)."""

    status_code = 499  # nginx's "client closed request"; nobody is left to read it


_current_cancel: threading.Event | None = None  # the running job's flag (one torch thread, one job)


def run_cancellable(cancel: threading.Event, fn, *args, **kwargs):
    """Run ``fn`` on the torch thread unless ``cancel`` is already set; long loops call
    :func:`check_cancelled` so that setting it later stops the job too."""
    global _current_cancel
    if cancel.is_set():
        raise ClientGone("the client disconnected before its request was started")
    _current_cancel = cancel
    try:
        return fn(*args, **kwargs)
    finally:
        _current_cancel = None


def check_cancelled() -> None:
    """Raise :class:`ClientGone` if the job running on this thread was cancelled (called per slice)."""
    cancel = _current_cancel
    if cancel is not None and cancel.is_set() and on_torch_thread():
        raise ClientGone("the client disconnected; its propagation was stopped")
