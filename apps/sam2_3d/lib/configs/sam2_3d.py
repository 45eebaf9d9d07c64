"""The SAM 2 model config: reads ``--conf`` options, builds the one engine, and its infer tasks.

Options (``monailabel start_server ... --conf KEY VALUE``):

* ``checkpoint``: a registry name (``sam2.1_hiera_tiny`` ... ``sam2_hiera_large``) or a ``.pt`` path;
  a registry file's size is checked at start-up; ``verify`` (``true``) checks its SHA-256 too (~1 s per 150 MB);
* ``config``: the SAM 2 hydra config, when a ``.pt`` path's name does not tell it;
* ``random_weights``: ``true`` builds the config with random weights (tests/benchmarks only; loud),
  drawn from ``seed`` (default 0) so every process builds the same network;
* ``image_size``: SAM 2's input size (default: the config's 1024; smaller is faster but untested accuracy);
* ``device`` (``cuda`` if available, else ``cpu``), ``dtype`` (``bfloat16`` on CUDA);
* ``labels``: comma-separated label names shown in the clients (default ``object``);
* ``max_sessions``, ``max_session_gb`` (4; what SAM 2's per-slice state of all sessions may hold),
  ``max_volumes``, ``feature_cache_gb``, ``feature_batch_size``: memory bounds;
* ``offload_state_above`` (256): on a GPU, longer volumes keep SAM 2's per-slice state in CPU memory;
* ``label_history`` (10): replaced ``final`` labels kept per image in ``<studies>/.replaced_labels/``.
* ``finetuned``: a fine-tuned version to pin (``v0003``), ``none`` for the base model; default: the newest;
* ``model_dir``: where fine-tuned versions live (default ``<app>/model``; versions in ``finetuned/``).
"""

from __future__ import annotations

import logging
import os

import torch

from monailabel.interfaces.config import TaskConfig

from lib.engine.checkpoints import CheckpointCorrupt, resolve_checkpoint
from lib.engine.engine import Sam2VolumeEngine
from lib.engine.model import RANDOM_WEIGHTS_WARNING, build_predictor
from lib.engine.weights import attach as attach_versions
from lib.infers.sam2_infer import Sam2InferTask
from lib.trainers.sam2_finetune import Sam2FinetuneTask

logger = logging.getLogger(__name__)

TASKS = {"sam2_point": "point", "sam2_box": "box", "sam2_propagate": "propagate", "sam2_2d": "slice2d"}


def _flag(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def engine_from_conf(conf: dict) -> Sam2VolumeEngine:
    """Build the engine from string options; shared by the app, the evaluation and the benchmark."""
    random_weights = _flag(conf.get("random_weights", "false"))
    ckpt = resolve_checkpoint(conf.get("checkpoint"), random_weights=random_weights, config=conf.get("config"),
                              verify=_flag(conf.get("verify", "false")))
    device = conf.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = conf.get("dtype") or ("bfloat16" if device.startswith("cuda") else None)
    image_size = int(conf["image_size"]) if conf.get("image_size") else None
    if random_weights:
        # Random weights are drawn from a fixed seed so that tests, benchmarks and distributed
        # evaluation workers all build the same untrained network.
        torch.manual_seed(int(conf.get("seed", 0)))
    try:
        predictor = build_predictor(ckpt, device=device, image_size=image_size)
    except Exception as e:  # torch.load of a damaged file raises almost anything (IndexError, UnpicklingError ...)
        if not ckpt.path:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointCorrupt(
            f"SAM 2 checkpoint {ckpt.path} does not load as {ckpt.config}: {type(e).__name__}: {first[:300]}"
        ) from e
    name = ckpt.name + (" (RANDOM WEIGHTS)" if random_weights else "")
    logger.info(f"SAM 2 engine: {name}, config {ckpt.config}, image size {predictor.image_size}, device {device}")
    if random_weights:
        logger.warning(RANDOM_WEIGHTS_WARNING)
    return Sam2VolumeEngine(
        predictor,
        device=device,
        dtype=dtype,
        max_sessions=int(conf.get("max_sessions", 8)),
        max_session_bytes=int(float(conf.get("max_session_gb", 4.0)) * (1 << 30)),
        max_volumes=int(conf.get("max_volumes", 4)),
        feature_cache_bytes=int(float(conf.get("feature_cache_gb", 2.0)) * (1 << 30)),
        feature_batch_size=int(conf.get("feature_batch_size", 8 if device.startswith("cuda") else 1)),
        random_weights=random_weights,
        checkpoint_name=ckpt.name,
        offload_state_above=int(conf.get("offload_state_above", 256)),
    )


class Sam2Config(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict, planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = [s.strip() for s in str(conf.get("labels", "object")).split(",") if s.strip()] or ["object"]
        self.engine = engine_from_conf(conf)
        self.datastore = kwargs.get("datastore")
        self.versions_dir = conf.get("model_dir") or os.path.join(model_dir, "model")
        attach_versions(self.engine, self.versions_dir, conf.get("finetuned"))

    def infer(self):
        return {name: Sam2InferTask(self.engine, kind, self.labels, self.datastore) for name, kind in TASKS.items()}

    def trainer(self):
        return Sam2FinetuneTask(self.engine, self.versions_dir)
