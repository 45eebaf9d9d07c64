"""Training on several devices: Lightning's DDP, with the script launcher.

The LightningModule holds the engine (its locks, sessions, caches), which cannot be pickled, so
``ddp_spawn`` is not offered. Lightning's ``ddp`` instead starts ranks 1.. by running the launching
command again with ``LOCAL_RANK`` set; for a server's training that command is monailabel's train
child (``python -m monailabel.interfaces.utils.app -m train -r <request>``), so each rank builds its own
app, engine and model from the same conf and reaches ``trainer.fit`` with the same run. Only rank 0
writes (progress, history, best, the version); every rank trains its own clips and validates its share
of the held-out images, gathered before the Dice is taken.
"""

from __future__ import annotations

import hashlib
import inspect
import os

import torch

STRATEGIES = ("auto", "ddp")


def launched_rank() -> int:
    """This process's rank before any Trainer exists: Lightning's launcher sets ``LOCAL_RANK`` in the
    processes it starts (single node); the process monailabel started is rank 0."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def available_devices(device: str) -> int:
    """GPUs for a CUDA engine; on CPU, the CPUs this process may run on (one process per device)."""
    if str(device).startswith("cuda"):
        return torch.cuda.device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def is_distributed(params) -> bool:
    return params.devices > 1 or params.strategy == "ddp"


def trainer_options(params, gpu: bool) -> dict:
    """``devices`` and ``strategy`` for ``lightning.Trainer``."""
    if not is_distributed(params):
        return {"devices": 1}
    from lightning.pytorch.strategies import DDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    # find_unused_parameters: a clip prompted by a box leaves the point embeddings without a gradient (and a
    # click the box's). No buffer sync in forward: DDP would broadcast in every forward, validation's too,
    # and ranks validate different numbers of images (nothing trained is a buffer); newer torch renamed the
    # option (2.13 here warns on the old name)
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    strategy = DDPStrategy(find_unused_parameters=True, process_group_backend="nccl" if gpu else "gloo",
                           **{no_sync: False})
    return {"devices": params.devices, "strategy": strategy}


def rank_and_world(trainer) -> tuple[int, int]:
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


def gather_lists(items: list) -> list:
    """Every rank's list, concatenated in rank order (the list itself without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(items)
    world = torch.distributed.get_world_size()
    if world == 1:
        return list(items)
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, list(items))
    return [x for part in gathered for x in part]


def parameters_digest(module) -> str:
    """sha256 of the trained parameters: equal on every rank when DDP kept them in sync."""
    h = hashlib.sha256()
    for name, v in sorted(module.trained_state().items()):
        h.update(name.encode())
        h.update(v.float().numpy().tobytes())
    return h.hexdigest()[:16]
