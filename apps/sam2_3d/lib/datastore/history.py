"""The app's local datastore: checked names, checked labels, atomic saves and a bounded label history.

Differences from monailabel's ``LocalDatastore``, each for a failure seen with it:

* every id and tag a client names is a plain name (``names.check_name``), never a path: monailabel joins
  them into file paths, so ``../../x`` or an absolute path read, wrote or deleted files outside the studies;
* a label is stored only if it is a complete, 3D, integer label on its image's grid (``label_checks``);
  an unknown image is a 404, not an ``ImageNotFoundException`` (HTTP 500);
* a label and the datastore JSON are written to a temporary file in the same folder, fsynced and renamed
  over the old one: a crash (kill -9, power) at any moment leaves the old or the new file, never a partial one;
* a replaced ``final`` label (an annotator's work) is kept in ``<studies>/.replaced_labels/final/`` as
  ``<id>.<saved-at>.<random><ext>``, named under ``replaces`` in the new label's info, at most
  ``history`` versions per image (default 10; older ones are deleted, oldest first);
* leftovers of an interrupted save (``*.part-*``) are removed at start-up.

Backup and save happen under one lock, so two clients saving the same image at once each leave their
version: one as the label, the other as a replaced copy.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from typing import Any, Dict, Optional

from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from ..engine.errors import ImageNotFound
from .label_checks import check_label_file, label_extension
from .names import check_name

logger = logging.getLogger(__name__)

KEPT_TAGS = (DefaultLabelTag.FINAL.value,)
BACKUP_DIR = ".replaced_labels"
DEFAULT_HISTORY = 10
PART = ".part-"  # temporary files: never match the datastore's extension patterns (*.nii.gz, ...)


def fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_copy(src: str, dest: str) -> None:
    """``dest`` becomes a complete copy of ``src`` in one rename; never a partial file."""
    tmp = f"{dest}{PART}{uuid.uuid4().hex[:8]}"
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(os.path.dirname(dest))


def atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}{PART}{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(os.path.dirname(path) or ".")


def remove_partial_files(root: str) -> int:
    removed = 0
    for path in glob.glob(os.path.join(glob.escape(root), "**", f"*{PART}*"), recursive=True):
        if os.path.isfile(path):
            os.unlink(path)
            removed += 1
    if removed:
        logger.warning(f"removed {removed} partial file(s) left by an interrupted save under {root}")
    return removed


class KeepsReplacedLabels:
    _save_lock = threading.Lock()  # one server process, one datastore: a thread lock covers all writers
    history: int = DEFAULT_HISTORY

    def _backup_dir(self: LocalDatastore, tag: str) -> str:
        return os.path.join(self._datastore.image_path(), BACKUP_DIR, tag)

    def _backup_previous(self: LocalDatastore, image_id: str, tag: str) -> Optional[Dict[str, Any]]:
        obj = self._datastore.objects.get(image_id)
        previous = obj.labels.get(tag) if obj else None
        if previous is None:
            return None
        src = os.path.join(self._datastore.label_path(tag), self._filename(image_id, previous.ext))
        if not os.path.exists(src):
            return None
        ts = int(previous.info.get("ts") or time.time())
        dest_dir = self._backup_dir(tag)
        os.makedirs(dest_dir, exist_ok=True)
        # saved-at second plus a random tag: two replacements within one second must not collide
        dest = os.path.join(dest_dir, f"{image_id}.{ts}.{uuid.uuid4().hex[:8]}{previous.ext}")
        try:
            os.link(src, dest)  # the old file itself, complete; the save then renames a new one over src
        except OSError:
            atomic_copy(src, dest)
        fsync_dir(dest_dir)
        kept = {"file": dest, "ts": ts, "client_id": previous.info.get("client_id")}
        logger.warning(f"final label of {image_id} replaced; the previous one (saved {ts}) is kept at {dest}")
        self._prune_history(image_id, tag)
        return kept

    def _prune_history(self: LocalDatastore, image_id: str, tag: str) -> None:
        pattern = re.compile(re.escape(image_id) + r"\.(\d+)\.[0-9a-f]{8}\.")
        folder = self._backup_dir(tag)
        versions = sorted(
            (f for f in os.listdir(folder) if pattern.match(f)),
            key=lambda f: (int(pattern.match(f).group(1)), os.path.getmtime(os.path.join(folder, f))),
        )
        for old in versions[: max(0, len(versions) - self.history)]:
            os.unlink(os.path.join(folder, old))
            logger.info(f"label history of {image_id}: dropped {old} (keeping {self.history})")

    def _save_keeping_previous(self, image_id: str, label_file: str, tag: str, info: Dict[str, Any]) -> str:
        check_name(image_id, "image id")
        check_name(tag, "label tag")
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            raise ImageNotFound(f"no image {image_id!r} in the datastore: a label is saved for an image it holds")
        ext = label_extension(label_file)
        check_label_file(label_file, LocalDatastore.get_image_uri(self, image_id))
        with self._save_lock, FileLock(self._lock_file):
            info = dict(info or {})
            if tag in KEPT_TAGS:
                kept = self._backup_previous(image_id, tag)
                if kept:
                    info["replaces"] = kept
            label_dir = self._datastore.label_path(tag)
            os.makedirs(label_dir, exist_ok=True)
            name = self._filename(image_id, ext)
            atomic_copy(label_file, os.path.join(label_dir, name))
            previous = obj.labels.get(tag)
            if previous is not None and previous.ext != ext:  # one file per label: drop the old extension's
                old = os.path.join(label_dir, self._filename(image_id, previous.ext))
                if os.path.exists(old):
                    os.unlink(old)
            info["ts"] = int(time.time())
            info["name"] = name
            obj.labels[tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        logger.info(f"label {tag!r} of {image_id} saved ({name})")
        return image_id

    def _update_datastore_file(self, lock=True):
        def write():
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_text(self._datastore_config_path, text)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()


def _checked(method, *names):
    def wrapper(self, *args, **kwargs):
        for value, what in zip(args, names):
            if what:
                check_name(value, what)
        return method(self, *args, **kwargs)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class Sam2LocalDatastore(KeepsReplacedLabels, LocalDatastore):
    def __init__(self, datastore_path: str, *args, history: int = DEFAULT_HISTORY, **kwargs):
        remove_partial_files(datastore_path)
        self.history = max(1, int(history))
        super().__init__(datastore_path, *args, **kwargs)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        return self._save_keeping_previous(image_id, label_filename, label_tag, label_info)

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        from ..engine.geometry import read_image

        if not image_id:
            image_id = self._to_id(os.path.basename(image_filename))[0]
        check_name(image_id, "image id")
        read_image(image_filename)  # a 3D volume SimpleITK reads, or 404/415/422 naming why
        _, ext = self._to_id(os.path.basename(image_filename))
        dest = os.path.join(self._datastore.image_path(), self._filename(image_id, ext))
        with FileLock(self._lock_file):
            atomic_copy(image_filename, dest)
            info = dict(image_info or {})
            info.update(ts=int(time.time()), name=os.path.basename(dest))
            from monailabel.datastore.local import ImageLabelModel

            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id

    def remove_image(self, image_id: str) -> None:
        if image_id not in self._datastore.objects:
            raise ImageNotFound(f"no image {image_id!r} in the datastore")
        return LocalDatastore.remove_image(self, image_id)

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        if image_id not in self._datastore.objects:
            raise ImageNotFound(f"no image {image_id!r} in the datastore")
        return LocalDatastore.update_image_info(self, image_id, info)

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        if self._datastore.label(label_id, label_tag) is None:
            raise ImageNotFound(f"no label {label_tag!r} for image {label_id!r} in the datastore")
        return LocalDatastore.update_label_info(self, label_id, label_tag, info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        if self._datastore.label(label_id, label_tag) is None:
            raise ImageNotFound(f"no label {label_tag!r} for image {label_id!r} in the datastore")
        return LocalDatastore.remove_label(self, label_id, label_tag)


# Every datastore method that takes a client's id or tag checks it first (400 for a path-like name).
for _name, _what in {
    "get_image": ("image id",), "get_image_uri": ("image id",), "get_image_info": ("image id",),
    "get_label": ("image id", "label tag"), "get_label_uri": ("image id", "label tag"),
    "get_label_info": ("image id", "label tag"), "get_labels_by_image_id": ("image id",),
    "get_label_by_image_id": ("image id", "label tag"), "add_image": (None,), "remove_image": ("image id",),
    "remove_label": ("image id", "label tag"), "update_image_info": ("image id",),
    "update_label_info": ("image id", "label tag"),
}.items():
    setattr(Sam2LocalDatastore, _name, _checked(getattr(Sam2LocalDatastore, _name), *_what))
