"""A confidence for a propagated object that still ranks after fine-tuning: SAM's stability score.

SAM 2's object score (sigmoid of ``object_score_logits``) saturates once the model is fine-tuned on one kind
of object: 0.995 on every slice, tumour or not, for volume Dice 0.03 and 0.8 alike (issue 22). The mask
logits do not: where the model is unsure, many pixels sit near the threshold. SAM's own measure of that is
the *stability score* (``sam2.utils.amg.calculate_stability_score``, used by SAM 2's automatic mask
generator): the IoU of the mask thresholded at ``+offset`` and at ``-offset``, i.e.
``|logit > +1| / |logit > -1|`` with SAM 2's default offset 1.0.

Per slice we keep the two areas, so that an image's confidence is the stability of its whole propagated
object (sums over slices), which weighs each slice by its size as volume Dice does, instead of letting a
few-pixel edge slice count as much as the middle of the object.
"""

from __future__ import annotations

import torch

# sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator's default stability_score_offset; mask threshold 0
OFFSET = 1.0


def areas(logits: torch.Tensor) -> torch.Tensor:
    """int64 [N, 2]: per mask (logits [N, H, W]), the pixels above +OFFSET and above -OFFSET - the
    intersection and union of ``calculate_stability_score``. Stays on the logits' device."""
    flat = logits.flatten(1)
    return torch.stack([(flat > OFFSET).sum(1), (flat > -OFFSET).sum(1)], dim=1)


def object_stability(per_slice: dict) -> float | None:
    """The stability of an object over its slices ({slice: (inner, outer)}): the IoU of its +1 and -1
    volumes. None without slices; 0 if nothing was found on any slice (a prompted object with no answer
    is one to review, not one to trust)."""
    if not per_slice:
        return None
    inner = sum(int(a) for a, _ in per_slice.values())
    outer = sum(int(b) for _, b in per_slice.values())
    return inner / outer if outer else 0.0
