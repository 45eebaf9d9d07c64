"""One infer request, typed: ``InferParams.parse(request, kind)`` owns every rule on what an infer task reads.

Like training's ``TrainParams``: the task reads ``params.auto_stop``, never ``request["auto_stop"]``, so a
rule (an integer field, ``auto_stop >= 0``, a window's width, the box slice inside the roi) is written once
here, and a bad value is a 400 naming the field before anything is read or computed. What needs the
volume (a slice inside it, a voxel inside it) is checked by the geometry once the image is open.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ..common import LABEL_EXTENSIONS, parse_bool, parse_int
from ..datastore.names import check_name
from ..engine import intensity
from ..engine.errors import BadRequestValue, PromptError, UnknownOption
from ..engine.geometry import AXES
from .request_checks import MAX_ABS_NUMBER, NAME_FIELDS, check_numbers
from .work_caps import check_click_count

DEFAULT_AUTO_STOP = 3
RESULT_EXTENSIONS = LABEL_EXTENSIONS  # an answer is written as a label the datastore would keep
INT_FIELDS = ("start_slice", "end_slice", "auto_stop", "label_value", "slice")
FLAGS = {"reset_all": False, "reset_state": False, "undo": False, "redo": False, "incremental": True}
_ROI_AXIS_PAIR = {"i": slice(0, 2), "j": slice(2, 4), "k": slice(4, 6)}


def as_int(value, field: str) -> int:
    """An integer field: an int, an integral float or a string of one; else a 400 naming it."""
    try:
        number = parse_int(value)
    except (TypeError, ValueError, OverflowError):
        raise BadRequestValue(f"{field} must be an integer, got {value!r}") from None
    if abs(number) > MAX_ABS_NUMBER:
        raise BadRequestValue(f"{field} = {number} is out of range")
    return number


def as_number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequestValue(f"{field} must be a number, got {value!r}")
    try:
        number = float(value)
    except (ValueError, OverflowError) as e:
        raise BadRequestValue(f"{field} must be a number, got {value!r}") from e
    if not math.isfinite(number) or abs(number) > MAX_ABS_NUMBER:
        raise BadRequestValue(f"{field} = {value!r} is not a finite number of a sensible size")
    return number


def as_flag(value, field: str, default: bool) -> bool:
    if value in (None, ""):
        return default
    try:
        return parse_bool(value)
    except ValueError:
        raise BadRequestValue(f"{field} must be true or false, got {value!r}") from None


def _optional_int(request: dict, field: str) -> int | None:
    value = request.get(field)
    return None if value in (None, "") else as_int(value, field)


def _check_points(value, field: str, length: int) -> None:
    if value in (None, ""):
        return
    if not isinstance(value, (list, tuple)):
        raise BadRequestValue(f"{field} must be a list, got {value!r}")
    for item in value if field != "roi" else [value]:
        if not isinstance(item, (list, tuple)) or len(item) != length:
            what = "a voxel index [i, j, k]" if length == 3 else "[i0, i1, j0, j1, k0, k1]"
            raise BadRequestValue(f"{field}: {item!r} is not {what}")
        for v in item:
            as_number(v, field)


def _names(value, field: str, what: str) -> list[str] | None:
    if value in (None, ""):
        return None
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise PromptError(f"{field} must be a list of label names{what}, got {value!r}")
    return value


@dataclass(frozen=True)
class InferParams:
    """What one infer request asks for, every field checked; the prompts' voxels are checked on the volume."""

    kind: str
    axis: str | None  # None: not given (the answer may suggest one from the clicks)
    start_slice: int | None
    end_slice: int | None
    slice: int | None
    auto_stop: int
    label_value: int | None
    prompt_slices: list[int] | None
    preset: intensity.IntensityPreset
    result_extension: str
    checkpoint: str | None
    reset_all: bool
    reset_state: bool
    undo: bool
    redo: bool
    incremental: bool  # false: always re-propagate fully
    all_labels: bool  # ``labels: "all"``: every label of the session in one map
    lock: bool | None
    locked_labels: list[str] | None
    exclude: list[str] | None

    @classmethod
    def parse(cls, request: dict, kind: str) -> InferParams:
        """The request's fields, typed; raises a 4xx ``EngineInputError`` naming the first bad one."""
        if not isinstance(request, dict):
            raise BadRequestValue(f"the request must be a JSON object, got {type(request).__name__}")
        check_numbers({k: v for k, v in request.items() if k not in ("session", "description")}, "params")
        ints = {field: _optional_int(request, field) for field in INT_FIELDS}
        auto_stop = ints["auto_stop"]
        if auto_stop is not None and auto_stop < 0:
            raise BadRequestValue(f"auto_stop must be >= 0 (0 = never stop), got {request['auto_stop']!r}")
        prompt_slices = request.get("prompt_slices")
        if prompt_slices not in (None, "", []):
            prompt_slices = [as_int(k, "prompt_slices")
                             for k in (prompt_slices if isinstance(prompt_slices, list) else [prompt_slices])]
        else:
            prompt_slices = None
        preset = _preset(request)
        check_click_count(request)  # before the points are read one by one
        for field in ("foreground", "background"):
            _check_points(request.get(field), field, 3)
        _check_points(request.get("roi"), "roi", 6)
        axis = _axis(request.get("axis"))
        if kind == "box":
            _check_box_slice(request.get("roi"), ints["slice"], axis or "k")
        for field in NAME_FIELDS:
            if request.get(field) not in (None, ""):
                check_name(request[field], field)
        image_id = request.get("image_id")
        if isinstance(image_id, str) and image_id and not os.path.isabs(image_id):
            check_name(image_id, "image id")
        lock = request.get("lock")
        if lock not in (None, "") and not isinstance(lock, bool):
            raise PromptError(f"lock must be true or false, got {lock!r}")
        return cls(
            kind=kind, axis=axis, start_slice=ints["start_slice"], end_slice=ints["end_slice"], slice=ints["slice"],
            auto_stop=DEFAULT_AUTO_STOP if auto_stop is None else auto_stop, label_value=ints["label_value"],
            prompt_slices=prompt_slices, preset=preset, result_extension=_result_extension(request),
            checkpoint=_checkpoint(request.get("checkpoint")),
            **{flag: as_flag(request.get(flag), flag, default) for flag, default in FLAGS.items()},
            all_labels=str(request.get("labels", "")).lower() == "all",
            lock=None if lock in (None, "") else lock,
            locked_labels=_names(request.get("locked_labels"), "locked_labels", ""),
            exclude=_names(request.get("exclude"), "exclude", ' (or "final")'),
        )


