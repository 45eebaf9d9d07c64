"""Which replica last held a client's session on an image, so a session that moved is said to have restarted.

A replica keeps its sessions (prompts, undo history, SAM 2 state) in memory. When it dies, the balancer
sends its images to another replica, which knows nothing of them: the client's next request builds a new
session from the prompts it sends (Slicer sends every click of the label with each request). The answer
should then say so (``session_restarted``), as it does when a single server ends a session. So each
replica notes, once per session it creates, that it holds that client's session on that image (a small
file in ``<model_dir>/sessions/``); a replica creating a session that another process held says
``session_restarted`` naming it. On with ``--conf replica true`` (scripts/replicas.sh passes it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time

from . import identity

logger = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0
KEEP_S = 7 * 86400.0  # a marker older than any session's life (session_ttl_hours) says nothing


class SessionMarkers:
    def __init__(self, model_dir: str):
        self.folder = os.path.join(model_dir, "sessions")
        os.makedirs(self.folder, exist_ok=True)
        self.me = identity.process_name()
        self._pruned = 0.0

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def claim(self, key: str) -> str | None:
        """Note that this process holds the session ``key``; why it restarted if another process held it."""
        path = self._path(key)
        try:
            with open(path) as f:
                before = json.load(f)
        except (OSError, ValueError):
            before = {}
        why = None
        if before.get("key") == key and before.get("holder") not in (None, self.me):
            why = (f"this image's session was held by replica {before['holder']}, which stopped answering (or "
                   f"handed the image over); it was rebuilt on {self.me} from the prompts this request sent "
                   f"(undo history and other labels' prompts stayed there)")
        try:
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"key": key, "holder": self.me, "ts": time.time()}, f)
            os.replace(tmp, path)
        except OSError as e:
            logger.warning(f"session marker not written in {self.folder}: {e}")
        self._prune()
        return why

    def _prune(self) -> None:
        now = time.time()
        if now - self._pruned < PRUNE_EVERY_S:
            return
        self._pruned = now
        for entry in os.scandir(self.folder):
            try:
                if now - entry.stat().st_mtime > KEEP_S:
                    os.unlink(entry.path)
            except OSError:
                pass


def note_session(engine, session, request: dict, client: str, mode: str, axis: str) -> None:
    """Once per new session, when the engine has markers (``--conf replica true``): set its ``restarted``
    if another replica held it."""
    markers = getattr(engine, "replica_sessions", None)
    if markers is None or getattr(session, "replica_noted", False) or not client:
        return
    session.replica_noted = True
    key = json.dumps([request.get("session_id") or "", str(request.get("image_id") or ""), client, mode, axis])
    why = markers.claim(key)
    if why and not session.restarted:
        session.restarted = why
        logger.warning(f"session of {client!r} on {request.get('image_id')!r}: {why}")
