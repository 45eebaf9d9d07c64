"""Small rules every layer shares, written once: yes/no and integer values, atomic JSON writes, and the
file extensions the server reads and writes.

Imports only the standard library, so the engine (free of monailabel and fastapi), the web layer,
training and evaluation can all use it.
"""

from __future__ import annotations

import json
import math
import os

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

# What the datastore keeps as a label and the server writes as an answer (longest first: .seg.nrrd before .nrrd).
LABEL_EXTENSIONS = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")
# An uploaded mask prompt may also be a MetaImage header with its data inline (header_checks refuses detached data).
LABEL_UPLOAD_EXTENSIONS = (*LABEL_EXTENSIONS, ".mhd")
# Volumes read from folders (training pairs, evaluation datasets).
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def parse_bool(value) -> bool:
    """The one reading of a yes/no value: true/false, yes/no, on/off, 1/0 (any case); else ValueError."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(value)


def parse_int(value) -> int:
    """The one reading of an integer value: an int, an integral finite float, or a string of one; else ValueError.

    ``True`` is not 1 here: a yes/no sent where a number belongs is a client's mistake."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            value = float(text)  # "3.0"; ValueError for anything else
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(value)
        return int(value)
    raise ValueError(value)


def atomic_write_json(path: str, data, indent: int | None = 2) -> None:
    """``path`` holds either its old content or all of ``data``, never a partial file (one rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=indent)
    os.replace(tmp, path)


def file_extension(name: str, extensions: tuple[str, ...]) -> str | None:
    """The longest of ``extensions`` that ``name`` ends with (any case), or None."""
    lower = os.path.basename(name).lower()
    matches = [ext for ext in extensions if lower.endswith(ext)]
    return max(matches, key=len) if matches else None


def strip_extension(name: str, extensions: tuple[str, ...]) -> str:
    """``name``'s base name without its extension from ``extensions`` (unchanged if it has none of them)."""
    base = os.path.basename(os.path.normpath(name))
    ext = file_extension(base, extensions)
    return base[: -len(ext)] if ext else base
