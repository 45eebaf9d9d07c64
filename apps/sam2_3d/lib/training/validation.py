"""Validation with the evaluation's own code: its case loading (cropped along z), the mask protocol
through the engine's session verbs, and MONAI's volume Dice (``lib/evaluation``)."""

from __future__ import annotations

import numpy as np

from lib.engine.intensity import IntensityPreset
from lib.engine.sam2_adapter import quiet_progress_bars
from lib.evaluation import datasets, metrics, protocols

MASK = protocols.ProtocolSpec.parse("mask")


def label_specs(objects: str, label_values) -> list[datasets.LabelSpec]:
    if objects == "any":
        return [datasets.LabelSpec("any", None)]
    return [datasets.LabelSpec(str(int(v)), (int(v),)) for v in label_values]


def validate(engine, pairs: list[dict], objects: str, preset: str, z_margin: int, seed: int = 0) -> dict:
    """Mask-protocol volume Dice of every object of every held-out image; the mean over objects."""
    quiet_progress_bars()  # SAM 2's per-pass tqdm bar would flood the train log
    per_object = []
    for pair in pairs:
        case = datasets.Case(pair["image_id"], pair["image"], pair["label"])
        raw = datasets.load(case)  # full volume: which label values are there
        values = sorted(int(v) for v in np.unique(raw.label) if v != 0)
        raw.cleanup()
        specs = label_specs(objects, values)
        union = lambda lab: np.logical_or.reduce([s.mask(lab) for s in specs])  # noqa: E731
        loaded = datasets.load(case, union, None if z_margin < 0 else z_margin)
        try:
            for spec in specs:
                gt = spec.mask(loaded.label)
                if not gt.any():
                    continue
                session = engine.open(loaded.image_path, client_id=f"train-validation/{spec.name}",
                                      preset=IntensityPreset(preset))
                run = protocols.run(MASK, session, gt, "volume", seed=seed)
                dice = metrics.overlap(run.mask, gt)["dice"]
                per_object.append({"image": pair["image_id"], "object": spec.name, "dice": round(float(dice), 6),
                                   "slices": int(gt.shape[0])})
        finally:
            engine.close(loaded.image_path)
            loaded.cleanup()
    dices = [o["dice"] for o in per_object]
    return {"dice": round(float(np.mean(dices)), 6) if dices else None, "objects": per_object,
            "protocol": "mask", "metric": "volume Dice (MONAI compute_dice)"}
