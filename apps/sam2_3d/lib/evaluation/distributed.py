"""Ray execution: one task per (setting, case), on a local Ray instance or a cluster (``address``).

Local default: one worker per GPU when there are GPUs, else ``workers`` CPU workers with one torch
thread each. Each worker process builds each setting's engine once (seeded, so random weights are the
same as in a single-process run) and keeps it for the next cases.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)
APP_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _case_in_worker(case_d: dict, setting: dict, cfg: dict):
    import socket

    import ray
    import torch

    torch.set_num_threads(int(cfg.get("threads") or 1))
    from lib.evaluation.case_task import evaluate_case

    record, arrays = evaluate_case(case_d, setting, cfg)
    # where it ran (under "hardware": not a result, so runs on different nodes compare equal)
    record.setdefault("hardware", {})["node"] = {"host": socket.gethostname(), "ray_node_id": ray.get_runtime_context().get_node_id()}
    return record, arrays


def lost_case_record(setting: dict, case, error: BaseException, labels: list[str]) -> dict:
    """The record of a case whose task never came back (its node or worker died, also on Ray's retry):
    reported as failed, and not marked done, so that rerunning the command runs it again."""
    reason = f"lost on the cluster ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); rerun to retry"
    return {"setting": setting["name"], "case": case.case_id, "source": case.to_dict(), "error": reason,
            "retry": True, "results": [{"label": name, "protocol": None, "status": "failed", "reason": reason}
                                       for name in labels],
            "seconds": 0.0}


def run_ray(units, config: dict, finished, on_slices=None, cfg: dict | None = None) -> None:
    import ray
    import torch

    from .datasets import LabelSpec
    from .runner import task_config

    # Workers import `lib` like monailabel does: from the app folder. On a cluster every node needs
    # this checkout (and the data) at the same path; the runtime env passes the path along.
    pythonpath = os.pathsep.join(filter(None, [APP_DIR, os.environ.get("PYTHONPATH")]))
    runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
    started = False
    if not ray.is_initialized():
        if config.get("address"):
            ray.init(address=config["address"], runtime_env=runtime_env, log_to_driver=False)
        else:
            gpus = torch.cuda.device_count()
            # address="local": always a new instance, never a cluster someone started on this machine
            ray.init(address="local", num_cpus=int(config.get("workers") or 1), num_gpus=gpus, runtime_env=runtime_env,
                     include_dashboard=False, log_to_driver=False)
        started = True
    try:
        on_gpu = any(str(s["conf"].get("device", "cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
                     for s, _ in units) and ray.cluster_resources().get("GPU", 0) > 0
        task = ray.remote(_case_in_worker).options(num_cpus=1, num_gpus=1 if on_gpu else 0, max_retries=1)
        cfg = cfg or task_config(config)
        # max_retries: a task whose worker or node dies is run again elsewhere; one that still cannot finish
        # becomes a failed case (the others go on, finished ones are already saved by the driver)
        unit_of = {task.remote(case.to_dict(), setting, cfg): (setting, case) for setting, case in units}
        pending = list(unit_of)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                record, arrays = ray.get(done[0])
            except (ray.exceptions.RayError, OSError) as e:
                setting, case = unit_of[done[0]]
                logger.warning(f"{setting['name']}/{case.case_id}: task lost: {e}")
                labels = [LabelSpec.parse(t).name for t in cfg["labels"]]
                record, arrays = lost_case_record(setting, case, e, labels), {}
            if on_slices:
                on_slices(sum(r.get("slices_processed", 0) for r in record["results"]))
            finished(record, arrays)
    finally:
        if started:
            ray.shutdown()
