"""One case through every label and protocol of one setting: the unit of work (and of a Ray task).

Inputs and outputs are plain dicts and numpy arrays, so the same function runs in-process or in a
Ray worker and gives the same record. Engines are built once per process and setting, seeded, so
random-weight runs are reproducible across processes.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import torch

from lib.engine.intensity import IntensityPreset
from lib.engine.sam2_adapter import quiet_progress_bars

from . import datasets, metrics, protocols

logger = logging.getLogger(__name__)
_ENGINES: dict[str, object] = {}


def default_preset(case: datasets.Case) -> str:
    # MedSAM2's npz volumes are already windowed to uint8: pass them through; other data get the
    # papers' per-slice min-max normalisation.
    return "none" if case.kind == "npz" else "slice_minmax"


def preset_for(conf: dict, case: datasets.Case) -> IntensityPreset:
    """``window`` ("C,W": a custom window), else ``preset`` (a name), else the case kind's default."""
    if conf.get("window"):
        center, width = parse_window(str(conf["window"]))
        return IntensityPreset("window", center, width)
    return IntensityPreset(conf.get("preset") or default_preset(case))


def parse_window(text: str) -> tuple[float, float]:
    """``"C,W"`` -> (center, width); width must be > 0."""
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--window {text!r}: use CENTER,WIDTH in the image's units, e.g. -650,1500") from None
    if width <= 0:
        raise ValueError(f"--window {text!r}: the width must be > 0")
    return center, width


def _exact_session(engine, spec, case_id: str, raw: np.ndarray, client_id: str):
    """The session of a paper-exact run on the frames its reference code makes; (session, transposed)."""
    from lib.engine.intensity import looks_like_ct

    from . import reference_frames

    if spec.kind == "gutierrez_lung":
        # process_image.py --apply_windowing is the README's run on CT; other data would be clipped to a lung window
        frames, transposed = reference_frames.gutierrez_frames(raw, windowing=looks_like_ct(raw)), False
        mode = "2d"
    else:
        frames, transposed = reference_frames.shen_frames(raw), True
        mode = "3d"
    # named by the frames, not the protocol: the Shen recipes share one volume and its image features
    session = engine.open_array(f"{case_id}/{'gutierrez' if spec.kind == 'gutierrez_lung' else 'shen'}-reference-frames",
                                frames, client_id=client_id,
                                preset=IntensityPreset("none"), mode=mode)
    return session, transposed


def engine_for(setting: dict, seed: int):
    """The engine of a setting in this process (built once; random weights drawn after seeding)."""
    conf = {k: str(v) for k, v in setting["conf"].items() if k not in ("preset", "window")}
    key = json.dumps(conf, sort_keys=True)
    if key not in _ENGINES:
        from lib.engine.build import engine_from_conf

        torch.manual_seed(seed)
        _ENGINES[key] = engine_from_conf(conf)
    return _ENGINES[key]


