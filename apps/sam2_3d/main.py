"""sam2-3d: SAM 2 interactive 3D segmentation as a MONAI Label app.

    monailabel start_server --app apps/sam2_3d --studies <folder or DICOMweb URL> \
        --conf checkpoint sam2.1_hiera_tiny

The app is thin: ``lib/configs/sam2_3d.py`` builds one SAM 2 engine and its infer tasks;
``lib/activelearning`` hands out the next image to annotate; ``lib/datastore`` stores final labels
in a DICOMweb PACS (e.g. Orthanc) as DICOM SEG written by highdicom.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.interfaces.app import MONAILabelApp

from lib.activelearning import record_confidence, strategies
from lib.configs.sam2_3d import Sam2Config
from lib.datastore import header_checks, session_uploads
from lib.datastore.confined import ConfinedLocalDatastore
from lib.datastore.dicomweb import Sam2DICOMWebDatastore
from lib.datastore.history import DEFAULT_HISTORY
from lib.datastore.names import check_name
from lib.engine import sam2_adapter
from lib.engine.checkpoints import CheckpointCorrupt, CheckpointMissing
from lib.engine.errors import UnknownOption, unknown_image
from lib.engine.options import check_conf
from lib.infers import work_caps
from lib.web import monailabel_adapter, request_log

logger = logging.getLogger(__name__)


def _exit_at_start_up(message: str) -> None:
    """One clear message and exit, when serving; an exception when the app is used in-process.

    Starlette hands a start-up exception to uvicorn as a full traceback, which buries the one line
    that says which file is missing and how to get it.
    """
    if sys.modules.get("monailabel.app") is None:
        raise SystemExit(message)
    logging.shutdown()
    sys.stdout.flush()
    print(f"\nsam2-3d cannot start: {message}\n", file=sys.stderr, flush=True)
    os._exit(2)


# The versions whose internals the adapters use (their TOUCH_POINTS); scripts/setup.sh installs exactly these.
WRITTEN_AGAINST = {adapter.PACKAGE: adapter.WRITTEN_AGAINST for adapter in (sam2_adapter, monailabel_adapter)}


def _check_versions() -> None:
    from importlib.metadata import PackageNotFoundError, version

    for package, wanted in WRITTEN_AGAINST.items():
        try:
            found = version(package)
        except PackageNotFoundError:
            found = "none"
        if found != wanted:
            _exit_at_start_up(
                f"{package} {found} is installed, but sam2-3d is written against {package} {wanted} "
                f"(it uses its internals): run scripts/setup.sh, or pip install {package}=={wanted}"
            )


def _check_port_free() -> None:
    """Fail at once when ``start_server``'s port is taken: uvicorn binds only after the app (and SAM 2) loaded."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-i", "--host", default="0.0.0.0")
    parser.add_argument("-p", "--port", type=int, default=8000)
    args, _ = parser.parse_known_args(sys.argv[1:])
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((args.host, args.port))
        except OSError as e:
            why = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
            _exit_at_start_up(f"port {args.port} on {args.host} {why}: stop the other server or pass --port")


