"""MONAI Label infer tasks: thin layers that turn Slicer/OHIF requests into engine verbs.

Four tasks share this class and differ only in ``kind``:

* ``point``     - ``foreground`` / ``background`` voxel clicks on one or more slices, propagated;
* ``box``       - Slicer's ``roi`` box (+ optional clicks) on one slice; its k-range bounds propagation;
* ``propagate`` - a mask (uploaded ``label`` file or a datastore label) on given slices, propagated;
* ``slice2d``   - clicks on one slice answered on that slice only (``dimension: 2``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict
from typing import Callable

import numpy as np
from fastapi import HTTPException

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ..engine import intensity
from ..engine.engine import Sam2VolumeEngine, SlicePrompt
from ..engine.errors import EngineInputError, ImageNotFound, PromptError, UnknownOption
from ..engine.geometry import SliceGeometry, label_image_like, read_label_on, write_label
from ..engine.weights import ensure_weights, weights_in_use

logger = logging.getLogger(__name__)

RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")
DEFAULT_AUTO_STOP = 3

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
            },
        )
        self.engine = engine
        self.kind = kind
        self.datastore = datastore

    def info(self):
        info = super().info()
        info["checkpoint"] = self.engine.checkpoint_name
        info["random_weights"] = self.engine.random_weights
        return info

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        try:
            return self._run(request)
        except EngineInputError as e:
            logger.warning(f"{self.kind}: bad request: {e}")
            raise HTTPException(status_code=e.status_code, detail=str(e)) from e

    # ------------------------------------------------------------------------------------------
    def _run(self, request):
        ensure_weights(self.engine)  # the newest fine-tuned version (or the pinned one), without a restart
        image_path = request.get("image")
        if not isinstance(image_path, str) or not image_path or not os.path.exists(image_path):
            raise ImageNotFound(
                f"unknown image {request.get('image_id', image_path)!r}: it is not in the datastore, and no live "
                f"session holds it (a session_id may have expired)"
            )
        self._check_checkpoint(request)
        extension = self._result_extension(request)
        preset = intensity.preset_from_params(request)
        mode = "2d" if self.kind == "slice2d" else "3d"
        session = self.engine.open(image_path, str(request.get("client_id") or ""), preset, mode)
        geo = session.geometry
        label_name = self._label_name(request)
        if _truthy(request.get("reset_state")) or (session.label is not None and session.label != label_name):
            session.reset()
        session.label = label_name
        encoded_before = session.features.frames_encoded  # prompts on new slices encode them too

        if self.kind == "slice2d":
            k, prompt = self._slice2d_prompt(request, geo)
            session.segment_slice(k, prompt)
            result = session.last
        else:
            prompts, (lo, hi) = self._prompts_and_range(request, geo, session)
            changed = session.set_prompts(prompts)
            auto_stop = int(request.get("auto_stop", DEFAULT_AUTO_STOP) or 0)
            incremental = _truthy(request.get("incremental", True))  # false: always re-propagate fully
            result = session.propagate(lo, hi, auto_stop=auto_stop, incremental=incremental)
            logger.info(f"{self.kind}: changed slices {changed}, processed {result.processed_range}")

        out_file = tempfile.NamedTemporaryFile(suffix=extension, delete=False).name
        write_label(label_image_like(result.mask, session.volume.image), out_file)
        frames_encoded = session.features.frames_encoded - encoded_before
        return out_file, self._result_json(result, session, label_name, frames_encoded)

    # -- request parsing -----------------------------------------------------------------------
    def _check_checkpoint(self, request):
        wanted = request.get("checkpoint")
        if wanted and wanted != self.engine.checkpoint_name:
            from ..engine.checkpoints import REGISTRY

            if wanted not in REGISTRY and not str(wanted).endswith(".pt"):
                raise UnknownOption(f"unknown checkpoint {wanted!r}; known names: {', '.join(REGISTRY)}")
            raise UnknownOption(
                f"this server runs checkpoint {self.engine.checkpoint_name!r}, not {wanted!r}; "
                f"restart it with --conf checkpoint {wanted}"
            )

    @staticmethod
    def _result_extension(request) -> str:
        ext = request.get("result_extension") or ".nii.gz"
        if ext not in RESULT_EXTENSIONS:
            raise UnknownOption(f"unsupported result_extension {ext!r}; use one of {', '.join(RESULT_EXTENSIONS)}")
        return ext

    def _label_name(self, request) -> str:
        name = request.get("label")
        if self.kind == "propagate" and isinstance(name, str) and os.path.exists(name):
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

    def _slice_range(self, request, geo: SliceGeometry) -> tuple[int, int]:
        return geo.slice_range(request.get("start_slice"), request.get("end_slice"))

    def _prompts_and_range(self, request, geo: SliceGeometry, session):
        lo, hi = self._slice_range(request, geo)
        prompts: dict[int, SlicePrompt] = {}
        points = self._points(request, geo)
        if self.kind == "box":
            if request.get("roi") in (None, [], ""):
                raise PromptError("sam2_box needs a 'roi' box [i0, i1, j0, j1, k0, k1]")
            box, (k0, k1) = geo.roi_to_box(request["roi"])
            k_box = request.get("slice")
            k_box = geo.check_slice(k_box) if k_box is not None and k0 <= int(k_box) <= k1 else (k0 + k1) // 2
            if k1 > k0:  # a box with depth bounds propagation; a flat box only marks its slice
                lo, hi = max(lo, k0), min(hi, k1)
                if lo > hi:
                    raise PromptError(f"roi slices [{k0}, {k1}] do not meet start_slice/end_slice")
            box_points = points.pop(k_box, [])
            prompts[k_box] = _point_prompt(box_points, box=box)
        elif self.kind == "propagate":
            prompts.update(self._mask_prompts(request, geo, session))
        for k, pts in points.items():
            prompts[k] = _point_prompt(pts)
        if not prompts:
            raise PromptError("no prompt given: add at least one foreground point, a box or a mask")
        return prompts, (lo, hi)

    def _mask_prompts(self, request, geo: SliceGeometry, session) -> dict[int, SlicePrompt]:
        label_file = request.get("label")
        if not (isinstance(label_file, str) and os.path.isfile(label_file)):
            tag = request.get("label_tag")
            if not tag:
                raise PromptError(
                    "sam2_propagate needs a mask: upload a 'label' file, or name a saved label with 'label_tag'"
                )
            label_file = self._datastore_label(request, tag)
        label = read_label_on(label_file, session.volume.image)  # [k, j, i]
        value = request.get("label_value")
        mask = label == int(value) if value is not None else label > 0
        nonempty = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
        if nonempty.size == 0:
            raise PromptError("the mask prompt is empty (no voxel of the label is set)")
        slices = request.get("prompt_slices")
        if slices in (None, [], ""):
            slices = [int(nonempty[0] + nonempty[-1]) // 2]  # the middle of the object's z-range
        if not isinstance(slices, list):
            slices = [slices]
        prompts = {}
        for k in slices:
            k = geo.check_slice(k, "prompt slice")
            if not mask[k].any():
                raise PromptError(f"the mask is empty on prompt slice {k}; its non-empty slices are "
                                  f"{int(nonempty[0])}..{int(nonempty[-1])}")
            prompts[k] = SlicePrompt.from_mask(mask[k])
        return prompts

    def _datastore_label(self, request, tag: str) -> str:
        image_id = request.get("image_id")
        store = self.datastore() if self.datastore else None
        uri = store.get_label_uri(image_id, tag) if store and image_id else ""
        if not uri or not os.path.exists(uri):
            raise ImageNotFound(f"no label with tag {tag!r} is saved for image {image_id!r}")
        return uri

    def _slice2d_prompt(self, request, geo: SliceGeometry) -> tuple[int, SlicePrompt]:
        points = self._points(request, geo)
        k = request.get("slice")
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

    def _result_json(self, result, session, label_name: str, frames_encoded: int) -> dict:
        return {
            "label_names": {label_name: 1},
            "model_kind": self.kind,
            "checkpoint": self.engine.checkpoint_name,
            "random_weights": self.engine.random_weights,
            "weights": weights_in_use(self.engine),
            "preset": session.volume.preset.key,
            "prompted_slices": result.prompted_slices,
            "slice_range": list(result.slice_range),
            "processed_range": list(result.processed_range) if result.processed_range else None,
            "slice_scores": {str(k): round(v, 4) for k, v in result.scores.items()},
            "stopped_early": result.stopped_early,
            "latency_s": round(result.seconds, 3),
            "frames_encoded": frames_encoded,
            "propagation": result.how,
            "propagated_spans": [list(span) for span in result.propagated_spans],
        }


def _point_prompt(points, box=None) -> SlicePrompt:
    return SlicePrompt(
        points=tuple((x, y) for x, y, _ in points),
        labels=tuple(lab for _, _, lab in points),
        box=tuple(box) if box is not None else None,
    )


def _truthy(v) -> bool:
    return v is True or str(v).lower() in ("1", "true", "yes")
