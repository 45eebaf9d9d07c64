"""Saving a label never silently destroys the one it replaces.

monailabel's LocalDatastore copies a new label over the old file. For ``final`` labels (an annotator's
work) the previous file is first copied to ``<studies>/.replaced_labels/final/<id>.<ts>.<random><ext>`` and the new
label's info records it under ``replaces`` (visible in ``GET /datastore/label/info``), and a warning is
logged. Backup and save happen under one lock, so two clients saving the same image at once each leave
their version: one as the label, the other as a replaced copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from typing import Any, Dict, Optional

from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

logger = logging.getLogger(__name__)

KEPT_TAGS = (DefaultLabelTag.FINAL.value,)
BACKUP_DIR = ".replaced_labels"


class KeepsReplacedLabels:
    _save_lock = threading.Lock()  # one server process, one datastore: a thread lock covers all writers

    def _backup_previous(self: LocalDatastore, image_id: str, tag: str) -> Optional[Dict[str, Any]]:
        obj = self._datastore.objects.get(image_id)
        previous = obj.labels.get(tag) if obj else None
        if previous is None:
            return None
        src = os.path.join(self._datastore.label_path(tag), self._filename(image_id, previous.ext))
        if not os.path.exists(src):
            return None
        ts = int(previous.info.get("ts") or time.time())
        dest_dir = os.path.join(self._datastore.image_path(), BACKUP_DIR, tag)
        os.makedirs(dest_dir, exist_ok=True)
        # saved-at second plus a random tag: two replacements within one second must not collide
        dest = os.path.join(dest_dir, f"{image_id}.{ts}.{uuid.uuid4().hex[:8]}{previous.ext}")
        shutil.copy(src, dest)
        kept = {"file": dest, "ts": ts, "client_id": previous.info.get("client_id")}
        logger.warning(f"final label of {image_id} replaced; the previous one (saved {ts}) is kept at {dest}")
        return kept

    def _save_keeping_previous(self, image_id: str, label_file: str, tag: str, info: Dict[str, Any]) -> str:
        with self._save_lock:
            info = dict(info or {})
            if tag in KEPT_TAGS:
                kept = self._backup_previous(image_id, tag)
                if kept:
                    info["replaces"] = kept
            return LocalDatastore.save_label(self, image_id, label_file, tag, info)


class Sam2LocalDatastore(KeepsReplacedLabels, LocalDatastore):
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        return self._save_keeping_previous(image_id, label_filename, label_tag, label_info)
