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
* ``session_ttl_hours`` (24): a session (prompts, undo history) unused that long ends;
* ``compile`` (``false``): on CUDA, ``torch.compile`` SAM 2's per-slice tracking modules at start-up
  (``compile_mode``, default ``reduce-overhead``: CUDA graphs), compiled code cached on disk in
  ``compile_cache`` (default ``~/.cache/sam2-3d/torch-compile``) for the next start; ignored on a CPU;
* ``offload_state_above`` (256): on a GPU, longer volumes keep SAM 2's per-slice state in CPU memory;
* ``label_history`` (10): replaced ``final`` labels kept per image in ``<studies>/.replaced_labels/``.
* ``finetuned``: a fine-tuned version to pin (``v0003``), ``none`` for the base model; default: the newest;
* ``model_dir``: where fine-tuned versions live (versions in ``finetuned/``); default: with the datastore,
  ``<studies>/.sam2-3d/model`` for a local folder, ``<app>/model/dicomweb-<host>-<hash of the URL>`` for a
  DICOMweb server, so two servers from one checkout on two datastores never serve each other's versions.
* ``replica`` (``false``): this server is one of several sharing ``model_dir`` behind a balancer
  (scripts/replicas.sh, docs/deploy.md): sessions are noted there, so one that moved replica says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from urllib.parse import urlsplit

from monailabel.interfaces.config import TaskConfig

from lib.engine import torch_thread
from lib.engine.build import engine_from_conf
from lib.engine.options import option
from lib.engine.weights import attach as attach_versions
from lib.infers.sam2_infer import Sam2InferTask
from lib.replicas import identity
from lib.replicas.sessions import SessionMarkers
from lib.trainers.sam2_finetune import Sam2FinetuneTask

logger = logging.getLogger(__name__)

TASKS = {"sam2_point": "point", "sam2_box": "box", "sam2_propagate": "propagate", "sam2_2d": "slice2d"}


def default_model_dir(app_dir: str, studies: str) -> str:
    """Fine-tuned versions belong to the datastore whose labels trained them."""
    if studies.startswith(("http://", "https://")):
        host = re.sub(r"[^A-Za-z0-9.-]+", "-", urlsplit(studies).netloc)
        digest = hashlib.sha256(studies.rstrip("/").encode()).hexdigest()[:12]
        return os.path.join(app_dir, "model", f"dicomweb-{host}-{digest}")
    return os.path.join(studies, ".sam2-3d", "model")


def _warn_about_old_default(app_dir: str, chosen: str) -> None:
    old = os.path.join(app_dir, "model", "finetuned")
    if os.path.realpath(chosen) != os.path.realpath(os.path.dirname(old)) and os.path.isdir(old) and any(
            n.startswith("v") for n in os.listdir(old)):
        logger.warning(f"fine-tuned versions in {old} (the folder every server of this checkout shared before) are "
                       f"not served by this datastore's server: pass --conf model_dir {os.path.dirname(old)} to use them")


class Sam2Config(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict, planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = [s.strip() for s in str(conf.get("labels", "object")).split(",") if s.strip()] or ["object"]
        self.engine = torch_thread.run(engine_from_conf, conf)  # built where every request will run
        self.datastore = kwargs.get("datastore")
        studies = kwargs.get("studies")
        self.versions_dir = conf.get("model_dir") or (
            default_model_dir(model_dir, studies) if studies else os.path.join(model_dir, "model"))
        logger.info(f"fine-tuned versions: {self.versions_dir}")
        if not conf.get("model_dir"):
            _warn_about_old_default(model_dir, self.versions_dir)
        torch_thread.run(attach_versions, self.engine, self.versions_dir, conf.get("finetuned"))  # loads weights
        identity.name_this_server()  # before monailabel starts a training process (it inherits the name)
        if option(conf, "replica", False):  # one of several replicas sharing model_dir (lib/replicas)
            self.engine.replica_sessions = SessionMarkers(self.versions_dir)

    def infer(self):
        return {name: Sam2InferTask(self.engine, kind, self.labels, self.datastore) for name, kind in TASKS.items()}

    def trainer(self):
        return Sam2FinetuneTask(self.engine, self.versions_dir)
