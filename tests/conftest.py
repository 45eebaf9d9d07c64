"""Shared test fixtures: the real data, one SAM 2 engine and one real server per test session.

Every SAM 2 used here is the REAL SAM 2.1 tiny architecture with RANDOM WEIGHTS (no checkpoint can
be downloaded on CI machines), run at a 256 px input size to keep CPU time small. Its masks are
meaningless; the tests check plumbing, geometry, protocol and agreement with SAM 2's own code.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import requests

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
APP_DIR = os.path.join(REPO, "apps", "sam2_3d")
SHARED_DATA = os.path.abspath(os.environ.get("SAM2_3D_SHARED_DATA", os.path.join(REPO, "..", "shared", "data")))
TEST_IMAGE_SIZE = int(os.environ.get("SAM2_3D_TEST_IMAGE_SIZE", "256"))

if APP_DIR not in sys.path:
    sys.path.insert(0, APP_DIR)  # the app's `lib` package, as monailabel itself imports it


# Figures that tests measure (how many hostile requests were tried, the incremental path's agreement with
# the oracle...): printed at the end of every run, passing or not, and written to test-artifacts/.
MEASURED: dict[str, object] = {}


def pytest_terminal_summary(terminalreporter):
    if not MEASURED:
        return
    import json

    terminalreporter.section("measured by the tests")
    for key, value in MEASURED.items():
        terminalreporter.write_line(f"{key}: {json.dumps(value)}")
    os.makedirs(os.path.join(REPO, "test-artifacts"), exist_ok=True)
    with open(os.path.join(REPO, "test-artifacts", "measured.json"), "w") as f:
        json.dump(MEASURED, f, indent=1)


def shared(*parts: str) -> str:
    """Path of a file in ../shared/data; skip the test (saying why) when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"../shared/data is absent here ({path} not found): real-data test cannot run")
    return path


def same_grid(a, b) -> None:
    """Two SimpleITK images share size, spacing, origin and direction (a label must match its image)."""
    import numpy as np

    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


@pytest.fixture(scope="session")
def engine():
    """One SAM 2.1-tiny engine (RANDOM WEIGHTS, 256 px) for every in-process test."""
    from lib.engine.build import engine_from_conf

    return engine_from_conf(
        {"checkpoint": "sam2.1_hiera_tiny", "random_weights": "true", "image_size": str(TEST_IMAGE_SIZE), "device": "cpu"}
    )


@pytest.fixture(scope="session")
def engine128():
    """One SAM 2.1-tiny engine (RANDOM WEIGHTS) at 128 px, shared by the evaluation protocol tests."""
    import torch

    from lib.engine.build import engine_from_conf

    torch.manual_seed(0)
    return engine_from_conf({"checkpoint": "sam2.1_hiera_tiny", "random_weights": "true", "image_size": "128",
                             "device": "cpu"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real `monailabel start_server --app apps/sam2_3d` process on loopback."""

    def __init__(self, studies: str, workdir: str, conf: dict[str, str] | None = None, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.studies = studies
        self.log_path = os.path.join(workdir, f"server-{self.port}.log")
        conf = {"random_weights": "true", "image_size": str(TEST_IMAGE_SIZE), "device": "cpu", **(conf or {})}
        args = [os.path.join(os.path.dirname(sys.executable), "monailabel"), "start_server",
                "--app", APP_DIR, "--studies", studies, "--host", "127.0.0.1", "--port", str(self.port)]
        for k, v in conf.items():
            args += ["--conf", k, v]
        environ = dict(os.environ)
        environ.update({"MONAI_LABEL_SESSION_PATH": os.path.join(workdir, "sessions"), "PYTHONUNBUFFERED": "1"})
        environ.update(env or {})
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=environ, cwd=workdir)
        self.wait_ready()

    def wait_ready(self, timeout: float = 180.0) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); log:\n{self.tail()}")
            try:
                if requests.get(self.url + "/info/", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"server not ready after {timeout}s; log:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        with open(self.log_path) as f:
            return "".join(f.readlines()[-n:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def labelled_studies(folder, labelled: dict[str, tuple[str, str]]):
    """A local datastore folder holding, per file name, the image and final label of a ``../shared`` case
    (file name -> (case folder, extension)); the folder, for the caller to add more to."""
    final = folder / "labels" / "final"
    final.mkdir(parents=True)
    for name, (case, ext) in labelled.items():
        shutil.copy(shared(case, "image" + ext), folder / name)
        shutil.copy(shared(case, "label" + ext), final / name)
    return folder


def training_server(tmp_path_factory, name: str, studies, image_size: int) -> Server:
    """A server on ``studies`` at ``image_size`` whose fine-tuned versions go to a temp ``model_dir``
    (``srv.model_dir``), so that no test's versions reach another server."""
    model_dir = str(tmp_path_factory.mktemp(f"{name}_model"))
    srv = Server(str(studies), str(tmp_path_factory.mktemp(f"{name}_server")),
                 conf={"image_size": str(image_size), "model_dir": model_dir})
    srv.model_dir = model_dir
    return srv


# Small real volumes for the server's local datastore (copied to a temp folder, never into the repo).
STUDY_FILES = {
    "spinalcord_t2.nii.gz": ("spinalcord_t2", "image.nii.gz"),  # permuted axes
    "totalseg_ct_small.nii.gz": ("totalseg_ct_small", "image.nii.gz"),  # direction diag(-1,-1,1)
    "pyradiomics_brain.nrrd": ("pyradiomics_brain", "image.nrrd"),  # NRRD, diag(1,-1,1)
}


@pytest.fixture(scope="session")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("studies")
    for name, parts in STUDY_FILES.items():
        shutil.copy(shared(*parts), folder / name)
    return str(folder)


@pytest.fixture(scope="session")
def server(studies, tmp_path_factory):
    """The app served by the real monailabel server, shared by every HTTP test."""
    srv = Server(studies, str(tmp_path_factory.mktemp("server")))
    yield srv
    srv.stop()
