"""What replicas share in the model store, in-process: the training lock, confidences, session markers.

The whole deployment (Orthanc, two replicas, HAProxy) is tests/test_replicas.py; these pin the rules each
piece follows, including the cases that one cannot provoke cheaply there (a stale lock of a dead process or
of a silent host, two holders racing).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from lib.replicas import confidences, training_lock
from lib.replicas.sessions import SessionMarkers


def _hold_lock_in_child(model_dir: str, ready, release) -> None:
    with training_lock.held(model_dir):
        ready.set()
        release.wait(30)


def test_the_second_holder_is_refused_naming_the_first_and_gets_it_once_released(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock_in_child, args=(str(tmp_path), ready, release))
    child.start()
    try:
        assert ready.wait(60)
        with pytest.raises(training_lock.TrainingLocked) as refused:
            training_lock.acquire(str(tmp_path))
        assert refused.value.status_code == 409
        assert f"pid {child.pid}" in str(refused.value) and socket.gethostname() in str(refused.value)
        with pytest.raises(training_lock.TrainingLocked):
            training_lock.check_free(str(tmp_path))
    finally:
        release.set()
        child.join(30)
    assert not os.path.exists(training_lock.lock_path(str(tmp_path))), "released when the run ended"
    with training_lock.held(str(tmp_path)) as mine:
        assert mine["pid"] == os.getpid()
    training_lock.check_free(str(tmp_path))


def _take_over_in_child(model_dir: str, out) -> None:
    with training_lock.held(model_dir) as mine:
        out.put(json.load(open(training_lock.lock_path(model_dir))))
        out.put(mine)


def test_the_server_takes_the_lock_before_starting_training_and_its_process_takes_it_over(tmp_path):
    """No window between the POST and the training process: the lock exists from the POST on."""
    model_dir = str(tmp_path)
    server_lock = training_lock.acquire(model_dir, phase="starting")
    from monailabel.utils.async_tasks.utils import background_tasks

    background_tasks.setdefault("train", []).append({"id": "t", "status": "SUBMITTED"})  # as run_model leaves it
    try:
        with pytest.raises(training_lock.TrainingLocked):
            training_lock.acquire(model_dir)  # the starting run's lock holds against everyone
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        child = ctx.Process(target=_take_over_in_child, args=(model_dir, out))
        child.start()
        during, child_lock = out.get(timeout=60), out.get(timeout=60)
        child.join(30)
    finally:
        background_tasks["train"].pop()
    assert during["pid"] == child.pid and during["phase"] == "running" and during["token"] != server_lock["token"]
    assert child_lock["started"] == server_lock["started"]
    assert not os.path.exists(training_lock.lock_path(model_dir)), "released by the training process"


def test_a_servers_own_starting_lock_without_a_training_is_stale(tmp_path):
    training_lock.acquire(str(tmp_path), phase="starting")  # the process it was for never started
    assert training_lock.holder(str(tmp_path)) is None
    training_lock.release(str(tmp_path), training_lock.acquire(str(tmp_path)))


def test_a_stopped_training_childs_lock_is_stale_while_the_child_is_still_dying(tmp_path):
    """DELETE /train/ kills the child and marks the task STOPPED; the child may live a moment longer. The
    same POST right after (to resume) must not get a 409 from the lock of the run it just stopped."""
    from monailabel.utils.async_tasks.utils import background_tasks

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # alive: not yet dead
    path = training_lock.lock_path(str(tmp_path))
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": child.pid, "server_pid": os.getpid(), "server": "me:1",
                   "phase": "running", "started": "now", "token": "x"}, f)
    task = {"id": "t", "status": "RUNNING"}
    background_tasks.setdefault("train", []).append(task)
    try:
        assert training_lock.holder(str(tmp_path)) is not None, "while this server's task runs, its child holds it"
        task["status"] = "STOPPED"  # what monailabel's stop_background_task leaves
        assert training_lock.holder(str(tmp_path)) is None
    finally:
        background_tasks["train"].remove(task)
        child.kill()
        child.wait()


def test_a_dead_processs_lock_is_stale_and_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = training_lock.lock_path(str(tmp_path))
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "server": "gone:1", "started": "then", "token": "x"}, f)
    assert training_lock.holder(str(tmp_path)) is None
    mine = training_lock.acquire(str(tmp_path))
    assert json.load(open(path))["token"] == mine["token"]
    training_lock.release(str(tmp_path), mine)


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh_and_not_after(tmp_path):
    path = training_lock.lock_path(str(tmp_path))
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"host": "other-host", "pid": 1, "server": "other-host:8001", "started": "then", "token": "x"}, f)
    with pytest.raises(training_lock.TrainingLocked) as refused:
        training_lock.acquire(str(tmp_path))
    assert "other-host:8001" in str(refused.value)
    old = time.time() - training_lock.STALE_S - 5
    os.utime(path, (old, old))
    mine = training_lock.acquire(str(tmp_path))  # a host that died cannot remove its lock
    assert json.load(open(path))["token"] == mine["token"]


def test_confidences_are_one_record_per_image_whoever_wrote_it(tmp_path):
    assert confidences.read(str(tmp_path), "1.2.3") == {}
    assert confidences.write(str(tmp_path), "1.2.3", {"mean_slice_score": 0.4, "ts": 1})
    assert confidences.write(str(tmp_path), "../weird name", {"mean_slice_score": 0.2, "ts": 2})
    assert confidences.write(str(tmp_path), "1.2.3", {"mean_slice_score": 0.7, "ts": 3})  # replaced
    assert confidences.read(str(tmp_path), "1.2.3")["mean_slice_score"] == 0.7
    assert confidences.read(str(tmp_path), "../weird name")["mean_slice_score"] == 0.2
    assert sorted(os.listdir(confidences.folder(str(tmp_path)))) == sorted(
        os.path.basename(confidences._path(str(tmp_path), i)) for i in ("1.2.3", "../weird name"))


def test_low_confidence_ranks_by_the_records_of_every_replica(tmp_path):
    """Two images, each propagated on another replica: each replica's datastore knows one score only."""
    from lib.activelearning import LowestSam2Confidence, record_confidence

    class Store:  # the per-replica part: a DICOMweb datastore's image info lives in the replica's own cache
        def __init__(self):
            self.info = {}

        def get_unlabeled_images(self, *a):
            return ["a", "b"]

        def get_image_info(self, image):
            return self.info.get(image, {})

        def update_image_info(self, image, info):
            self.info.setdefault(image, {}).update(info)

    one, two = Store(), Store()
    assert record_confidence(one, "a", "sam2_point", {"0": 0.9, "1": 0.8}, shared_dir=str(tmp_path))
    assert record_confidence(two, "b", "sam2_point", {"0": 0.1, "1": 0.2}, stability=0.3,
                             shared_dir=str(tmp_path))
    alone = LowestSam2Confidence()(dict(strategy="s"), one)
    shared = LowestSam2Confidence(shared_dir=str(tmp_path))(dict(strategy="s"), one)
    assert alone["id"] == "a", "without the shared store replica one knows only its own image"
    assert shared == {"id": "b", "sam2_stability": 0.3, "sam2_mean_slice_score": pytest.approx(0.15)}, (
        "the answer reports the record it ranked by, though it came from the other replica")


