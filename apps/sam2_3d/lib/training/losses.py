"""SAM 2's training loss on one tracked frame, with MONAI's focal and Dice losses.

As in SAM 2's recipe (its ``MultiStepMultiMasksAndIous``, weights 20 : 1 : 1 : 1): of the candidate
masks, only the one with the lowest focal + Dice loss is supervised; every candidate's IoU prediction is
regressed (L1) on its true IoU; the object-score logit is trained with binary cross-entropy on whether
the object is on the frame; mask and IoU terms count only on frames where the object is present.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss

WEIGHTS = {"focal": 20.0, "dice": 1.0, "iou": 1.0, "object": 1.0}

_focal = FocalLoss(use_softmax=False, gamma=2.0, alpha=0.25, reduction="none")  # sigmoid focal, per pixel
_dice = DiceLoss(sigmoid=True, reduction="none", smooth_nr=1.0, smooth_dr=1.0)  # per candidate (channel)


def frame_loss(out: dict, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """``gt``: float ``[1, 1, S, S]``. Returns the weighted total and its (unweighted) terms."""
    logits = out["multimasks"].float()
    m = logits.shape[1]
    target = gt.expand(-1, m, -1, -1)
    focal = _focal(logits, target).mean(dim=(2, 3))  # [1, M]
    dice = _dice(logits, target).reshape(1, m)  # [1, M]
    best = torch.argmin(WEIGHTS["focal"] * focal + WEIGHTS["dice"] * dice, dim=1)
    pred = logits > 0
    inter = (pred & (target > 0.5)).flatten(2).sum(-1).float()
    union = (pred | (target > 0.5)).flatten(2).sum(-1).float()
    true_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    present = (gt.flatten(1).amax(dim=1) > 0.5).float()  # [1]
    iou = F.l1_loss(out["ious"].float(), true_iou, reduction="none").mean(dim=1)
    obj = F.binary_cross_entropy_with_logits(out["object_score_logits"].float().reshape(-1), present)
    terms = {
        "focal": (focal.gather(1, best[:, None]).squeeze(1) * present).mean(),
        "dice": (dice.gather(1, best[:, None]).squeeze(1) * present).mean(),
        "iou": (iou * present).mean(),
        "object": obj,
    }
    terms["total"] = sum(WEIGHTS[k] * v for k, v in terms.items())
    with torch.no_grad():  # the Dice of the supervised candidate, for the logs
        p = pred.gather(1, best[:, None, None, None].expand(-1, 1, *pred.shape[2:])).float()
        terms["frame_dice"] = (2 * (p * gt).sum() + 1e-6) / (p.sum() + gt.sum() + 1e-6)
    return terms
