"""One case through every label and protocol of one setting: the unit of work (and of a Ray task).

Inputs and outputs are plain dicts and numpy arrays, so the same function runs in-process or in a
Ray worker and gives the same record. Engines are built once per process and setting, seeded, so
random-weight runs are reproducible across processes.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from lib.engine.intensity import IntensityPreset

from . import datasets, metrics, protocols

_ENGINES: dict[str, object] = {}


def _quiet_sam2_progress() -> None:
    """SAM 2's propagate_in_video draws its own tqdm bar per pass, which garbles ours (cases, slices).

    Only its module-global ``tqdm`` name is replaced, by tqdm with ``disable=True``; nothing else.
    """
    import functools

    import sam2.sam2_video_predictor as vp
    from tqdm import tqdm

    vp.tqdm = functools.partial(tqdm, disable=True)


def default_preset(case: datasets.Case) -> str:
    # MedSAM2's npz volumes are already windowed to uint8: pass them through; other data get the
    # papers' per-slice min-max normalisation.
    return "none" if case.kind == "npz" else "slice_minmax"


def engine_for(setting: dict, seed: int):
    """The engine of a setting in this process (built once; random weights drawn after seeding)."""
    conf = {k: str(v) for k, v in setting["conf"].items() if k != "preset"}
    key = json.dumps(conf, sort_keys=True)
    if key not in _ENGINES:
        from lib.configs.sam2_3d import engine_from_conf

        torch.manual_seed(seed)
        _ENGINES[key] = engine_from_conf(conf)
    return _ENGINES[key]


def evaluate_case(case_d: dict, setting: dict, cfg: dict, on_slices=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Evaluate one case; returns (JSON record, arrays for the report: packed predictions, worst slices)."""
    t_case = time.perf_counter()
    case = datasets.Case(**case_d)
    labels = [datasets.LabelSpec.parse(t) for t in cfg["labels"]]
    specs = [protocols.ProtocolSpec.parse(p, cfg["clicks"]) for p in cfg["protocols"]]
    _quiet_sam2_progress()
    engine = engine_for(setting, cfg["seed"])
    preset = IntensityPreset(setting["conf"].get("preset") or default_preset(case))
    union = lambda lab: np.logical_or.reduce([s.mask(lab) for s in labels])  # noqa: E731
    loaded = datasets.load(case, union, cfg.get("z_margin"), cfg.get("max_slices"))
    results, arrays = [], {}
    try:
        for spec_l in labels:
            gt = spec_l.mask(loaded.label)
            if not gt.any():
                results.append({"label": spec_l.name, "absent": True})
                continue
            for spec in specs:
                session = engine.open(loaded.image_path, client_id=f"eval/{spec_l.name}/{spec.name}", preset=preset,
                                      mode="2d" if spec.kind == "slice2d" else "3d")
                run = protocols.run(spec, session, gt, cfg["range"], cfg["slice2d_positives"], cfg["seed"])
                if on_slices:
                    on_slices(run.slices_processed)
                m = metrics.evaluate(run.mask, gt, loaded.spacing_kji, cfg["nsd_tolerance"])
                per_slice = metrics.per_slice_dice(run.mask, gt)
                areas = gt.reshape(gt.shape[0], -1).sum(axis=1)
                worst = _worst_slices(per_slice, areas, cfg["worst_slices"])
                key = f"{spec_l.name}__{spec.name}"
                arrays[f"{key}__pred"] = np.packbits(run.mask.astype(bool))
                for n, k in enumerate(worst):
                    arrays[f"{key}__worst{n}"] = np.stack(
                        [session.volume.slices_u8[k], gt[k].astype(np.uint8), run.mask[k].astype(np.uint8)]
                    )
                results.append({
                    "label": spec_l.name, "protocol": spec.name, "metrics": m,
                    "anchor": run.anchor, "propagate": list(run.propagate) if run.propagate else None,
                    "steps": run.steps, "per_slice_dice": [round(d, 6) for d in per_slice],
                    "gt_area": [int(a) for a in areas], "worst_slices": worst,
                    "slices_processed": run.slices_processed, "seconds": round(run.seconds, 3),
                    "preset": preset.name,
                })
        shape = list(loaded.label.shape)
    finally:
        engine.close(loaded.image_path)
        loaded.cleanup()
    record = {
        "setting": setting["name"], "case": case.case_id, "source": case.to_dict(),
        "shape_kji": shape, "spacing_kji": list(loaded.spacing_kji), "crop": list(loaded.crop),
        "original_slices": loaded.original_slices, "results": results,
        "seconds": round(time.perf_counter() - t_case, 3),
    }
    return record, arrays


def _worst_slices(per_slice: list[float], areas: np.ndarray, n: int) -> list[int]:
    """The n lowest-Dice salient slices (or, if none is salient, slices holding the object)."""
    candidates = np.flatnonzero(areas > metrics.SALIENT_PIXELS)
    if candidates.size == 0:
        candidates = np.flatnonzero(areas)
    order = sorted(candidates, key=lambda k: (per_slice[k], k))
    return [int(k) for k in order[:n]]
