"""Ray execution: one task per (setting, case), on a local Ray instance or a cluster (``address``).

Local default: one worker per GPU when there are GPUs, else ``workers`` CPU workers with one torch
thread each. Each worker process builds each setting's engine once (seeded, so random weights are the
same as in a single-process run) and keeps it for the next cases.
"""

from __future__ import annotations

import os

APP_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _case_in_worker(case_d: dict, setting: dict, cfg: dict):
    import torch

    torch.set_num_threads(int(cfg.get("threads") or 1))
    from lib.evaluation.case_task import evaluate_case

    return evaluate_case(case_d, setting, cfg)


def run_ray(units, config: dict, finished, on_slices=None, cfg: dict | None = None) -> None:
    import ray
    import torch

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
            ray.init(num_cpus=int(config.get("workers") or 1), num_gpus=gpus, runtime_env=runtime_env,
                     include_dashboard=False, log_to_driver=False)
        started = True
    try:
        on_gpu = any(str(s["conf"].get("device", "cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
                     for s, _ in units) and ray.cluster_resources().get("GPU", 0) > 0
        task = ray.remote(_case_in_worker).options(num_cpus=1, num_gpus=1 if on_gpu else 0, max_retries=1)
        cfg = cfg or task_config(config)
        pending = [task.remote(case.to_dict(), setting, cfg) for setting, case in units]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            record, arrays = ray.get(done[0])
            if on_slices:
                on_slices(sum(r.get("slices_processed", 0) for r in record["results"]))
            finished(record, arrays)
    finally:
        if started:
            ray.shutdown()