def _preset(request: dict) -> intensity.IntensityPreset:
    has_center, has_width = request.get("window_center") is not None, request.get("window_width") is not None
    if not (has_center or has_width):
        return intensity.named_preset(request.get("preset"))
    if not (has_center and has_width):
        raise BadRequestValue("window_center and window_width go together")
    center = as_number(request["window_center"], "window_center")
    width = as_number(request["window_width"], "window_width")
    if width <= 0:
        raise BadRequestValue(f"window_width must be > 0, got {request['window_width']!r}")
    return intensity.IntensityPreset("window", center, width)


def _axis(axis) -> str | None:
    if axis in (None, ""):
        return None
    if axis not in AXES:
        raise UnknownOption(f"axis {axis!r} is not one of i, j, k")
    return axis


def _check_box_slice(roi, k, axis: str) -> None:
    """The box's slice lies within the roi's slices along the axis (on the volume, the geometry clamps both)."""
    if roi in (None, "", []) or k is None:
        return
    k0, k1 = sorted(int(round(float(v))) for v in roi[_ROI_AXIS_PAIR[axis]])
    if not k0 <= k <= k1:
        raise BadRequestValue(f"box slice {k} is outside the roi's slices [{k0}, {k1}]")


def _result_extension(request: dict) -> str:
    ext = request.get("result_extension") or ".nii.gz"
    if ext not in RESULT_EXTENSIONS:
        raise UnknownOption(f"unsupported result_extension {ext!r}; use one of {', '.join(RESULT_EXTENSIONS)}")
    return ext


def _checkpoint(wanted) -> str | None:
    if wanted not in (None, "") and not isinstance(wanted, str):
        raise UnknownOption(f"checkpoint must be a checkpoint name, got {wanted!r}")
    return wanted or None
