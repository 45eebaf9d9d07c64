"""Session uploads (``PUT /session/``, what Slicer sends for a locally loaded volume): checked and bounded.

* The volume's header is checked as every other volume's (``header_checks``: no header naming another
  file, declared size within ``max_volume_gb``), so a bad upload is refused at ``PUT`` (400/413/415/422)
  rather than at the first inference on it (an archive, ``uncompress=true``, is checked when read).
* monailabel keeps each upload in its session folder until the session expires (an hour by default),
  with no bound on how many or how large: a client looping on uploads filled the disk. Before a session
  is added, expired sessions are removed; then all sessions together must fit ``--conf
  max_session_disk_gb`` (default 10), else 413 naming the bound (nothing is kept).
"""

from __future__ import annotations

import logging
import os

from ..engine.errors import EngineInputError
from ..engine.options import option
from . import header_checks

logger = logging.getLogger(__name__)

DEFAULT_MAX_SESSION_DISK_GB = 10.0


class SessionStoreFull(EngineInputError):
    status_code = 413


def folder_bytes(folder: str) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed meanwhile (an expiring session)
    return total


def bound(sessions, conf: dict) -> None:
    """Wrap ``sessions.add_session`` (monailabel's ``Sessions``) with the checks above."""
    limit = int(option(conf, "max_session_disk_gb", DEFAULT_MAX_SESSION_DISK_GB) * 2**30)
    add_session = sessions.add_session

    def add_bounded(data_file: str, expiry: int = 0, uncompress: bool = False, *args, **kwargs):
        if os.path.isdir(data_file):  # several files: a DICOM series
            header_checks.check_series_folder(data_file, "session image")
        elif not uncompress:
            header_checks.check_volume_file(data_file, "session image")
        new = folder_bytes(data_file) if os.path.isdir(data_file) else os.path.getsize(data_file)
        if new > header_checks.MAX_VOLUME_BYTES:
            raise SessionStoreFull(f"the upload is {new / 2**30:.2f} GiB; this server takes volumes up to "
                                   f"{header_checks.MAX_VOLUME_BYTES / 2**30:.2f} GiB (--conf max_volume_gb)")
        sessions.remove_expired()
        held = folder_bytes(sessions.store_path)
        if held + new > limit:
            raise SessionStoreFull(
                f"session storage is full: sessions hold {held / 2**30:.2f} GiB, this upload {new / 2**30:.2f} GiB, "
                f"the server keeps at most {limit / 2**30:.2f} GiB (--conf max_session_disk_gb); "
                f"delete sessions (DELETE /session/<id>) or retry when older ones expire"
            )
        return add_session(data_file, expiry, uncompress, *args, **kwargs)

    sessions.add_session = add_bounded
