"""DiskStandIn: a deterministic STAND-IN for SAM 2's video predictor, for geometry tests only.

It is NOT a segmentation model. It answers the same verbs the engine calls on SAM 2's predictor and
paints a disk of radius ``RADIUS`` pixels around every positive click (or fills a box, or copies a
mask) on the prompted frame; propagation copies the nearest prompted frame's mask. Because its
output is known exactly, a test can prove that a click at voxel [i, j, k] lands on voxel [i, j, k]
of the returned label, for every orientation of the input file.
"""

from __future__ import annotations

import numpy as np
import sam2.sam2_video_predictor as sam2_video_predictor_module
import torch

RADIUS = 2


class DiskStandIn:
    image_size = 64
    device = torch.device("cpu")

    def init_state(self, video_path=None, **_):
        # The engine hands frames to SAM 2 through load_video_frames; read them the same way.
        frames, height, width = sam2_video_predictor_module.load_video_frames(video_path=video_path)
        return {
            "images": frames, "num_frames": len(frames), "video_height": height, "video_width": width,
            "obj_id_to_idx": {}, "masks": {}, "output_dict_per_obj": {}, "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }

    def _ensure(self, state, obj_id):
        if obj_id not in state["obj_id_to_idx"]:
            idx = len(state["obj_id_to_idx"])
            state["obj_id_to_idx"][obj_id] = idx
            for key in ("output_dict_per_obj", "temp_output_dict_per_obj"):
                state[key][idx] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
            state["frames_tracked_per_obj"][idx] = {}
        return state["obj_id_to_idx"][obj_id]

    def _store(self, state, obj_id, k, mask, cond):
        idx = self._ensure(state, obj_id)
        out = {"object_score_logits": torch.tensor([[10.0 if mask.any() else -10.0]])}
        state["output_dict_per_obj"][idx]["cond_frame_outputs" if cond else "non_cond_frame_outputs"][k] = out
        logits = torch.from_numpy(np.where(mask, 10.0, -10.0).astype(np.float32))[None, None]
        return k, [obj_id], logits

    def add_new_points_or_box(self, state, frame_idx, obj_id, points=None, labels=None, box=None, **_):
        h, w = state["video_height"], state["video_width"]
        yy, xx = np.mgrid[0:h, 0:w]
        mask = np.zeros((h, w), bool)
        for (x, y), lab in zip(points if points is not None else [], labels if labels is not None else []):
            if lab == 1:
                mask |= (xx - x) ** 2 + (yy - y) ** 2 <= RADIUS**2
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in box)
            mask[y0 : y1 + 1, x0 : x1 + 1] = True
        state["masks"][frame_idx] = mask
        return self._store(state, obj_id, frame_idx, mask, cond=True)

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        state["masks"][frame_idx] = np.asarray(mask, bool)
        return self._store(state, obj_id, frame_idx, state["masks"][frame_idx], cond=True)

    def clear_all_prompts_in_frame(self, state, frame_idx, obj_id, need_output=True):
        state["masks"].pop(frame_idx, None)

    def reset_state(self, state):
        state["masks"].clear()

    def propagate_in_video(self, state, start_frame_idx, max_frame_num_to_track, reverse=False):
        step = -1 if reverse else 1
        for n in range(max_frame_num_to_track + 1):
            k = start_frame_idx + step * n
            if not 0 <= k < state["num_frames"]:
                return
            nearest = min(state["masks"], key=lambda p: abs(p - k))
            _, ids, logits = self._store(state, 1, k, state["masks"][nearest], cond=k in state["masks"])
            yield k, ids, logits
