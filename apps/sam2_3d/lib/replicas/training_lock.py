"""One training run at a time across every replica sharing a model store: a lock file in that store.

The lock is ``<model_dir>/finetuned/_runs/training.lock``, created with ``O_CREAT | O_EXCL`` (atomic on a
local or NFS v3+ file system) by the process that trains, holding its host, pid, server and start time.
While training, a thread touches it every ``HEARTBEAT_S``. A lock is stale, and is taken over, when its
holder is on this host and its process is gone, or when it is on another host and its heartbeat is older
than ``STALE_S`` (a host that died cannot remove its lock).

``POST /train/sam2_finetune`` takes the lock before it starts the training process (409 naming the
holder otherwise), so two replicas asked at the same instant cannot both start; the process it starts
(monailabel runs training in a child process, or in the server itself with ``run_sync``) takes the lock
over and releases it when the run ends. A server's own lock whose training never started (no train task
of this server is submitted or running) is stale too.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager

from ..engine.errors import EngineInputError
from . import identity

logger = logging.getLogger(__name__)

LOCK_NAME = "training.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0


class TrainingLocked(EngineInputError):
    """Another process (on this replica or another) is training on the shared model store."""

    status_code = 409


def lock_path(model_dir: str) -> str:
    from ..engine.weights import versions_root

    return os.path.join(versions_root(model_dir), "_runs", LOCK_NAME)


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            info = json.load(f)
        info["heartbeat_age_s"] = time.time() - os.stat(path).st_mtime
        return info
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # being written this instant (created, not yet filled): a live holder
        return {"host": "?", "pid": None, "server": "?", "started": "?", "heartbeat_age_s": 0.0}


def _pid_alive(pid) -> bool:
    import psutil

    try:  # a zombie is gone: DELETE /train/ kills the training process, which is reaped only later
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError, TypeError):
        return False


def _this_server_trains() -> bool:
    from monailabel.utils.async_tasks.utils import tasks

    return any(t.get("status") in ("SUBMITTED", "RUNNING") for t in tasks("train") or [])


def why_stale(info: dict) -> str | None:
    """Why a lock no longer protects anything, or None while its holder may still be training."""
    if info.get("host") == socket.gethostname() and info.get("pid") is not None and not _pid_alive(info["pid"]):
        return f"its process {info['pid']} on this host is gone"
    if (info.get("host") == socket.gethostname() and info.get("pid") == os.getpid()
            and info.get("phase") == "starting" and not _this_server_trains()):
        return "this server took it for a training that is not running (it ended before taking it over)"
    if (info.get("host") == socket.gethostname() and info.get("server_pid") == os.getpid()
            and not _this_server_trains()):
        # DELETE /train/ has just killed this server's training process: it may take a moment to die,
        # and a POST of the same request right after (to resume) must not get a 409 from its own lock
        return "this server's training process was stopped or has ended"
    if info.get("heartbeat_age_s", 0.0) > STALE_S:
        return f"no heartbeat for {info['heartbeat_age_s']:.0f} s"
    return None


def describe(info: dict) -> str:
    return (f"training is running on replica {info.get('server', '?')} (host {info.get('host', '?')}, pid "
            f"{info.get('pid', '?')}, since {info.get('started', '?')}); one replica trains at a time on the shared "
            f"model store: wait for it to finish (GET /train/ on that replica) or stop it there (DELETE /train/)")


def holder(model_dir: str) -> dict | None:
    """The live holder's record, or None when nobody trains (a stale lock counts as none)."""
    info = _read(lock_path(model_dir))
    return None if info is None or why_stale(info) else info


def check_free(model_dir: str) -> None:
    """Raise :class:`TrainingLocked` (409) naming the holder when a live process holds the lock."""
    info = holder(model_dir)
    if info is not None:
        raise TrainingLocked(describe(info))


def _remove_if_stale(path: str) -> None:
    info = _read(path)
    why = info and why_stale(info)
    if not why:
        return
    # moved aside, then compared: another replica may have replaced the stale lock by a fresh one meanwhile
    aside = f"{path}.stale-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _read(aside) or {}
    if moved.get("token") != info.get("token"):
        try:
            os.link(aside, path)  # put the fresh lock back (fails if yet another one exists: that one stays)
        except FileExistsError:
            pass
    else:
        logger.warning(f"training lock of {info.get('server')} (pid {info.get('pid')}) was stale ({why}): taken over")
    os.unlink(aside)


def _record(phase: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "server": identity.server_name(), "phase": phase,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "token": uuid.uuid4().hex}


def acquire(model_dir: str, phase: str = "running") -> dict:
    """Take the lock for this process, or raise :class:`TrainingLocked` naming its holder. ``starting``:
    taken by the server for the training process it is about to start (which takes it over)."""
    path = lock_path(model_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _remove_if_stale(path)
    mine = _record(phase)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        info = _read(path) or {}
        raise TrainingLocked(describe(info)) from None
    with os.fdopen(fd, "w") as f:
        json.dump(mine, f)
    return mine


def release(model_dir: str, mine: dict) -> None:
    path = lock_path(model_dir)
    info = _read(path)
    if info is not None and info.get("token") == mine["token"]:
        os.unlink(path)


def _take_over(model_dir: str) -> dict | None:
    """The lock this process's server took for it (same host; this process or its parent), now ours."""
    path = lock_path(model_dir)
    info = _read(path)
    if not info or info.get("phase") != "starting" or info.get("host") != socket.gethostname() or \
            info.get("pid") not in (os.getpid(), os.getppid()):
        return None
    mine = {**_record("running"), "started": info.get("started")}
    if info.get("pid") != os.getpid():  # a training child of that server (not run_sync, in the server itself)
        mine["server_pid"] = info.get("pid")
    tmp = f"{path}.{mine['token']}.tmp"
    with open(tmp, "w") as f:
        json.dump(mine, f)
    os.replace(tmp, path)
    return mine


@contextmanager
def held(model_dir: str):
    """The lock for the duration of a training run (taken over from the server that started the run, or
    taken here), its heartbeat kept by a thread."""
    mine = _take_over(model_dir) or acquire(model_dir)
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            try:
                os.utime(lock_path(model_dir))
            except OSError:
                pass

    thread = threading.Thread(target=beat, name="training-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield mine
    finally:
        stop.set()
        release(model_dir, mine)
