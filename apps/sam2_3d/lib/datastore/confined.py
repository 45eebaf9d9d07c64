"""The local datastore never follows a link out of the studies folder: not to read, serve, zip or delete.

monailabel's ``LocalDatastore`` resolves every image and label to its ``realpath`` before using it, so a
study in the folder that is a symbolic link (or sits in a linked sub-folder) to ``/etc/shadow`` was read
by the models, served by ``GET /datastore/image``, zipped by ``GET /datastore/dataset``, and ``DELETE
/datastore/image|label`` removed the link's *target* (``rmtree`` for a folder). Here:

* an image or label whose real path lies outside the studies folder answers 403 wherever its path is
  asked for (``get_image_uri`` / ``get_label_uri``: inference, download, label prompts), with the same
  words whether the target exists or not, and is left out of ``datalist`` (training, dataset zip);
* deleting such an entry removes the link itself, never what it points to;
* a label is never written into a label folder that is itself a link out of the studies folder.
Links that stay inside the folder work as before.

And ``datastore_v2.json`` stays bounded: monailabel merges every ``PUT /datastore/image/info`` and
``/label/info`` into the entry's info and rewrites the whole file, so 30 updates of fresh keys grew it to
25.8 MB (the report of issue 16). An entry's info, after the merge, may hold at most ``MAX_INFO_BYTES``
of JSON (413 otherwise, nothing changed); a saved label's info too.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict

from ..engine.errors import EngineInputError
from .history import Sam2LocalDatastore

logger = logging.getLogger(__name__)


MAX_INFO_BYTES = 64 << 10  # an entry's info: ids, names, scores, a label_info table; never a payload


class InfoTooLarge(EngineInputError):
    status_code = 413


def check_info_size(info: Dict[str, Any], what: str) -> None:
    size = len(json.dumps(info, default=str))
    if size > MAX_INFO_BYTES:
        raise InfoTooLarge(f"the {what} info would hold {size} bytes of JSON; at most {MAX_INFO_BYTES} are kept "
                           f"per image or label (the datastore file is rewritten on every change)")


class OutsideStudies(EngineInputError):
    """A datastore entry that resolves to a file outside the studies folder (HTTP 403)."""

    status_code = 403


def within(path: str, root: str) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(root)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class ConfinedLocalDatastore(Sam2LocalDatastore):
    def _root(self) -> str:
        return self._datastore.image_path()

    def _confined(self, path: str, what: str) -> str:
        if path and not within(path, self._root()):
            logger.warning(f"{what} resolves outside the studies folder; refused")
            raise OutsideStudies(f"{what} is a link to a file outside the studies folder; it is not read, served or deleted")
        return path

    def get_image_uri(self, image_id: str) -> str:
        return self._confined(super().get_image_uri(image_id), f"image {image_id!r}")

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        return self._confined(super().get_label_uri(label_id, label_tag), f"label {label_tag!r} of {label_id!r}")

    def _inside(self, image_ids):
        root, objects = self._root(), self._datastore.objects
        return [i for i in image_ids
                if i in objects and within(os.path.join(root, self._filename(i, objects[i].image.ext)), root)]

    def get_unlabeled_images(self, label_tag=None, labels=None):  # what strategies hand out: never a link out
        return self._inside(super().get_unlabeled_images(label_tag, labels))

    def get_labeled_images(self, label_tag=None, labels=None):
        return self._inside(super().get_labeled_images(label_tag, labels))

    def datalist(self, full_path=True):
        root = self._root()
        items = super().datalist(full_path=True)
        kept = [d for d in items if all(within(p, root) for p in d.values())]
        if len(kept) < len(items):
            logger.warning(f"{len(items) - len(kept)} image/label pair(s) link outside the studies folder; left out")
        if not full_path:
            kept = [{k: os.path.relpath(p, root) for k, p in d.items()} for d in kept]
        return kept

    def _entry(self, folder: str, name: str) -> str:
        """The entry's own path in the studies folder (not resolved); 403 if its folder leads outside."""
        if not within(folder, self._root()):
            raise OutsideStudies(f"the folder of {name!r} is a link out of the studies folder; nothing is deleted")
        return os.path.join(folder, name)

    def _unlink_escaping(self, path: str) -> bool:
        """Remove a link that leads outside (the link, not its target); False when ``path`` stays inside."""
        if within(path, self._root()):
            return False
        if os.path.islink(path):
            os.unlink(path)
            logger.warning(f"removed the link {os.path.basename(path)!r}, which pointed outside the studies folder")
        return True

    def remove_label(self, label_id: str, label_tag: str) -> None:
        label = self._datastore.label(label_id, label_tag)
        if label is not None:
            path = self._entry(self._datastore.label_path(label_tag), self._filename(label_id, label.ext))
            if self._unlink_escaping(path):
                # the entry itself, not refresh(): the folder watcher may be reconciling the same dict
                self._datastore.objects[label_id].labels.pop(label_tag, None)
                self._update_datastore_file()
                return
        return super().remove_label(label_id, label_tag)

    def remove_image(self, image_id: str) -> None:
        obj = self._datastore.objects.get(image_id)
        if obj is not None:
            for tag in list(obj.labels):
                self.remove_label(image_id, tag)
            path = self._entry(self._root(), self._filename(image_id, obj.image.ext))
            if self._unlink_escaping(path):
                self._datastore.objects.pop(image_id, None)
                self._update_datastore_file()
                return
        return super().remove_image(image_id)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        folder = self._datastore.label_path(label_tag)
        if os.path.lexists(folder) and not within(folder, self._root()):
            raise OutsideStudies(f"the label folder of tag {label_tag!r} is a link out of the studies folder; nothing is saved")
        check_info_size(label_info or {}, "label's")
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        obj = self._datastore.objects.get(image_id)
        if obj is not None:
            check_info_size({**obj.image.info, **(info or {})}, f"image {image_id!r}")
        return super().update_image_info(image_id, info)

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        label = self._datastore.label(label_id, label_tag)
        if label is not None:
            check_info_size({**label.info, **(info or {})}, f"label {label_tag!r} of {label_id!r}")
        return super().update_label_info(label_id, label_tag, info)

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        check_info_size(image_info or {}, "new image's")
        return super().add_image(image_id, image_filename, image_info)
