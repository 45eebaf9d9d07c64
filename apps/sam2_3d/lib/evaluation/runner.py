"""Run an evaluation: which (setting, case) units remain, where they run, progress, outputs."""

from __future__ import annotations

import atexit
import functools
import logging
import shutil
import signal
import tempfile
import threading

from tqdm.auto import tqdm

from . import case_task, datasets, outputs
from .store import Store

logger = logging.getLogger(__name__)


def parse_setting(text: str, base: dict) -> dict:
    """``NAME:key=value,key=value`` over the base options -> {"name", "conf"}."""
    name, _, opts = text.partition(":")
    conf = dict(base)
    for item in filter(None, (s.strip() for s in opts.split(","))):
        k, eq, v = item.partition("=")
        if not eq:
            raise ValueError(f"setting {text!r}: {item!r} is not key=value")
        conf[k.strip()] = v.strip()
    if not name or "/" in name:
        raise ValueError(f"setting {text!r} needs a name without '/'")
    return {"name": name, "conf": conf}


def run(config: dict, overwrite: bool = False, progress: bool = True) -> dict:
    """Evaluate every remaining (setting, case) of ``config``; then write CSV, JSON and the report.

    ``config["workers"]``: 1 runs in this process; more, or an ``address``, runs one Ray task per
    case. Either way the records are the same and are written by this process.
    """
    cases = datasets.discover(config["dataset"], config["format"], config.get("modality"), config.get("channel", 0),
                              config.get("label_file"))
    if config.get("cases"):
        wanted = set(config["cases"])
        cases = [c for c in cases if c.case_id in wanted]
        missing = wanted - {c.case_id for c in cases}
        if missing:
            raise ValueError(f"cases not found in {config['dataset']}: {sorted(missing)}")
    store = Store(config["out"])
    store.start(config, overwrite)
    units = [(s, c) for s in config["settings"] for c in cases]
    todo = [(s, c) for s, c in units if not store.done(s["name"], c.case_id)]
    skipped = len(units) - len(todo)
    if skipped:
        logger.info(f"resuming: {skipped} of {len(units)} case runs already done in {store.out}")
    bar = tqdm(total=len(units), initial=skipped, desc="cases", unit="case", disable=not progress, position=0)
    slices = tqdm(desc="slices", unit="slice", disable=not progress, position=1)
    ran = []

    def finished(record, arrays):
        store.save(record, arrays)
        ran.append((record["setting"], record["case"]))
        bar.update(1)
        bar.set_postfix_str(f"{record['setting']}/{record['case']} {record['seconds']:.0f}s")

    # Every temporary file of this run (z-crops, npz volumes as NIfTI) lives under one folder that is
    # removed however the run ends: normal end, an exception, Ctrl-C, or SIGTERM (atexit).
    tmp_root = tempfile.mkdtemp(prefix="sam2eval-run-")
    cleanup = functools.partial(shutil.rmtree, tmp_root, ignore_errors=True)
    atexit.register(cleanup)
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is not None:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    cfg = {**task_config(config), "tmp_root": tmp_root}
    try:
        if todo and (config.get("address") or int(config.get("workers", 1)) > 1):
            from .distributed import run_ray

            run_ray(todo, config, finished, on_slices=slices.update, cfg=cfg)
        else:
            for setting, case in todo:
                finished(*case_task.evaluate_case(case.to_dict(), setting, cfg, slices.update))
    finally:
        bar.close()
        slices.close()
        cleanup()
        atexit.unregister(cleanup)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    records = [store.load(s["name"], c.case_id) for s, c in units]
    written = outputs.write_all(store, config, records)
    return {"ran": ran, "skipped": skipped, "records": records, **written}


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that clean up


def task_config(config: dict) -> dict:
    """What a case task needs from the run's configuration (plain data, sent to Ray workers)."""
    keys = ("labels", "protocols", "clicks", "range", "exact", "nsd_tolerance", "z_margin", "max_slices",
            "slice2d_positives", "seed", "worst_slices", "threads", "key_slices")
    return {k: config.get(k) for k in keys}
