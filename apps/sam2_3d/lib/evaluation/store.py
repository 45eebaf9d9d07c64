"""The output folder: one JSON + one NPZ per (setting, case), written atomically, so a run resumes.

Layout::

    OUT/run.json                      the configuration (a resumed run must match it)
    OUT/cases/<setting>/<case>.json   metrics, prompts (steps), per-slice Dice, timings
    OUT/cases/<setting>/<case>.npz    packed predictions and the worst slices (image, gt, pred)
    OUT/results.csv, results.json, report.md, figures/   written from all case files at the end
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from ..common import atomic_write_json

# Options that change results; executor options (workers, address) may differ on resume.
RESULT_KEYS = ("dataset", "format", "modality", "channel", "cases", "labels", "protocols", "clicks", "range",
               "nsd_tolerance", "z_margin", "max_slices", "slice2d_positives", "seed", "settings", "worst_slices", "label_file", "key_slices", "exact")


class ConfigMismatch(RuntimeError):
    pass


class Store:
    def __init__(self, out: str):
        self.out = os.path.abspath(out)

    def path(self, setting: str, case: str, ext: str) -> str:
        return os.path.join(self.out, "cases", setting, f"{case}.{ext}")

    def start(self, config: dict, overwrite: bool) -> None:
        """Record the run's configuration; refuse to mix results of a different one."""
        run_json = os.path.join(self.out, "run.json")
        wanted = {k: config.get(k) for k in RESULT_KEYS}
        if os.path.exists(run_json) and not overwrite:
            with open(run_json) as f:
                old = json.load(f)
            before = {k: old.get(k) for k in RESULT_KEYS}
            if json.loads(json.dumps(wanted)) != before:
                diff = sorted(k for k in RESULT_KEYS if json.loads(json.dumps(wanted)).get(k) != before.get(k))
                raise ConfigMismatch(
                    f"{self.out} holds a run with other options ({', '.join(diff)} differ); "
                    f"use another --out or pass --overwrite to discard it"
                )
        elif overwrite and os.path.isdir(os.path.join(self.out, "cases")):
            shutil.rmtree(os.path.join(self.out, "cases"))
        os.makedirs(self.out, exist_ok=True)
        self._write_json(run_json, config)

    def done(self, setting: str, case: str) -> bool:
        """Saved, and not a case lost on a cluster (those are reported failed and run again on resume)."""
        path = self.path(setting, case, "json")
        if not os.path.exists(path):
            return False
        with open(path) as f:
            return not json.load(f).get("retry")

    def save(self, record: dict, arrays: dict) -> None:
        npz = self.path(record["setting"], record["case"], "npz")
        os.makedirs(os.path.dirname(npz), exist_ok=True)
        tmp = npz + ".tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, npz)
        self._write_json(self.path(record["setting"], record["case"], "json"), record)  # last: marks it done

    def load(self, setting: str, case: str) -> dict:
        with open(self.path(setting, case, "json")) as f:
            return json.load(f)

    def arrays(self, setting: str, case: str) -> dict:
        with np.load(self.path(setting, case, "npz")) as z:
            return {k: z[k] for k in z.files}

    @staticmethod
    def _write_json(path: str, obj) -> None:
        atomic_write_json(path, obj, indent=1)
