"""Finished labels kept: the ``lock``, ``locked_labels`` and ``exclude`` params of a 3D request.

* ``lock: true`` / ``false`` locks or unlocks the request's label in its session; ``locked_labels: [...]``
  (Slicer sends one label per request) sets the session's locked labels, all of them. A locked label's
  voxels (its last answer) are taken by no other label (``Session.protected`` and ``Session.combined``).
* ``exclude: ["final", "a", ...]``: the image's saved ``final`` label (any value) and the named labels' last
  answers are taken out of this request's answer.

Both are post-processing of the answer: SAM 2 has no negative-mask prompt, so its state and the label's
own result stay what the prompts give (undo and the fast path are unaffected).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..engine.errors import PromptError
from ..engine.geometry import read_label_on


def locks_and_exclusions(params, session, label: str, final_label_path: Callable[[], str]) -> np.ndarray | None:
    """Apply ``lock`` / ``locked_labels`` (checked by ``InferParams``) to the session; return the voxels (frames)
    ``exclude`` takes out of the label's answer, or None."""
    if params.locked_labels is not None:
        session.locked = set(params.locked_labels)
    if params.lock is not None:
        session.locked = session.locked | {label} if params.lock else session.locked - {label}
    if not params.exclude:
        return None
    regions = []
    for name in params.exclude:
        if name == "final":
            final = read_label_on(final_label_path(), session.volume.image)
            regions.append(session.geometry.to_frames(final) > 0)
        elif name != label:
            other = session.result(name)
            if other is None:
                raise PromptError(f"exclude names {name!r}, which has no answer in this session; its labels "
                                  f"are {session.labels}")
            regions.append(other.mask > 0)
    return np.logical_or.reduce(regions) if regions else None
