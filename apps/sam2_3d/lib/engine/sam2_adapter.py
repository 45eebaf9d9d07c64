"""Every use of SAM 2's private API, in one place, against the one version it was written for.

SAM 2 (``sam2`` on PyPI) has no public API for what a volume server needs: reading frames from memory,
serving cached image features, tracking one frame at a time for training, or a quiet progress bar. The
app reaches into its internals for these, and only through this module, so that an upgrade of SAM 2 is
one file to read, the app refuses to start on another version (``main.py``'s ``WRITTEN_AGAINST``), and
``tests/test_adapters.py`` (each private name and its parameters, as
:data:`TOUCH_POINTS` lists them) fails before a user does. The inference state's dict keys that
``tracking.py`` reads are SAM 2's ``init_state`` layout of the same version.
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager

import sam2.sam2_video_predictor as video_predictor_module
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_video_predictor import SAM2VideoPredictor, SAM2VideoPredictorVOS

PACKAGE = "sam2"
WRITTEN_AGAINST = "1.1.0"

# (owner, private name, its parameters) for each touch point; the test checks each against the installed sam2.
TOUCH_POINTS = (
    (video_predictor_module, "load_video_frames", ("video_path", "image_size", "offload_video_to_cpu", "img_mean",
                                                   "img_std", "async_loading_frames", "compute_device")),
    (video_predictor_module, "tqdm", None),  # the module-global name quiet_progress_bars replaces
    (SAM2VideoPredictor, "_get_image_feature", ("self", "inference_state", "frame_idx", "batch_size")),
    (SAM2VideoPredictor, "_get_orig_video_res_output", ("self", "inference_state", "any_res_masks")),
    (SAM2Base, "_prepare_backbone_features", ("self", "backbone_out")),
    (SAM2Base, "_track_step", ("self", "frame_idx", "is_init_cond_frame", "current_vision_feats",
                               "current_vision_pos_embeds", "feat_sizes", "point_inputs", "mask_inputs",
                               "output_dict", "num_frames", "track_in_reverse", "prev_sam_mask_logits")),
    (SAM2Base, "_forward_sam_heads", ("self", "backbone_features", "point_inputs", "mask_inputs",
                                      "high_res_features", "multimask_output")),
    (SAM2VideoPredictorVOS, "_forward_sam_heads", ("self", "backbone_features", "point_inputs", "mask_inputs",
                                                   "high_res_features", "multimask_output")),
    (SAM2Base, "_use_multimask", ("self", "is_init_cond_frame", "point_inputs")),
    (SAM2Base, "_encode_memory_in_output", ("self", "current_vision_feats", "feat_sizes", "point_inputs",
                                            "run_mem_encoder", "high_res_masks", "object_score_logits",
                                            "current_out")),
)

_frames_loader_lock = threading.Lock()


@contextmanager
def frames_from_memory(frames, height: int, width: int):
    """While inside, SAM 2's ``init_state`` reads ``frames`` instead of a JPEG folder or an mp4 file.

    ``init_state`` reads frames through the module-global ``load_video_frames`` only; it is replaced for
    the call, under a lock (it is process-wide), so every other field of the state is SAM 2's own."""

    def load_in_memory_frames(**_kwargs):
        return frames, height, width

    with _frames_loader_lock:
        original = video_predictor_module.load_video_frames
        video_predictor_module.load_video_frames = load_in_memory_frames
        try:
            yield
        finally:
            video_predictor_module.load_video_frames = original


def become(predictor, cls: type) -> None:
    """Give a built predictor a subclass of ours: SAM 2 builds its own class from the hydra config, and our
    subclasses add behaviour (where features come from, which calls are compiled), no state of their own."""
    if not isinstance(predictor, SAM2VideoPredictor) or not issubclass(cls, SAM2VideoPredictor):
        raise TypeError(f"{cls.__name__} is not a SAM2VideoPredictor for {type(predictor).__name__}")
    predictor.__class__ = cls


def masks_at_video_resolution(predictor, state: dict, pred_masks):
    """Low-resolution mask logits -> logits at the frame's size (SAM 2's own interpolation)."""
    return predictor._get_orig_video_res_output(state, pred_masks)[1]


def prepare_backbone_features(model, backbone_out: dict):
    """(vision features, their position encodings, their sizes) of one frame's backbone output."""
    _, feats, pos, sizes = model._prepare_backbone_features(backbone_out)
    return feats, pos, sizes


def track_step(model, frame_idx: int, *, is_init_cond_frame: bool, current_vision_feats, current_vision_pos_embeds,
               feat_sizes, point_inputs, mask_inputs, output_dict: dict, num_frames: int,
               track_in_reverse: bool = False, prev_sam_mask_logits=None):
    """One frame of SAM 2's tracking (memory attention, then the SAM heads), by name: SAM 2 takes 11 positional
    parameters. Returns (the frame's output dict, the heads' outputs, high-res features, pixel features)."""
    return model._track_step(frame_idx, is_init_cond_frame, current_vision_feats, current_vision_pos_embeds,
                             feat_sizes, point_inputs, mask_inputs, output_dict, num_frames, track_in_reverse,
                             prev_sam_mask_logits)


def forward_sam_heads(model, backbone_features, point_inputs, mask_inputs, high_res_features):
    """SAM's prompt encoder and mask decoder on one frame, multimask as SAM 2 chooses for a prompted frame."""
    return model._forward_sam_heads(
        backbone_features=backbone_features, point_inputs=point_inputs, mask_inputs=mask_inputs,
        high_res_features=high_res_features, multimask_output=model._use_multimask(True, point_inputs))


def encode_memory(model, current_vision_feats, feat_sizes, point_inputs, high_res_masks, object_score_logits,
                  current_out: dict) -> None:
    """The frame's memory (``current_out["maskmem_features"]`` ...), as SAM 2's tracking writes it."""
    model._encode_memory_in_output(current_vision_feats, feat_sizes, point_inputs, True, high_res_masks,
                                   object_score_logits, current_out)


def quiet_progress_bars() -> None:
    """SAM 2's ``propagate_in_video`` draws a tqdm bar per pass; only its module-global ``tqdm`` is replaced."""
    from tqdm import tqdm

    video_predictor_module.tqdm = functools.partial(tqdm, disable=True)
