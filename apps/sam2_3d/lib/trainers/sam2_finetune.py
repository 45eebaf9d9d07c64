"""``POST /train/sam2_finetune``: monailabel's train task over ``lib/training``.

monailabel runs a train request in a child process (``python -m monailabel.interfaces.utils.app -m
train``), which builds the app (and so the engine, with the weights the server uses) and calls this task;
``DELETE /train/`` kills that process, and the next identical request resumes from the last checkpoint.
``GET /train/`` shows the child's last stdout lines (one per step: epoch, step, loss, Dice; one per
validation); ``/info/`` shows ``train_stats`` (epoch, total_epochs, best_metric = best validation Dice,
as Slicer's training progress bar reads them) and the trainer's ``versions`` with their validation Dice.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import psutil
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.async_tasks.utils import processes, tasks

from lib.engine import torch_thread
from lib.engine.weights import list_versions, manager_of, summary, versions_root, weights_in_use, weights_served_next
from lib.replicas import training_lock
from lib.training.distributed import launched_rank
from lib.training.params import config_defaults, parse
from lib.training.run import publish_end, read_progress, train

logger = logging.getLogger(__name__)


class Sam2FinetuneTask(TrainTask):
    def __init__(self, engine, model_dir: str):
        super().__init__("Fine-tune SAM 2 (prompt encoder, mask decoder, memory; image encoder optional) on the "
                         "datastore's final labels, as SAM 2 trains on videos: clips of slices, a simulated prompt "
                         "on the first, tracked with memory")
        self.engine = engine
        self.model_dir = model_dir

    def config(self):
        return config_defaults()

    def info(self):
        info = super().info()
        manager = manager_of(self.engine)
        info["versions"] = [summary(v) for v in list_versions(versions_root(self.model_dir))]
        # what the next request is served with (every request loads the wanted version first), so a
        # version finished or rolled back a moment ago shows at once; "weights_loaded" is what sits in memory
        info["weights_in_use"] = weights_served_next(self.engine)
        info["weights_loaded"] = weights_in_use(self.engine)
        info["pinned"] = manager.pin if manager else None
        info["broken_versions"] = manager.broken_list() if manager else []
        return info

    def stats(self):
        """``progress.json``; a run still marked RUNNING whose process is gone ended without saying so
        (DELETE /train/, kill -9, a crash, a server restart): said here, once, as STOPPED or FAILED."""
        progress = read_progress(self.model_dir)
        if progress.get("status") != "RUNNING" or processes("train") or training_lock.holder(self.model_dir):
            return progress  # finished, or a training process (this replica's or another's) is still running
        last = (tasks("train") or [None])[-1]
        if last and last.get("status") == "STOPPED":  # DELETE /train/ killed it (it may not be reaped yet)
            publish_end(self.model_dir, "STOPPED", "stopped by DELETE /train/ (post the same request again to "
                        "resume from its last checkpoint)")
        elif (last and last.get("status") in ("ERROR", "DONE")) or not _alive(progress.get("pid")):
            detail = list((last or {}).get("details") or [])[-1:]
            publish_end(self.model_dir, "FAILED", "the training process ended without finishing (killed, crashed "
                        "or the server restarted)" + (f"; its last line: {detail[0]}" if detail else ""))
        else:
            return progress  # started by an earlier server process and still running
        return read_progress(self.model_dir)

    def __call__(self, request, datastore):
        params = parse(request)  # the endpoint already answered 422 for bad values; this guards direct calls
        logger.info(f"sam2_finetune: {params.to_dict()}")
        # one replica trains at a time on a shared model store; a DDP rank Lightning started for this run
        # trains under rank 0's lock
        lock = training_lock.held(self.model_dir) if launched_rank() == 0 else nullcontext()
        with lock:
            return torch_thread.run(train, self.engine, datastore, params, self.model_dir)  # where the model was built


def _alive(pid) -> bool:
    try:
        return bool(pid) and psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):
        return False