def hardware() -> dict:
    """Where the timings were taken: they mean nothing without it."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__}


def _encode_all(session) -> tuple[int, float]:
    """Encode every slice once, before any protocol, so that protocol timings are propagation only."""
    t0 = time.perf_counter()
    features = session.features
    encoded = features.encode_counter()
    engine = session.engine
    with engine.lock, torch.inference_mode(), engine.autocast():
        features.plan_pass(0, len(features.frames) - 1)
        for k in range(len(features.frames)):
            features.get(k)
    return encoded(), time.perf_counter() - t0


def _ran_slices(run: protocols.ProtocolRun, n: int) -> list[bool]:
    """Which slices the protocol produced an answer for (the rest were never segmented)."""
    ran = [False] * n
    if run.propagate is not None:
        for k in range(run.propagate[0], run.propagate[1] + 1):
            ran[k] = True
    for s in run.steps:
        if "k" in s:  # a prompt; a propagation step's range lies inside run.propagate
            ran[s["k"]] = True
    return ran


def _fail(label: str, protocol: str | None, status: str, reason: str) -> dict:
    return {"label": label, "protocol": protocol, "status": status, "reason": reason}


def evaluate_case(case_d: dict, setting: dict, cfg: dict, on_slices=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Evaluate one case; returns (JSON record, arrays for the report: packed predictions, worst slices).

    A case that cannot be read, or a (label, protocol) that raises, becomes a failed entry with the
    reason; the other labels and protocols still run, and so does the rest of the evaluation.
    """
    t_case = time.perf_counter()
    case = datasets.Case(**case_d)
    labels = [datasets.LabelSpec.parse(t) for t in cfg["labels"]]
    specs = [protocols.ProtocolSpec.parse(p, cfg["clicks"]) for p in cfg["protocols"]]
    record = {"setting": setting["name"], "case": case.case_id, "source": case.to_dict(), "results": [],
              "hardware": hardware(), "device": str(setting["conf"].get("device") or
                                                    ("cuda" if torch.cuda.is_available() else "cpu"))}
    try:
        loaded = datasets.load(case, lambda lab: np.logical_or.reduce([s.mask(lab) for s in labels]),
                               cfg.get("z_margin"), cfg.get("max_slices"), cfg.get("tmp_root"))
    except Exception as e:  # unreadable file, grids that differ...: one failed case, the run goes on
        logger.warning(f"{case.case_id}: {e}", exc_info=True)
        record["error"] = f"{type(e).__name__}: {e}" if not isinstance(e, (ValueError, OSError)) else str(e)
        record["results"] = [_fail(s.name, None, "failed", record["error"]) for s in labels]
        record["seconds"] = round(time.perf_counter() - t_case, 3)
        return record, {}
    quiet_progress_bars()  # SAM 2's bar per pass garbles ours (cases, slices)
    engine = engine_for(setting, cfg["seed"])
    run = _CaseRun(case, loaded, engine, preset_for(setting["conf"], case), cfg, on_slices)
    try:
        results = [result for spec_l in labels for result in run.label_results(spec_l, specs)]
        shape = list(loaded.label.shape)
    finally:
        engine.close(loaded.image_path)
        loaded.cleanup()
    record.update({
        "shape_kji": shape, "spacing_kji": list(loaded.spacing_kji), "crop": list(loaded.crop),
        "original_slices": loaded.original_slices, "results": results,
        "encode": {"frames": run.encoded or 0, "seconds": round(run.encode_s, 3)},
        "seconds": round(time.perf_counter() - t_case, 3),
    })
    return record, run.arrays


