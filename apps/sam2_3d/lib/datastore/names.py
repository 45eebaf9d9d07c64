"""What a client may call an image, a label tag or a session: a plain name, never a path.

monailabel joins ids, tags and session ids straight into file paths (``<studies>/labels/<tag>/<id><ext>``,
``<sessions>/<session_id>``), so ``../../x``, ``/etc/passwd`` or a name with a NUL would read, write or
delete files outside its folders. Every endpoint of this app checks the names it is given here first.
"""

from __future__ import annotations

import unicodedata

from ..engine.errors import UnsafeName

MAX_NAME_LENGTH = 200


def check_name(value, what: str = "id") -> str:
    """``value`` if it is a plain datastore name; else ``UnsafeName`` (HTTP 400) saying why."""
    if not isinstance(value, str) or not value:
        raise UnsafeName(f"{what} must be a non-empty string, got {value!r}")
    size = len(value.encode("utf-8", "surrogatepass"))  # file systems limit bytes (255), not characters
    if size > MAX_NAME_LENGTH:
        raise UnsafeName(f"{what} is {size} bytes long in UTF-8; at most {MAX_NAME_LENGTH} are allowed")
    if "/" in value or "\\" in value:
        raise UnsafeName(f"{what} {value!r} contains a path separator; ids and tags are plain names, not paths")
    if value in (".", "..") or ".." in value:
        raise UnsafeName(f"{what} {value!r} contains '..'; ids and tags are plain names, not paths")
    if value.startswith((".", "~")) or value != value.strip():
        raise UnsafeName(f"{what} {value!r} starts or ends with '.', '~' or white space")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        raise UnsafeName(f"{what} {value!r} contains control characters")
    return value
