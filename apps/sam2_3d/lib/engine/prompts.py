"""What a user gave for one label: prompts per slice, the single source of truth of a session.

A label's prompts are a ``{slice: SlicePrompt}`` map in frame pixel coordinates. SAM 2's inference
state is only a cache derived from it (see :mod:`.tracking`). The three tools each own one part of a
slice's prompt, so that a box does not erase clicks and a click does not erase a mask:

* the point tool owns ``points``/``labels`` (every request carries all clicks of the label, as Slicer
  and OHIF send them);
* the box tool owns ``box`` (one box per label: a new box replaces the old one);
* the mask tool owns ``mask``.

On one slice they combine as SAM 2 combines them on a frame: a mask is added first, then clicks and
box together (SAM 2 feeds the mask's logits to the clicks as the previous mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .errors import PromptError


@dataclass(frozen=True)
class SlicePrompt:
    """Everything the user gave on one slice, in frame pixel coordinates."""

    points: tuple[tuple[float, float], ...] = ()  # (x, y) = (column, row)
    labels: tuple[int, ...] = ()  # 1 positive, 0 negative
    box: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1)
    mask: np.ndarray | None = field(default=None, compare=False)  # bool [H, W]
    mask_digest: bytes | None = None  # what equality compares for masks

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "SlicePrompt":
        mask = np.ascontiguousarray(mask, dtype=bool)
        return cls(mask=mask, mask_digest=_digest(mask))

    @property
    def kind(self) -> str:
        return "mask" if self.mask is not None else "box" if self.box is not None else "points"

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None and self.mask is None

    def with_points(self, points, labels) -> "SlicePrompt":
        return replace(self, points=tuple(tuple(p) for p in points), labels=tuple(labels))

    def with_box(self, box) -> "SlicePrompt":
        return replace(self, box=tuple(box) if box is not None else None)

    def with_mask(self, mask: np.ndarray | None) -> "SlicePrompt":
        if mask is None:
            return replace(self, mask=None, mask_digest=None)
        mask = np.ascontiguousarray(mask, dtype=bool)
        return replace(self, mask=mask, mask_digest=_digest(mask))

    def adds_to(self, old: "SlicePrompt") -> bool:
        """Everything of ``old`` is still here (clicks in any order, the same box and mask): the change
        only adds. A removed or moved click, box or mask is not an addition."""
        clicks = list(zip(self.points, self.labels))
        for click in zip(old.points, old.labels):
            if click not in clicks:
                return False
            clicks.remove(click)
        return (old.box is None or self.box == old.box) and (old.mask is None or self.mask_digest == old.mask_digest)

    @property
    def positive(self) -> bool:
        """Something that says where the object is (a foreground click, a box or a mask)."""
        return self.mask is not None or self.box is not None or any(self.labels)


def check_label(prompts: "Prompts") -> None:
    """A label SAM 2 can segment from: something positive on at least one slice. A slice with only
    background clicks is a correction ("not here"), as SAM 2's ``add_new_points_or_box`` takes it."""
    if prompts and not any(p.positive for p in prompts.values()):
        raise PromptError(f"the label has only background points (slices {sorted(prompts)}); add a foreground "
                          f"point, a box or a mask")


def _digest(mask: np.ndarray) -> bytes:
    return np.packbits(mask).tobytes() + bytes(str(mask.shape), "ascii")


Prompts = dict[int, SlicePrompt]


def with_tool(prompts: Prompts, *, points=None, boxes=None, masks=None) -> Prompts:
    """``prompts`` with one or more tools' parts replaced; ``None`` leaves a tool's part as it is.

    ``points``: ``{k: [(x, y, positive), ...]}``; ``boxes``: ``{k: (x0, y0, x1, y1)}``; ``masks``:
    ``{k: bool [H, W]}``. A slice left with nothing is dropped.
    """
    out = dict(prompts)
    if points is not None:
        for k in set(out) | set(points):
            pts = points.get(k, [])
            out[k] = out.get(k, SlicePrompt()).with_points([(x, y) for x, y, _ in pts], [int(p) for *_, p in pts])
    if boxes is not None:
        for k in set(out) | set(boxes):
            out[k] = out.get(k, SlicePrompt()).with_box(boxes.get(k))
    if masks is not None:
        for k in set(out) | set(masks):
            out[k] = out.get(k, SlicePrompt()).with_mask(masks.get(k))
    return {k: p for k, p in sorted(out.items()) if not p.empty}


class PromptHistory:
    """Undo/redo of a label's prompt actions: snapshots of its whole prompt map (slice prompts are
    immutable and masks shared, so a snapshot costs a dict)."""

    def __init__(self, limit: int = 100):
        self.limit = limit
        self._undo: list[Prompts] = []
        self._redo: list[Prompts] = []

    def record(self, before: Prompts) -> None:
        self._undo.append(dict(before))
        del self._undo[: -self.limit]
        self._redo.clear()

    def undo(self, current: Prompts) -> Prompts:
        if not self._undo:
            raise PromptError("nothing to undo for this label")
        self._redo.append(dict(current))
        return self._undo.pop()

    def redo(self, current: Prompts) -> Prompts:
        if not self._redo:
            raise PromptError("nothing to redo for this label")
        self._undo.append(dict(current))
        return self._redo.pop()

    def snapshots(self) -> list[Prompts]:
        return self._undo + self._redo

    def copy(self) -> "PromptHistory":
        other = PromptHistory(self.limit)
        other._undo, other._redo = list(self._undo), list(self._redo)
        return other

    @property
    def depth(self) -> tuple[int, int]:
        return len(self._undo), len(self._redo)
