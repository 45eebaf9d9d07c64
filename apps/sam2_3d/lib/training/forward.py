"""SAM 2's video forward with memory, for training, over ``SAM2Base``'s own methods.

The ``sam2`` package ships no training code, so the loop of its ``SAM2Train`` is written here from the
public building blocks: ``forward_image`` (image encoder + the decoder's high-res projections),
``_prepare_backbone_features``, ``_track_step`` (memory attention + prompt encoder + mask decoder) and
``_encode_memory_in_output`` (memory encoder). ``track_step`` itself is not used because it hides the
candidate masks and IoU predictions the losses need. The first frame of a clip is the conditioning
frame (it holds the prompt); every later frame is tracked from the memory of the frames before it.

Corrective clicks, as ``SAM2Train._iter_correct_pt_sampling`` adds them on a frame prompted with points
or a box: ``corrections`` times, a click is drawn from the error of the last prediction (sam2's own
``get_next_point(..., "uniform")``; with probability ``p_from_gt`` from the ground truth instead), added to
the frame's points, and the SAM heads run again with the previous mask logits as mask input. Every step's
output is supervised; the last one goes into the memory.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_utils import get_next_point

from lib.engine import sam2_adapter


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


def video_forward(model, backbone_out: dict, point_inputs: dict | None, mask_inputs: torch.Tensor | None,
                  gt_first: torch.Tensor | None = None, corrections: int = 0, p_from_gt: float = 0.0,
                  generator: torch.Generator | None = None) -> list[dict]:
    """Track one object through the clip; per frame: candidate masks (logits at the input size), their
    IoU predictions, the object-score logit, whether the frame's output is just the mask prompt, and
    (first frame, with corrections) the earlier correction steps' outputs under ``"steps"``.
    ``gt_first``: the first frame's ground truth ``[1, 1, S, S]``, needed for corrective clicks."""
    num_frames = backbone_out["backbone_fpn"][0].shape[0]
    output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    outputs = []
    for t in range(num_frames):
        feats, pos, sizes = sam2_adapter.prepare_backbone_features(model, frame_features(backbone_out, t))
        first = t == 0
        points = point_inputs if first else None
        masks = mask_inputs if first else None
        current, sam_outputs, high_res_features, pix_feat = sam2_adapter.track_step(
            model, t, is_init_cond_frame=first, current_vision_feats=feats, current_vision_pos_embeds=pos,
            feat_sizes=sizes, point_inputs=points, mask_inputs=masks, output_dict=output_dict, num_frames=num_frames)
        steps = []
        if first and points is not None and corrections > 0 and gt_first is not None:
            for _ in range(corrections):
                _, high_res_multimasks, ious, low_res, high_res, _, object_score_logits = sam_outputs
                steps.append({"multimasks": high_res_multimasks, "ious": ious,
                              "object_score_logits": object_score_logits})
                from_gt = p_from_gt > 0 and float(torch.rand((), generator=generator)) < p_from_gt
                with torch.no_grad(), _seeded(generator):
                    xy, label = get_next_point(gt_first > 0.5, None if from_gt else high_res > 0, "uniform")
                points = {"point_coords": torch.cat([points["point_coords"], xy.to(points["point_coords"])], 1),
                          "point_labels": torch.cat([points["point_labels"], label.to(points["point_labels"])], 1)}
                sam_outputs = sam2_adapter.forward_sam_heads(model, pix_feat, points, low_res, high_res_features)
            current["point_inputs"] = points
        _, high_res_multimasks, ious, low_res, high_res, obj_ptr, object_score_logits = sam_outputs
        current.update(pred_masks=low_res, pred_masks_high_res=high_res, obj_ptr=obj_ptr)
        sam2_adapter.encode_memory(model, feats, sizes, points, high_res, object_score_logits, current)
        output_dict["cond_frame_outputs" if first else "non_cond_frame_outputs"][t] = current
        outputs.append({
            "multimasks": high_res_multimasks,  # [1, M, S, S] logits
            "ious": ious,  # [1, M]
            "object_score_logits": object_score_logits,  # [1, 1]
            "is_prompt_mask": masks is not None and model.use_mask_input_as_output_without_sam,
            "steps": steps,
        })
    return outputs


@contextmanager
def _seeded(generator: torch.Generator | None):
    """sam2's point samplers draw from torch's global generator: draw from the clip's own instead, so a
    resumed run samples the same clicks, without disturbing anyone else's random stream."""
    if generator is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (), generator=generator)))
        yield