class Sam2App(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict):
        _check_versions()
        try:
            check_conf(conf)
        except UnknownOption as e:
            _exit_at_start_up(str(e))
        if sys.modules.get("monailabel.app") is not None and "start_server" in sys.argv:
            _check_port_free()
        self.model_config = Sam2Config()
        try:
            header_checks.configure(conf)  # max_volume_gb
            work_caps.configure(conf)  # max_clicks, max_slices
            self.model_config.init("sam2", app_dir, conf, None, datastore=lambda: self.datastore(), studies=studies)
        except (CheckpointMissing, CheckpointCorrupt, UnknownOption) as e:
            _exit_at_start_up(str(e))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="sam2-3d",
            description="SAM 2 interactive 3D segmentation: clicks, boxes or a mask on one slice, propagated",
            version="0.1.0",
            labels=self.model_config.labels,
        )

    def init_infers(self):
        return self.model_config.infer()

    def init_trainers(self):
        return {"sam2_finetune": self.model_config.trainer()}

    def init_strategies(self):
        return strategies(self)

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        # monailabel's LocalDatastore, except that a replaced final label is kept (lib/datastore/history.py)
        # and no link leads out of the studies folder (lib/datastore/confined.py)
        return ConfinedLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            history=int(self.conf.get("label_history", DEFAULT_HISTORY)),
        )

    def _load_sessions(self, load=False):
        sessions = super()._load_sessions(load)
        if sessions is None:
            return None
        # monailabel joins the session id into a path (and DELETE removes that folder): plain names only
        get_session, remove_session = sessions.get_session, sessions.remove_session
        sessions.get_session = lambda session_id, *a, **kw: get_session(check_name(session_id, "session_id"), *a, **kw)
        sessions.remove_session = lambda session_id: remove_session(check_name(session_id, "session_id"))
        session_uploads.bound(sessions, self.conf)  # headers checked, expired removed, total bytes bounded
        return sessions

    def _download_dcmqi_tools(self):
        # monailabel downloads dcmqi from GitHub at start-up for its SEG conversion; offline that kills the
        # server. This app writes SEG with highdicom (lib/datastore/seg.py) and never calls dcmqi.
        logger.info("dcmqi not needed: DICOM SEG is written with highdicom")

    def _init_dicomweb_datastore(self):
        if "googleapis.com" in self.studies:  # keep monailabel's Google Cloud credential handling as is
            return super()._init_dicomweb_datastore()
        logger.info(f"Using DICOMweb: {self.studies} (final labels stored back as highdicom DICOM SEG)")
        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            from dicomweb_client.session_utils import create_session_from_user_pass

            session = create_session_from_user_pass(
                settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
            )
        client = DICOMwebClientX(
            url=self.studies,
            session=session,
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        cache_path = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
        return Sam2DICOMWebDatastore(
            client=client,
            search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
            cache_path=cache_path or None,
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
            convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI,
            labels=list(self.model_config.labels),
        )

    def on_init_complete(self):
        super().on_init_complete()
        web = sys.modules.get("monailabel.app")  # the running web app; absent when the app is used in-process
        if web is not None:
            from lib.web import guard

            guard.install(web.app)
        if web is not None and self.studies.startswith(("http://", "https://")) and "googleapis.com" not in self.studies:
            from lib.datastore import wado_proxy

            wado_proxy.install(web.app)
        if web is not None:
            from lib.datastore import stow_proxy
            from lib.trainers import endpoint
            from lib.web import ohif_config

            # a SEG saved in OHIF becomes the final label; mounted on every datastore so that the route table
            # is the same everywhere (a local datastore answers 404 "no DICOMweb datastore")
            stow_proxy.install(web.app)
            endpoint.install(web.app)  # 422 for bad training parameters, before a process starts
            ohif_config.install(web.app)  # OHIF's app-config.js (it can store) and its view of /info/
            from lib.web import connections

            connections.install(self.conf)  # half-open connections time out
        if web is not None:
            from lib.web import gate

            gate.install(web.app, self)  # last: deny by default (lib/web/routes_table.py), no cross-origin writes

    def infer(self, request, datastore=None):
        # monailabel replaces the image id by its file path before the task sees it; keep the id so
        # tasks can name it in errors and find the image's saved labels.
        request = dict(request)
        image = request.get("image")
        request.setdefault("image_id", image)
        # A relative name is a datastore id, never a file next to the server (monailabel would read any
        # path that exists); uploads and sessions arrive as absolute paths of their temporary copies.
        if isinstance(image, str) and not os.path.isabs(image):
            check_name(image, "image id")
            store = datastore or self.datastore()
            if self.studies.startswith(("http://", "https://")):
                pass  # the DICOMweb datastore answers 404/400 for an unknown or malformed UID itself
            elif image not in store.list_images():
                raise unknown_image(image)
        result = super().infer(request, datastore)
        params = result.get("params") or {}
        request_log.note(slices=request_log.slices_text(params), client=request.get("client_id"))
        scores = params.get("slice_scores")
        # a 2D click scores one slice; only a propagation says how sure SAM 2 was about the whole object
        if scores and params.get("model_kind") != "slice2d" and isinstance(request.get("image_id"), str):
            record_confidence(datastore or self.datastore(), request["image_id"], request.get("model"), scores,
                              weights=params.get("weights"), shared_dir=self.model_config.versions_dir)
        return result

    def next_sample(self, request):
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            # monailabel answers an unknown strategy with HTTP 500; say which ones exist instead.
            raise HTTPException(
                status_code=404,
                detail=f"unknown active-learning strategy {strategy!r}; known: {', '.join(sorted(self._strategies))}",
            )
        return super().next_sample(request)
