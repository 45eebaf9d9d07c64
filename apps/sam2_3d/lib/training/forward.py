"""SAM 2's video forward with memory, for training, over ``SAM2Base``'s own methods.

The ``sam2`` package ships no training code, so the loop of its ``SAM2Train`` is written here from the
public building blocks: ``forward_image`` (image encoder + the decoder's high-res projections),
``_prepare_backbone_features``, ``_track_step`` (memory attention + prompt encoder + mask decoder) and
``_encode_memory_in_output`` (memory encoder). ``track_step`` itself is not used because it hides the
candidate masks and IoU predictions the losses need. The first frame of a clip is the conditioning
frame (it holds the prompt); every later frame is tracked from the memory of the frames before it.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F


def encode_frames(model, frames: torch.Tensor, train_encoder: bool) -> dict:
    """``forward_image`` on a clip's frames ``[L, 3, S, S]``; no graph when the encoder is frozen."""
    with nullcontext() if train_encoder else torch.no_grad():
        return model.forward_image(frames)


def frame_features(backbone_out: dict, t: int) -> dict:
    return {
        "backbone_fpn": [f[t : t + 1] for f in backbone_out["backbone_fpn"]],
        "vision_pos_enc": [p[t : t + 1] for p in backbone_out["vision_pos_enc"]],
    }


def prompt_inputs(prompt: dict, height: int, width: int, image_size: int, device) -> tuple[dict | None, torch.Tensor | None]:
    """A simulated prompt in frame pixels -> SAM 2's ``point_inputs`` / ``mask_inputs`` at its input size.

    Scaling follows ``SAM2VideoPredictor.add_new_points_or_box`` (coordinates / frame size * image size;
    a box is the two corner points labelled 2 and 3, before any click) and ``add_new_mask`` (bilinear
    antialiased resize, then >= 0.5)."""
    if prompt["kind"] == "mask":
        mask = torch.as_tensor(prompt["mask"], dtype=torch.float32, device=device)[None, None]
        mask = F.interpolate(mask, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        return None, (mask >= 0.5).float()
    points, labels = [], []
    if prompt.get("box") is not None:
        x0, y0, x1, y1 = prompt["box"]
        points += [(x0, y0), (x1, y1)]
        labels += [2, 3]
    points += [tuple(p) for p in prompt.get("points", [])]
    labels += list(prompt.get("labels", []))
    coords = torch.tensor(points, dtype=torch.float32, device=device)
    coords = coords / torch.tensor([width, height], dtype=torch.float32, device=device) * image_size
    return {"point_coords": coords[None], "point_labels": torch.tensor(labels, dtype=torch.int32, device=device)[None]}, None


def video_forward(model, backbone_out: dict, point_inputs: dict | None, mask_inputs: torch.Tensor | None) -> list[dict]:
    """Track one object through the clip; per frame: candidate masks (logits at the input size), their
    IoU predictions, the object-score logit, and whether the frame's output is just the mask prompt."""
    num_frames = backbone_out["backbone_fpn"][0].shape[0]
    output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    outputs = []
    for t in range(num_frames):
        _, feats, pos, sizes = model._prepare_backbone_features(frame_features(backbone_out, t))
        first = t == 0
        points = point_inputs if first else None
        masks = mask_inputs if first else None
        current, sam_outputs, _, _ = model._track_step(
            t, first, feats, pos, sizes, points, masks, output_dict, num_frames, False, None
        )
        _, high_res_multimasks, ious, low_res, high_res, obj_ptr, object_score_logits = sam_outputs
        current.update(pred_masks=low_res, pred_masks_high_res=high_res, obj_ptr=obj_ptr)
        model._encode_memory_in_output(feats, sizes, points, True, high_res, object_score_logits, current)
        output_dict["cond_frame_outputs" if first else "non_cond_frame_outputs"][t] = current
        outputs.append({
            "multimasks": high_res_multimasks,  # [1, M, S, S] logits
            "ious": ious,  # [1, M]
            "object_score_logits": object_score_logits,  # [1, 1]
            "is_prompt_mask": masks is not None and model.use_mask_input_as_output_without_sam,
        })
    return outputs