class _CaseRun:
    """One loaded case on one engine: each label's protocols in turn, their results and report arrays."""

    def __init__(self, case: datasets.Case, loaded, engine, preset: IntensityPreset, cfg: dict, on_slices):
        self.case, self.loaded, self.engine, self.preset, self.cfg, self.on_slices = (
            case, loaded, engine, preset, cfg, on_slices)
        self.raw = None  # the image array, read once when a paper-exact run needs its reference frames
        self.encoded, self.encode_s = None, 0.0  # every slice encoded once, before the first protocol
        self.arrays: dict[str, np.ndarray] = {}

    def label_results(self, spec_l: datasets.LabelSpec, specs: list) -> list[dict]:
        gt = spec_l.mask(self.loaded.label)
        if not gt.any():
            return [_fail(spec_l.name, None, "absent", "label absent from this case")]
        parts = spec_l.parts(self.loaded.label)
        return [self.protocol_result(spec_l, spec, gt, parts) for spec in specs]

    def _session(self, spec, exact: bool, client_id: str):
        """The protocol's session, and whether its frames are transposed (a paper-exact run's reference frames)."""
        if self.encoded is None:
            self.encoded, self.encode_s = _encode_all(
                self.engine.open(self.loaded.image_path, client_id="eval/encode", preset=self.preset))
        if exact:
            if self.raw is None:
                self.raw = datasets.image_array(self.loaded.image_path)
            return _exact_session(self.engine, spec, self.case.case_id, self.raw, client_id)
        mode = "2d" if spec.kind in ("slice2d", "gutierrez_lung") else "3d"
        return self.engine.open(self.loaded.image_path, client_id=client_id, preset=self.preset, mode=mode), False

    def protocol_result(self, spec_l: datasets.LabelSpec, spec, gt: np.ndarray, parts: np.ndarray) -> dict:
        cfg = self.cfg
        exact = bool(cfg.get("exact")) and spec.kind in protocols.EXACT_KINDS
        client_id = f"eval/{spec_l.name}/{spec.name}"
        try:
            session, transposed = self._session(spec, exact, client_id)
            encoded = session.features.encode_counter()
            key = (cfg.get("key_slices") or {}).get(self.case.case_id)
            marker = None
            if spec.kind == "medsam2_recist":
                recist = datasets.recist_array(self.case, self.loaded.crop)
                marker = None if recist is None else spec_l.mask(recist)
            gt_run = gt.transpose(0, 2, 1) if transposed else gt
            parts_run = parts.transpose(0, 2, 1) if transposed else parts
            run = protocols.run(spec, session, gt_run, cfg["range"], cfg["slice2d_positives"], cfg["seed"],
                                parts=parts_run, key_slice=None if key is None else int(key) - self.loaded.crop[0],
                                exact=exact, spacing=self.loaded.spacing_kji, nsd_tolerance=cfg["nsd_tolerance"],
                                marker=marker)
            if run.skipped:
                return _fail(spec_l.name, spec.name, "skipped", run.skipped)
            if self.on_slices:
                self.on_slices(run.slices_processed)
            mask = run.mask.transpose(0, 2, 1) if transposed else run.mask
            if exact:
                run.info["frames"] = ("the reference's: uint8 by truncation, JPEG at PIL's default quality "
                                      "(75), transposed (step coordinates are on the transposed frame)"
                                      if transposed else "the reference's: window clip, slice min-max, "
                                      "uint8 by truncation")
            m = metrics.evaluate(mask, gt, self.loaded.spacing_kji, cfg["nsd_tolerance"], run.scored,
                                 run.anchor if spec.prompts_ground_truth_mask else None, spec.kind, run.info)
        except Exception as e:
            logger.warning(f"{self.case.case_id}/{spec_l.name}/{spec.name} failed: {e}", exc_info=True)
            return _fail(spec_l.name, spec.name, "failed", f"{type(e).__name__}: {e}")
        ran = _ran_slices(run, gt.shape[0])
        per_slice = [d if r else None for d, r in zip(metrics.per_slice_dice(mask, gt), ran)]
        areas = gt.reshape(gt.shape[0], -1).sum(axis=1)
        worst = _worst_slices([1.0 if d is None else d for d in per_slice], areas, cfg["worst_slices"])
        self._keep_arrays(f"{spec_l.name}__{spec.name}", mask, run, session.volume.slices_u8, gt_run, worst)
        if exact:
            self.engine.close(client_id=client_id)
        return {
            "label": spec_l.name, "protocol": spec.name, "status": "ok", "reason": "", "metrics": m,
            "anchor": run.anchor, "propagate": list(run.propagate) if run.propagate else None,
            "info": run.info, "steps": run.steps, "per_slice_dice": [None if d is None else round(d, 6) for d in per_slice],
            "per_slice_iou": [None if d is None else round(d / (2.0 - d), 6) for d in per_slice],
            "gt_area": [int(a) for a in areas], "worst_slices": worst,
            "slices_processed": run.slices_processed, "seconds": round(run.seconds, 3),
            "frames_encoded_in_protocol": encoded(),
            "preset": "reference frames" if exact else self.preset.key, "exact": exact or bool(run.info.get("exact")),
        }

    def _keep_arrays(self, key: str, mask: np.ndarray, run, slices_u8: np.ndarray, gt_run: np.ndarray,
                     worst: list[int]) -> None:
        """The packed prediction, and overlays on the frames the run saw (prompts are in their coordinates)."""
        self.arrays[f"{key}__pred"] = np.packbits(mask.astype(bool))
        if run.anchor is not None:
            self.arrays[f"{key}__anchor"] = np.stack([slices_u8[run.anchor], gt_run[run.anchor].astype(np.uint8),
                                                      run.mask[run.anchor].astype(np.uint8)])
        for n, k in enumerate(worst):
            self.arrays[f"{key}__worst{n}"] = np.stack(
                [slices_u8[k], gt_run[k].astype(np.uint8), run.mask[k].astype(np.uint8)]
            )


def _worst_slices(per_slice: list[float], areas: np.ndarray, n: int) -> list[int]:
    """The n lowest-Dice salient slices (or, if none is salient, slices holding the object)."""
    candidates = np.flatnonzero(areas > metrics.SALIENT_PIXELS)  # the papers' 'salient' slices
    if candidates.size == 0:
        candidates = np.flatnonzero(areas)
    order = sorted(candidates, key=lambda k: (per_slice[k], k))
    return [int(k) for k in order[:n]]
