"""Two checks of benchmarks/finetune_demo.py that go beyond Dice on the held-out image (issue 22).

* ``second_object``: a click inside one of two separate labelled structures must return that structure,
  not the other: on the held-out BraTS image, oedema (label 2) vs enhancing tumour (label 4) - two labels
  of a multi-label case, on the slice where both are largest; and on the TotalSegmentator CT, right vs left
  kidney (ids 2 and 3; model-generated labels). One click at each object's deepest point, propagated
  over +-2 slices. *Followed*: the answer holds the clicked voxel, overlaps the clicked object more than
  the other one (Dice), and holds less than half of the other one.
* ``confidence_ranking``: on held-out cases with known Dice, does the confidence ``sam2_low_confidence``
  ranks by (the stability score, lib/engine/confidence.py) order them by Dice, and does SAM 2's object
  score (the old ranking)? Spearman rho between each and volume Dice; rho is undefined (None) for a score
  that is the same on every case.
"""

from __future__ import annotations

import os

import numpy as np

PAIRS = (  # (case, image, label, object A's label values, object B's, names)
    ("pat0004 FLAIR", ("brats2013", "pat0004", "flair.nii.gz"), ("brats2013", "pat0004", "label.nii.gz"),
     (2,), (4,), ("oedema", "enhancing tumour")),
    ("TotalSegmentator CT", ("totalseg_ct_small", "image.nii.gz"), ("totalseg_ct_small", "label.nii.gz"),
     (2,), (3,), ("right kidney", "left kidney")),
)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def _deepest(mask2d: np.ndarray) -> tuple[int, int]:
    from scipy import ndimage

    y, x = np.unravel_index(int(np.argmax(ndimage.distance_transform_edt(mask2d))), mask2d.shape)
    return int(x), int(y)


def second_object(engine, data_root: str, tag: str) -> dict:
    import SimpleITK as sitk

    from lib.engine.intensity import IntensityPreset
    from lib.engine.prompts import SlicePrompt

    results = []
    for case, image_parts, label_parts, values_a, values_b, names in PAIRS:
        image_path = os.path.join(data_root, *image_parts)
        label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(data_root, *label_parts)))
        objects = (np.isin(label, values_a), np.isin(label, values_b))
        k = int(np.argmax(np.minimum(objects[0].sum(axis=(1, 2)), objects[1].sum(axis=(1, 2)))))
        lo, hi = max(0, k - 2), min(label.shape[0] - 1, k + 2)
        for n, (clicked, other) in enumerate((objects, objects[::-1])):
            x, y = _deepest(clicked[k])
            session = engine.open(image_path, client_id=f"demo/{tag}/second", preset=IntensityPreset("auto"))
            session.reset()
            session.set_prompts({k: SlicePrompt(points=((float(x), float(y)),), labels=(1,))})
            answer = session.propagate(lo, hi, auto_stop=0).mask[lo : hi + 1].astype(bool)
            engine.close(image_path)
            want, not_want = clicked[lo : hi + 1], other[lo : hi + 1]
            row = {"case": case, "clicked": names[n], "other": names[1 - n], "slice": k, "click_xy": [x, y],
                   "clicked_voxel_in_answer": bool(answer[k - lo, y, x]),
                   "dice_clicked": round(_dice(answer, want), 4), "dice_other": round(_dice(answer, not_want), 4),
                   "other_recall": round(float((answer & not_want).sum() / max(1, not_want.sum())), 4),
                   "answer_voxels": int(answer.sum())}
            row["followed"] = (row["clicked_voxel_in_answer"] and row["dice_clicked"] > row["dice_other"]
                               and row["other_recall"] < 0.5)
            results.append(row)
    return {"clicks": results, "followed": sum(r["followed"] for r in results), "of": len(results)}


def held_out_cases(data_root: str):
    """pat0004's three tumour parts on FLAIR and T1c, and the pyradiomics brain tumour (as the test has)."""
    from lib.evaluation import datasets

    parts = {"whole": lambda lab: lab > 0, "enhancing": lambda lab: lab == 4, "oedema": lambda lab: lab == 2}
    pat = os.path.join(data_root, "brats2013", "pat0004")
    cases = [(f"pat0004 {mod} {part}", datasets.Case("pat0004", os.path.join(pat, f"{mod}.nii.gz"),
                                                     os.path.join(pat, "label.nii.gz")), fn)
             for mod in ("flair", "t1c") for part, fn in parts.items()]
    brain = os.path.join(data_root, "pyradiomics_brain")
    cases.append(("pyradiomics brain tumour", datasets.Case("pyradiomics_brain", os.path.join(brain, "image.nrrd"),
                                                            os.path.join(brain, "label.nrrd")), parts["whole"]))
    return cases


def confidence_ranking(engine, data_root: str, tag: str, slices: int = 9) -> dict:
    from scipy.stats import spearmanr

    from lib.engine.intensity import IntensityPreset
    from lib.evaluation import datasets, metrics, protocols

    rows = []
    for name, case, objects in held_out_cases(data_root):
        loaded = datasets.load(case, objects, None, max_slices=slices)
        try:
            gt = objects(loaded.label)
            session = engine.open(loaded.image_path, client_id=f"demo/{tag}/rank", preset=IntensityPreset("auto"))
            run = protocols.run(protocols.ProtocolSpec.parse("mask"), session, gt, "volume", seed=0)
            result = session.result()
            engine.close(loaded.image_path)
        finally:
            loaded.cleanup()
        scores = list(result.scores.values())
        rows.append({"case": name, "dice": round(float(metrics.overlap(run.mask.astype(bool), gt)["dice"]), 4),
                     "stability": round(result.stability, 4), "mean_object_score": round(float(np.mean(scores)), 4)})
    dice = [r["dice"] for r in rows]

    def rho(key):
        values = [r[key] for r in rows]
        return None if len(set(values)) == 1 else round(float(spearmanr(values, dice).statistic), 3)

    return {"cases": rows, "slices_per_case": slices, "prompt": "mask (GT of the central slice)",
            "spearman_dice_vs_stability": rho("stability"), "spearman_dice_vs_object_score": rho("mean_object_score"),
            "distinct_object_scores": len({r["mean_object_score"] for r in rows})}
