"""MONAI Label infer tasks: thin layers that turn Slicer/OHIF requests into engine verbs.

Four tasks share this class and differ only in ``kind``:

* ``point``     - ``foreground`` / ``background`` voxel clicks on one or more slices, propagated;
* ``box``       - Slicer's ``roi`` box (+ optional clicks) on one slice; its k-range bounds propagation;
* ``propagate`` - a mask (uploaded ``label`` file or a datastore label) on given slices, propagated;
* ``slice2d``   - clicks on one slice answered on that slice only (``dimension: 2``).

The three 3D tasks share one session per (image, axis, client) and each owns one part of the current
label's prompts (clicks, box, masks; see ``lib/engine/prompts.py``), so tools combine instead of
overwriting each other. Session verbs in ``params``: ``label`` (the current label; other labels keep
their prompts), ``reset_state`` (clear the current label), ``reset_all`` (clear every label), ``undo`` /
``redo`` (the current label's last prompt action), ``labels: "all"`` (answer every label of the session
in one multi-value map), ``axis`` (``i``, ``j`` or ``k``: the stack the slices are taken along).
A request holds its session's lock from start to end.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import defaultdict
from typing import Callable

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ..engine import intensity
from ..engine.compiled import compile_status
from ..engine.engine import Propagation, Sam2VolumeEngine, SlicePrompt
from ..engine.errors import EngineInputError, ImageNotFound, PromptError, UnknownOption, unknown_image
from ..engine.geometry import SliceGeometry, label_image_like, read_label_on, suggested_axis, write_label
from ..engine.torch_thread import ClientGone
from ..engine.weights import ensure_weights, weights_in_use, weights_served_next
from ..replicas.sessions import note_session
from .corner_box import with_corner_roi
from .infer_params import DEFAULT_AUTO_STOP, InferParams
from .label_locks import locks_and_exclusions
from .work_caps import check_slice_count

logger = logging.getLogger(__name__)

DESCRIPTIONS = {
    "point": "SAM 2: +/- clicks on one or more slices, propagated through the volume both ways",
    "box": "SAM 2: a box (Slicer ROI) on one slice, propagated through the ROI's slices",
    "propagate": "SAM 2: a mask on one or more slices (uploaded or saved label), propagated both ways",
    "slice2d": "SAM 2: clicks on one slice, segmented on that slice only",
}


class Sam2InferTask(InferTask):
    def __init__(
        self,
        engine: Sam2VolumeEngine,
        kind: str,
        labels: list[str],
        datastore: Callable | None = None,
    ):
        if kind not in DESCRIPTIONS:
            raise ValueError(f"unknown SAM 2 task kind {kind!r}")
        description = DESCRIPTIONS[kind]
        if engine.random_weights:
            description = "[RANDOM WEIGHTS - untrained, masks are meaningless] " + description
        super().__init__(
            type=InferType.DEEPGROW,  # the type Slicer and OHIF show point tools for
            labels=list(labels),
            dimension=2 if kind == "slice2d" else 3,
            description=description,
            config={
                "preset": list(intensity.PRESETS),
                "auto_stop": DEFAULT_AUTO_STOP if kind != "slice2d" else 0,
                "start_slice": -1,
                "end_slice": -1,
                "axis": "k",
            },
        )
        self.engine = engine
        self.kind = kind
        self.datastore = datastore

    def info(self):
        info = super().info()
        info["checkpoint"] = self.engine.checkpoint_name
        info["random_weights"] = self.engine.random_weights
        info["weights"] = weights_served_next(self.engine)
        info["image_size"] = self.engine.image_size
        info["device"] = str(self.engine.device)
        info["dtype"] = self.engine.dtype or "float32"
        info["compiled"] = compile_status(self.engine)
        if info["compiled"] is None:
            info["compiled_note"] = ("not compiled: eager PyTorch (--conf compile true compiles SAM 2's tracking "
                                     "modules on CUDA)")
        return info

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        try:
            params = InferParams.parse(request, self.kind)  # types and ranges first: a 400 naming the field
            if self.kind == "box" and request.get("roi") in (None, [], ""):
                request = with_corner_roi(request)  # OHIF has no box tool: two clicks as corners
                if request.get("box_from_clicks"):
                    params = InferParams.parse(request, self.kind)  # the box made of them is checked too
            return self._run(request, params)
        except EngineInputError as e:
            logger.warning(f"{self.kind}: bad request: {e}")
            raise HTTPException(status_code=e.status_code, detail=str(e)) from e
        except ClientGone:
            raise  # the client disconnected: nothing to answer (lib/web/client_gone.py)
        except Exception:
            logger.exception(f"{self.kind}: internal error (HTTP 500) on a request that passed the checks")
            raise

    # ------------------------------------------------------------------------------------------
    def _run(self, request, params: InferParams):
        ensure_weights(self.engine)  # the newest fine-tuned version (or the pinned one), without a restart
        image_path = request.get("image")
        if not isinstance(image_path, str) or not image_path or not os.path.exists(image_path):
            raise unknown_image(request.get("image_id", image_path))
        self._check_checkpoint(params.checkpoint)
        axis, axis_hint = self._axis(request, params.axis)
        mode = "2d" if self.kind == "slice2d" else "3d"
        client_id = str(request.get("client_id") or "")
        session = self.engine.open(image_path, _session_client(request, client_id), params.preset, mode, axis)
        note_session(self.engine, session, request, _session_client(request, client_id), mode, axis)  # replicas
        # the whole request under the session's lock: prompts, propagation and the answer belong together;
        # a refused request leaves the session as it was (its prompts, undo history and last answers)
        with session.all_or_nothing() as encoded:  # prompts on new slices encode them too
            result_mask, label_names, result, label = self._answer(request, params, session, anonymous=not client_id)
            answer = self._result_json(result, session, label, label_names, encoded())
            answer["axis_hint"] = axis_hint
            answer["session_restarted"] = session.take_restarted()  # why this client's last session ended
        self.engine.trim(keep=session)
        out_file = tempfile.NamedTemporaryFile(suffix=params.result_extension, delete=False).name
        write_label(label_image_like(session.geometry.to_volume(result_mask), session.volume.image), out_file)
        return out_file, answer

    def _answer(self, request, params: InferParams, session, anonymous: bool):
        geo = session.geometry
        label = self._label_name(request)
        session.select(label)
        if params.reset_all:
            session.reset()
        elif params.reset_state:
            session.reset(label)
        if self.kind == "slice2d":
            return self._answer_2d(request, params, session, label)
        lo, hi = geo.slice_range(params.start_slice, params.end_slice)
        if params.undo:
            check_slice_count(lo, hi)
            session.undo()
        elif params.redo:
            check_slice_count(lo, hi)
            session.redo()
        else:
            tools, box_range = self._tool_prompts(request, params, geo, session, anonymous)
            if box_range is not None and max(lo, box_range[0]) > min(hi, box_range[1]):
                raise PromptError(f"roi slices {list(box_range)} do not meet start_slice/end_slice")
            changed = session.update_prompts(**tools)
            if box_range is not None:  # a box with depth bounds propagation, widened to the label's other
                prompted = sorted(session.prompts())  # prompted slices; a flat box only marks its slice
                lo, hi = max(lo, min(box_range[0], prompted[0])), min(hi, max(box_range[1], prompted[-1]))
            check_slice_count(lo, hi)  # inside all_or_nothing: a refused request leaves the session as it was
            logger.info(f"{self.kind}: label {label!r}, changed slices {changed}")
        auto_stop = params.auto_stop
        result = session.propagate(lo, hi, auto_stop=auto_stop, incremental=params.incremental)
        excluded = locks_and_exclusions(params, session, label, lambda: self._datastore_label(request, "final"))
        if params.all_labels:
            for other in session.labels:  # a label whose SAM 2 state was dropped (memory bounds): rebuilt
                if other != label and session.prompts(other) and session.result(other) is None:
                    session.propagate(lo, hi, auto_stop=auto_stop, label=other)
            mask, names = session.combined()
            if excluded is not None and label in names:
                mask[(mask == names[label]) & excluded] = 0
            return mask, names, result, label
        mask = result.mask
        for region in (session.protected(label), excluded):
            if region is not None:
                mask = np.where(region, 0, mask).astype(np.uint8)
        return mask, {label: 1}, result, label

    def _answer_2d(self, request, params: InferParams, session, label: str):
        """One slice from its own clicks; undo/redo step back to the label's previous slice and clicks."""
        if params.undo:
            session.undo()
        elif params.redo:
            session.redo()
        else:
            session.set_prompts(dict([self._slice2d_prompt(request, params, session.geometry)]))
        shape = session.volume.slices_u8.shape
        if not session.prompts():
            return np.zeros(shape, dtype=np.uint8), {label: 1}, Propagation.empty(shape, 0, 0), label
        (k, prompt), = session.prompts().items()
        t0 = time.perf_counter()
        mask2d, score = session.segment_slice(k, prompt)
        mask = np.zeros(shape, dtype=np.uint8)
        mask[k] = mask2d
        result = Propagation(mask, [k], (k, k), (k, k), {k: score}, {}, 0, time.perf_counter() - t0, [(k, k)], "2d")
        return mask, {label: 1}, result, label

    @staticmethod
    def _axis(request, axis: str | None) -> tuple[str, str | None]:
        if axis is None:
            points = [p for key in ("foreground", "background") for p in (request.get(key) or [])
                      if isinstance(p, (list, tuple)) and len(p) == 3]
            try:
                hint = suggested_axis(points)
            except (TypeError, ValueError, OverflowError):
                hint = None  # malformed points: the prompt parser names them
            if hint:  # answered along k all the same (the clicks may be axial); the answer says what they suggest
                value = int(round(float(points[0]["ij".index(hint)])))
                return "k", (
                    f"every click lies in the plane {hint}={value} while spanning several k slices: if they were "
                    f"placed in a {'sagittal' if hint == 'i' else 'coronal'} view, send \"axis\": \"{hint}\" to "
                    f"propagate through {hint} slices; this answer propagated through axial (k) slices"
                )
            return "k", None
        return axis, None

    # -- request parsing -----------------------------------------------------------------------
    def _check_checkpoint(self, wanted: str | None):
        if wanted and wanted != self.engine.checkpoint_name:
            from ..engine.checkpoints import REGISTRY

            if wanted not in REGISTRY and not str(wanted).endswith(".pt"):
                raise UnknownOption(f"unknown checkpoint {wanted!r}; known names: {', '.join(REGISTRY)}")
            raise UnknownOption(
                f"this server runs checkpoint {self.engine.checkpoint_name!r}, not {wanted!r}; "
                f"restart it with --conf checkpoint {wanted}"
            )

    def _label_name(self, request) -> str:
        name = request.get("label")
        if self.kind == "propagate" and _uploaded_label(request) is not None:
            name = None  # for this task 'label' is the uploaded mask file, not a name
        if isinstance(name, str) and name:
            return name
        return self.labels[0]

    @staticmethod
    def _points(request, geo: SliceGeometry) -> dict[int, list[tuple[float, float, int]]]:
        per_slice: dict[int, list] = defaultdict(list)
        for key, positive in (("foreground", 1), ("background", 0)):
            points = request.get(key) or []
            if not isinstance(points, list):
                raise PromptError(f"{key} must be a list of voxel indices [i, j, k], got {points!r}")
            for p in points:
                k, x, y = geo.voxel_to_frame(p)
                per_slice[k].append((x, y, positive))
        return per_slice

    def _tool_prompts(self, request, params: InferParams, geo: SliceGeometry, session, anonymous: bool):
        """The parts of the label's prompts this request's tool sets (None: left as they are), and the
        slice range of a box with depth. A client without a client_id (OHIF) shares its session with
        others of its kind: its request is then the whole prompt state, every other tool's part is cleared."""
        points = self._points(request, geo)
        tools = {"points": points, "boxes": {} if anonymous else None, "masks": {} if anonymous else None}
        box_range = None
        if self.kind == "box":
            if request.get("roi") in (None, [], ""):
                raise PromptError("sam2_box needs a 'roi' box [i0, i1, j0, j1, k0, k1], or exactly two foreground "
                                  "clicks: the box's opposite corners")
            box, (k0, k1) = geo.roi_to_box(request["roi"])
            # a given slice lies within the roi's slices (InferParams); both inside the volume (the geometry)
            k_box = (k0 + k1) // 2 if params.slice is None else geo.check_slice(params.slice, "box slice")
            tools["boxes"] = {k_box: box}
            if k1 > k0:
                box_range = (k0, k1)
        elif self.kind == "propagate":
            tools["masks"] = self._mask_prompts(request, params, geo, session)
        if not any(tools.values()) and not session.prompts():
            raise PromptError("no prompt given: add at least one foreground point, a box or a mask")
        return tools, box_range

    def _mask_prompts(self, request, params: InferParams, geo: SliceGeometry, session) -> dict[int, np.ndarray]:
        label_file = _uploaded_label(request)
        if label_file is None:
            tag = request.get("label_tag")
            if not tag:
                raise PromptError(
                    "sam2_propagate needs a mask: upload a 'label' file, or name a saved label with 'label_tag'"
                )
            label_file = self._datastore_label(request, tag)
        label = geo.to_frames(read_label_on(label_file, session.volume.image))  # frames along the axis
        value = params.label_value
        mask = label == value if value is not None else label > 0
        nonempty = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
        if nonempty.size == 0:
            raise PromptError("the mask prompt is empty (no voxel of the label is set)")
        slices = params.prompt_slices or [int(nonempty[0] + nonempty[-1]) // 2]  # the middle of the z-range
        prompts = {}
        for k in slices:
            k = geo.check_slice(k, "prompt slice")
            if not mask[k].any():
                raise PromptError(f"the mask is empty on prompt slice {k}; its non-empty slices are "
                                  f"{int(nonempty[0])}..{int(nonempty[-1])}")
            prompts[k] = mask[k]
        return prompts

    def _datastore_label(self, request, tag: str) -> str:
        image_id = request.get("image_id")
        store = self.datastore() if self.datastore else None
        uri = store.get_label_uri(image_id, tag) if store and image_id else ""
        if not uri or not os.path.exists(uri):
            raise ImageNotFound(f"no label with tag {tag!r} is saved for image {image_id!r}")
        return uri

    def _slice2d_prompt(self, request, params: InferParams, geo: SliceGeometry) -> tuple[int, SlicePrompt]:
        points = self._points(request, geo)
        k = params.slice
        if k is None:
            fg = request.get("foreground") or []
            last = (fg or request.get("background") or [None])[-1]
            if last is None:
                raise PromptError("no prompt given: add at least one foreground point")
            k = geo.voxel_to_frame(last)[0]
        k = geo.check_slice(k)
        if not points.get(k):
            raise PromptError(f"no click on slice {k}")
        return k, _point_prompt(points[k])

    def _result_json(self, result, session, label: str, label_names: dict, frames_encoded: int) -> dict:
        undo, redo = session.history_depth(label)
        return {
            "label_names": label_names,
            "label": label,
            "session_labels": session.labels,
            "axis": session.geometry.axis,
            "undo_available": undo,
            "redo_available": redo,
            "model_kind": self.kind,
            "checkpoint": self.engine.checkpoint_name,
            "random_weights": self.engine.random_weights,
            "weights": weights_in_use(self.engine),
            "preset": session.volume.preset.key,
            "prompted_slices": result.prompted_slices,
            "slice_range": list(result.slice_range),
            "processed_range": list(result.processed_range) if result.processed_range else None,
            "slice_scores": {str(k): round(v, 4) for k, v in result.scores.items()},
            # SAM's stability score of the propagated object (lib/engine/confidence.py): what AL ranks by
            "stability": None if result.stability is None else round(result.stability, 4),
            "stopped_early": result.stopped_early,
            "latency_s": round(result.seconds, 3),
            "frames_encoded": frames_encoded,
            "propagation": result.how,
            "propagated_spans": [list(span) for span in result.propagated_spans],
        }


def _session_client(request, client_id: str) -> str:
    """Whose sessions: the ``client_id`` sent (within the authenticated user's sessions when auth is on);
    without one, the user's or the browser's key that the HTTP layer set (``lib/web/client_key.py``)."""
    key = str(request.get("client_key") or "")
    if key.startswith("user:"):
        return f"{key}/{client_id}" if client_id else key
    return client_id or key


def _uploaded_label(request) -> str | None:
    """The mask file uploaded with the request, or None. monailabel puts an upload's temporary copy in
    ``request["label"]`` as an absolute path; a client's own ``label`` is a label name, which the HTTP
    layer refuses to be a path, so a relative name never reaches the file system (it could otherwise
    read, or reveal the existence of, a file in the server's working folder)."""
    label = request.get("label")
    if isinstance(label, str) and os.path.isabs(label) and os.path.isfile(label):
        return label
    return None


def _point_prompt(points) -> SlicePrompt:
    return SlicePrompt(points=tuple((x, y) for x, y, _ in points), labels=tuple(lab for _, _, lab in points))
