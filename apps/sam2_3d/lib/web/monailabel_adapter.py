"""The monailabel internals the app relies on, listed in one place against the one version they were read in.

MONAI Label (``monailabel`` on PyPI) is built to be extended through its app class, its task classes
and its datastore; the app goes further where its behaviour failed a client (see each module's
docstring): it overrides private app methods, reads the local datastore's private model, calls the
endpoint functions of its routers directly and puts its own routes in front of them. Each of those
touch points is in :data:`TOUCH_POINTS` with the parameters it had in :data:`WRITTEN_AGAINST`;
``tests/test_adapters.py`` checks every one against the installed monailabel, and the app refuses to
start on another version (``main.py``'s ``WRITTEN_AGAINST``). Route installation, done by seven modules, is
:func:`install_routes_first` here.
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore, LocalDatastoreModel
from monailabel.endpoints import activelearning, datastore, infer, proxy, session, train
from monailabel.endpoints.user import auth
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.async_tasks import utils as async_tasks

PACKAGE = "monailabel"
WRITTEN_AGAINST = "0.8.5"

# (owner, name, its parameters); None: an attribute whose presence is all the app needs.
TOUCH_POINTS = (
    # main.py: Sam2App overrides these (the private ones to stop a download, a session scan, a datastore)
    (MONAILabelApp, "_load_sessions", ("self", "load")),
    (MONAILabelApp, "_download_dcmqi_tools", ("self",)),
    (MONAILabelApp, "_init_dicomweb_datastore", ("self",)),
    (MONAILabelApp, "infer", ("self", "request", "datastore")),
    (MONAILabelApp, "next_sample", ("self", "request")),
    (MONAILabelApp, "init_datastore", ("self",)),
    (MONAILabelApp, "on_init_complete", ("self",)),
    # lib/datastore/history.py: the local datastore's private model and helpers
    (LocalDatastoreModel, "label", ("self", "id", "tag")),
    (LocalDatastoreModel, "image_path", ("self",)),
    (LocalDatastoreModel, "label_path", ("self", "tag")),
    (LocalDatastore, "_to_id", ("self", "file")),
    (LocalDatastore, "_filename", ("self", "id", "ext")),
    (LocalDatastore, "_update_datastore_file", ("self", "lock")),
    (LocalDatastore, "save_label", ("self", "image_id", "label_filename", "label_tag", "label_info")),
    (LocalDatastore, "add_image", ("self", "image_id", "image_filename", "image_info")),
    # lib/web/guard.py, wrapped.py, seg_output.py: endpoint functions called behind our checks
    (infer, "run_inference", ("background_tasks", "model", "image", "session_id", "params", "file", "label",
                              "output")),
    (infer, "ResultType", None),
    (datastore, "add_image", ("background_tasks", "image", "params", "file", "user")),
    (datastore, "save_label", ("background_tasks", "image", "params", "tag", "label", "user")),
    (datastore, "update_image_info", ("image", "info", "user")),
    (datastore, "update_label_info", ("label", "tag", "info", "user")),
    (datastore, "get_image_info", ("image",)),
    (datastore, "get_label_info", ("label", "tag")),
    (session, "create_session", ("background_tasks", "uncompress", "expiry", "files")),
    (session, "get_session", ("session_id", "update_ts", "image")),
    (session, "remove_session", ("session_id",)),
    (activelearning, "sample", ("strategy", "params", "user")),
    (proxy, "proxy_dicom", ("request", "op", "path")),
    # lib/web/auth.py: token checks
    (auth, "get_public_key", ("realm_uri",)),
    (auth, "from_token", ("token",)),
    (auth, "token_uri", ()),
    (auth, "DEFAULT_USER", None),
    # lib/trainers: the train endpoint and the train process table
    (train, "run_model", ("model", "params", "run_sync", "enqueue")),
    (async_tasks, "processes", ("method",)),
    (async_tasks, "tasks", ("method",)),
    (TrainTask, "__call__", ("self", "request", "datastore")),
    (InferTask, "__init__", ("self", "type", "labels", "dimension", "description", "config")),
)


def install_routes_first(web_app, routes, at: int = 0) -> bool:
    """Mount ``routes`` ((path under the API prefix, endpoint, methods), in order) before monailabel's own, so
    that ours answer those paths; once: False when the first endpoint is already mounted.

    FastAPI answers with the first route that matches, and monailabel mounts its routers before the app
    is built, so a route of ours has to go in front of the router's list."""
    mounted = web_app.router.routes
    if any(getattr(r, "endpoint", None) is routes[0][1] for r in mounted):
        return False
    for path, endpoint, methods in reversed(routes):
        mounted.insert(at, APIRoute(settings.MONAI_LABEL_API_STR + path, endpoint, methods=methods,
                                    include_in_schema=False))
    return True
