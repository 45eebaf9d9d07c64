"""The adapters over SAM 2's and monailabel's internals (lib/engine/sam2_adapter.py, lib/web/monailabel_adapter.py):
each private name the app touches still exists in the installed package with the parameters it was written
against, and the app code reaches those internals only through the adapters (issue 21: SAM 2's private API
in five modules and monailabel overridden in about eight places, unguarded)."""

from __future__ import annotations

import ast
import inspect
import os
from importlib.metadata import version

import numpy as np
import pytest
from conftest import APP_DIR

from lib.engine import sam2_adapter
from lib.web import monailabel_adapter

ADAPTERS = (sam2_adapter, monailabel_adapter)


def _touch_points():
    for adapter in ADAPTERS:
        for owner, name, params in adapter.TOUCH_POINTS:
            yield pytest.param(owner, name, params, id=f"{adapter.PACKAGE}:{getattr(owner, '__name__', owner)}.{name}")


@pytest.mark.parametrize("owner,name,params", list(_touch_points()))
def test_each_touch_point_exists_with_the_parameters_it_was_written_against(owner, name, params):
    assert hasattr(owner, name), f"{owner}.{name} is gone"
    if params is not None:
        assert tuple(inspect.signature(getattr(owner, name)).parameters) == params


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.PACKAGE)
def test_the_installed_version_is_the_one_the_adapter_was_written_against(adapter):
    assert version(adapter.PACKAGE) == adapter.WRITTEN_AGAINST


def test_the_start_up_check_reads_the_adapters_versions():
    import main

    assert main.WRITTEN_AGAINST == {"sam2": sam2_adapter.WRITTEN_AGAINST,
                                    "monailabel": monailabel_adapter.WRITTEN_AGAINST}


# What only the adapter may touch: SAM 2's private methods, its module globals and the class swap.
SAM2_PRIVATE = {"_track_step", "_prepare_backbone_features", "_use_multimask", "_encode_memory_in_output",
                "_get_orig_video_res_output", "load_video_frames"}


def test_app_code_reaches_sam2_internals_only_through_the_adapter():
    offenders = []
    for root, _, files in os.walk(os.path.join(APP_DIR, "lib")):
        for file in files:
            path = os.path.join(root, file)
            if not file.endswith(".py") or path.endswith("sam2_adapter.py"):
                continue
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.Attribute) and (node.attr in SAM2_PRIVATE or node.attr == "__class__"
                                                        and isinstance(node.ctx, ast.Store)):
                    offenders.append(f"{os.path.relpath(path, APP_DIR)}:{node.lineno} .{node.attr}")
                elif isinstance(node, ast.Assign) and any(
                        isinstance(t, ast.Attribute) and t.attr in ("tqdm", "__class__") for t in node.targets):
                    offenders.append(f"{os.path.relpath(path, APP_DIR)}:{node.lineno} assigns a SAM 2 global")
    assert not offenders


def test_frames_from_memory_feeds_init_state_and_puts_the_loader_back(engine):
    """SAM 2's init_state builds its state from our frames, and its own loader is back afterwards."""
    import sam2.sam2_video_predictor as vp

    from lib.engine.model import VolumePredictor

    original = vp.load_video_frames
    frames = np.zeros((3, 3, 8, 8), np.float32)  # any indexable: init_state only keeps it and its length
    with sam2_adapter.frames_from_memory(frames, 40, 50):
        state = engine.predictor.init_state(video_path="<test>", offload_video_to_cpu=True)
    assert vp.load_video_frames is original
    assert state["images"] is frames and state["num_frames"] == 3
    assert (state["video_height"], state["video_width"]) == (40, 50)
    assert isinstance(engine.predictor, VolumePredictor)
    with pytest.raises(TypeError):
        sam2_adapter.become(object(), VolumePredictor)


def test_install_routes_first_puts_ours_in_front_once():
    from fastapi import FastAPI

    web_app = FastAPI()

    @web_app.get("/info/")
    def theirs():
        return "theirs"

    def ours():
        return "ours"

    assert monailabel_adapter.install_routes_first(web_app, [("/info/", ours, ["GET"])])
    assert not monailabel_adapter.install_routes_first(web_app, [("/info/", ours, ["GET"])])
    from fastapi.testclient import TestClient

    assert TestClient(web_app).get(monailabel_adapter.settings.MONAI_LABEL_API_STR + "/info/").json() == "ours"
    assert [getattr(r, "endpoint", None) for r in web_app.router.routes].count(ours) == 1