def test_a_session_that_moved_replica_says_where_it_was(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM2_3D_REPLICA", "host:8001")
    first = SessionMarkers(str(tmp_path))
    assert first.claim("k") is None
    assert first.claim("k") is None, "the same process again: nothing moved"
    monkeypatch.setenv("SAM2_3D_REPLICA", "host:8002")
    second = SessionMarkers(str(tmp_path))
    why = second.claim("k")
    assert why and "host:8001" in why and "host:8002" in why
    assert second.claim("other key") is None


def test_only_a_servers_start_up_writes_its_name_into_the_environment(monkeypatch):
    """A test or tool reading the server name leaves its environment alone (an earlier version cached the
    name there in any process, and a later test's replicas inherited it, without a port); the server's
    start-up writes it, for the training processes monailabel starts without ``--port``."""
    from lib.replicas import identity

    monkeypatch.delenv(identity.ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["monailabel", "start_server", "--port", "8123"])
    assert identity.server_name() == f"{socket.gethostname()}:8123"
    assert identity.ENV not in os.environ
    assert training_lock._record("running")["server"] == f"{socket.gethostname()}:8123"
    assert identity.ENV not in os.environ
    assert identity.name_this_server() == f"{socket.gethostname()}:8123" == os.environ[identity.ENV]
    monkeypatch.setattr(sys, "argv", ["python", "-m", "monailabel.interfaces.utils.app", "-m", "train"])
    assert identity.server_name() == f"{socket.gethostname()}:8123", "a training child says its server's name"
