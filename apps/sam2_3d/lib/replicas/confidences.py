"""SAM 2's confidence per image, kept in the shared model store so every replica's active learning sees it.

``record_confidence`` (lib/activelearning) also keeps it in the datastore's image info, as before; but a
DICOMweb datastore's image info lives in each server's own cache folder, so with several replicas one
replica's ``sam2_low_confidence`` saw only the images it had propagated itself. Here each image has one
small JSON file in ``<model_dir>/confidences/``, replaced atomically by whichever replica propagated last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

logger = logging.getLogger(__name__)


def folder(model_dir: str) -> str:
    return os.path.join(model_dir, "confidences")


def _path(model_dir: str, image_id: str) -> str:
    # image ids are PACS UIDs or file names; a digest keeps any of them a plain file name
    return os.path.join(folder(model_dir), hashlib.sha256(image_id.encode()).hexdigest()[:32] + ".json")


def write(model_dir: str, image_id: str, record: dict) -> bool:
    try:
        os.makedirs(folder(model_dir), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder(model_dir), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({**record, "image": image_id}, f)
        os.replace(tmp, _path(model_dir, image_id))
        return True
    except OSError as e:  # a read-only or full store must not fail the inference that produced the score
        logger.warning(f"confidence of {image_id!r} not shared in {model_dir}: {e}")
        return False


def read(model_dir: str, image_id: str) -> dict:
    try:
        with open(_path(model_dir, image_id)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if record.get("image") == image_id else {}
