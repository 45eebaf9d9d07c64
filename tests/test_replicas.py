"""Two replicas behind HAProxy, one Orthanc, one shared store, started with scripts/replicas.sh as a user would.

Three series in a real Orthanc; three clients click on them through the balancer: every request for an image
lands on one replica (read from the replicas' request logs); each replica's ``sam2_low_confidence`` ranks by
the confidences both recorded; a label saved through the balancer is in Orthanc and counted by both
replicas; a version trained through the balancer is served by both (a second training meanwhile is refused
409 naming the holder); then one replica is killed (-9) and the clients carry on: no 5xx, at most one
``session_restarted`` per client and image. SAM 2.1 tiny with RANDOM WEIGHTS at the tests'
image size: masks are meaningless, the plumbing is what is checked. The tests run in file order and share one
deployment. Figures (requests, p50/p95 seconds, restarts) go to "measured by the tests".
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from conftest import MEASURED, REPO, TEST_IMAGE_SIZE, shared
from support import orthanc as orthanc_support

SERIES_UID = "1.2.826.0.1.3680043.8.498.97006710487569071056074638989990160491"
CLIENTS = ("annotator-1", "annotator-2", "annotator-3")
LINE = re.compile(r"request POST /infer/sam2_point model=sam2_point image=(?P<image>\S+) .*?status=(?P<status>\d+)")
# a tiny run that always writes a version (random weights: no validation to win)
TRAIN = {"epochs": 1, "steps_per_epoch": 2, "clip_length": 2, "validation_split": 0, "keep_only_if_better": False,
         "correction_clicks": 0, "prompt_types": "box,click", "max_images": 1}


def _free_run(n: int) -> int:
    """A port P with P..P+n-1 all free on loopback."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports")


def _copy_of_series(folder: str, variant: int) -> list[bytes]:
    """The series again under new (deterministic) Series/SOP Instance UIDs: another image for the PACS."""
    import pydicom
    from pydicom.uid import generate_uid

    series = generate_uid(entropy_srcs=[SERIES_UID, str(variant)])
    out = []
    for name in sorted(os.listdir(folder)):
        ds = pydicom.dcmread(os.path.join(folder, name))
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = 100 + variant
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), str(variant)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, write_like_original=True)
        out.append(buf.getvalue())
    return out


class Deployment:
    def __init__(self, work: str):
        self.work = work
        self.pacs = orthanc_support.Orthanc(os.path.join(work, "orthanc"))
        source = shared("totalseg_ct_dicom", "dicom_uids")
        assert [s for _, s, _ in self.pacs.upload_folder(source)] == [200] * 20
        for variant in (1, 2):
            for data in _copy_of_series(source, variant):
                assert requests.post(self.pacs.url + "/instances", data=data, timeout=30).status_code == 200
        self.images = sorted(s["0020000E"]["Value"][0] for s in self.pacs.series("CT"))
        assert len(self.images) == 3
        self.shared = os.path.join(work, "shared")
        self.port = _free_run(3)
        self.url = f"http://127.0.0.1:{self.port}"
        self.replicas = {p: f"http://127.0.0.1:{p}" for p in (self.port + 1, self.port + 2)}
        args = [os.path.join(REPO, "scripts", "replicas.sh"), self.pacs.dicomweb, "--shared", self.shared,
                "--replicas", "2", "--port", str(self.port), "--conf", "random_weights", "true",
                "--conf", "image_size", str(TEST_IMAGE_SIZE), "--conf", "device", "cpu"]
        env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        self.log = open(os.path.join(work, "replicas.sh.log"), "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 240) -> None:
        t0 = time.time()
        for url in [*self.replicas.values(), self.url]:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"replicas.sh exited ({self.proc.returncode}):\n{self.tail()}")
                try:
                    if requests.get(url + "/info/", timeout=5).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.time() - t0 > timeout:
                    raise RuntimeError(f"{url} not ready after {timeout}s:\n{self.tail()}")
                time.sleep(1)
        while self.up() != set(self.replicas):  # requests before that would go to the replica already up
            if time.time() - t0 > timeout:
                raise RuntimeError(f"HAProxy sees only {self.up()} up after {timeout}s:\n{self.tail()}")
            time.sleep(0.5)

    def up(self) -> set[int]:
        """The replicas HAProxy sees up, from its stats socket (CSV: pxname, svname, ..., status at 17)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(os.path.join(self.shared, "run", "haproxy.sock"))
            s.sendall(b"show stat\n")
            text = b"".join(iter(lambda: s.recv(65536), b"")).decode()
        rows = [line.split(",") for line in text.splitlines() if line.startswith("replicas,replica-")]
        return {int(r[1].split("-")[1]) for r in rows if r[17].startswith("UP")}

    def replica_log(self, port: int) -> str:
        with open(os.path.join(self.shared, "logs", f"replica-{port}.log")) as f:
            return f.read()

    def infer_lines(self, port: int) -> list[tuple[str, str]]:
        return [(m["image"], m["status"]) for m in LINE.finditer(self.replica_log(port))]

    def tail(self) -> str:
        logs = os.path.join(self.shared, "logs")
        parts = [open(os.path.join(self.work, "replicas.sh.log")).read()]
        for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
            with open(os.path.join(logs, name)) as f:
                parts.append(f"--- {name}\n" + "".join(f.readlines()[-30:]))
        return "\n".join(parts)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the script stops the balancer and the replicas
            self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        self.pacs.stop()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    for why in (orthanc_support.available(),
                "" if shutil.which("haproxy") or os.path.exists("/usr/sbin/haproxy") else
                "HAProxy is not installed (run scripts/setup_system.sh: Debian package 'haproxy')"):
        if why:
            pytest.skip(why)
    d = Deployment(str(tmp_path_factory.mktemp("replicas")))
    d.calls = []  # (phase, client, image, status, seconds, session_restarted)
    yield d
    d.stop()


def _click(d: Deployment, client: str, image: str, phase: str) -> None:
    params = {"foreground": [[256, 256, 10]], "background": [], "label": "object", "start_slice": 9,
              "end_slice": 11, "client_id": client}
    t0 = time.perf_counter()
    r = requests.post(f"{d.url}/infer/sam2_point", params={"image": image, "output": "json"},
                      files={"params": (None, json.dumps(params))}, timeout=600)
    seconds = time.perf_counter() - t0
    restarted = r.json().get("session_restarted") if r.status_code == 200 else None
    d.calls.append((phase, client, image, r.status_code, seconds, restarted))


def _round(d: Deployment, phase: str, rounds: int) -> None:
    def client_work(i: int):
        for r in range(rounds):
            for k in range(len(d.images)):  # each client its own order: requests for one image interleave
                _click(d, CLIENTS[i], d.images[(i + k + r) % len(d.images)], phase)

    with ThreadPoolExecutor(len(CLIENTS)) as pool:
        list(pool.map(client_work, range(len(CLIENTS))))


def _logged(d: Deployment, ports, at_least: int) -> int:
    """How many infer lines the replicas logged, waiting a little for the last ones (written once the
    answer has been sent)."""
    t0 = time.time()
    while True:
        n = sum(len(d.infer_lines(p)) for p in ports)
        if n >= at_least or time.time() - t0 > 10:
            return n
        time.sleep(0.2)


def _where(d: Deployment, ports) -> dict[str, set[int]]:
    where: dict[str, set[int]] = {}
    for port in ports:
        for image, _ in d.infer_lines(port):
            where.setdefault(image, set()).add(port)
    return where


def test_every_request_for_an_image_lands_on_one_replica(deployment):
    d = deployment
    _round(d, "before", rounds=1)  # 3 clients interleaved on each image
    calls = [c for c in d.calls if c[0] == "before"]
    assert [c[3] for c in calls] == [200] * len(calls), calls
    assert not [c for c in calls if c[5]], [c for c in calls if c[5]]  # nothing moved yet
    logged = _logged(d, d.replicas, len(calls))
    assert logged == len(calls), "every request went through the balancer to one replica, and only once"
    where = _where(d, d.replicas)
    assert set(where) == set(d.images), where
    assert all(len(ports) == 1 for ports in where.values()), f"an image was served by both replicas: {where}"
    # the three UIDs and the ring are fixed (server ids 1, 2; crc32): 2 + 1 images, so some move and some stay
    assert sorted(len([i for i in where if p in where[i]]) for p in d.replicas) == [1, 2], where
    d.before = {image: ports.pop() for image, ports in where.items()}


def test_every_replica_ranks_by_the_confidences_every_replica_recorded(deployment):
    d = deployment
    recorded = {}
    for name in os.listdir(os.path.join(d.shared, "model", "confidences")):
        with open(os.path.join(d.shared, "model", "confidences", name)) as f:
            record = json.load(f)
        recorded[record["image"]] = record["mean_slice_score"]
    assert set(recorded) == set(d.images), recorded
    lowest = min(recorded, key=lambda i: (recorded[i], i))  # the strategy's order: score, then id
    # each image's score is on one replica only: without the shared store, the replica that did not propagate
    # `lowest` ranks its own scored images first and never answers it
    for port, url in d.replicas.items():
        own = {i for i in d.images
               if requests.get(f"{url}/datastore/image/info", params={"image": i}, timeout=60).json().get("sam2_confidence")}
        assert own == {i for i, p in d.before.items() if p == port}, "a replica's datastore knows its own images only"
        chosen = requests.post(f"{url}/activelearning/sam2_low_confidence", json={"client_id": f"al-{port}"},
                               timeout=60).json()
        assert chosen["id"] == lowest and chosen["sam2_mean_slice_score"] == pytest.approx(recorded[lowest]), chosen


def test_a_label_saved_through_the_balancer_is_in_orthanc_and_counted_by_both(deployment):
    d = deployment
    image = d.images[0]
    r = requests.get(f"{d.url}/datastore/image", params={"image": image}, timeout=120)
    assert r.status_code == 200, r.text
    path = os.path.join(d.work, "image.nii.gz")
    open(path, "wb").write(r.content)
    ct = sitk.ReadImage(path)
    label = sitk.GetImageFromArray((sitk.GetArrayFromImage(ct) > 150).astype(np.uint8))  # real anatomy
    label.CopyInformation(ct)
    sitk.WriteImage(label, os.path.join(d.work, "final.nii.gz"))
    with open(os.path.join(d.work, "final.nii.gz"), "rb") as f:
        saved = requests.put(f"{d.url}/datastore/label", params={"image": image, "tag": "final"},
                             files={"label": ("final.nii.gz", f),
                                    "params": (None, json.dumps({"label_info": [{"name": "body", "idx": 1}]}))},
                             timeout=300)
    assert saved.status_code == 200, saved.text
    segs = d.pacs.series("SEG")
    assert len(segs) == 1, segs
    counted = {}
    t0 = time.time()
    while time.time() - t0 < 60:  # each replica lists the PACS's labelled series again after its short cache
        counted = {p: requests.get(f"{u}/datastore/", params={"output": "stats"}, timeout=60).json()
                   for p, u in d.replicas.items()}
        if all(s.get("completed") == 1 and s.get("total") == 3 for s in counted.values()):
            break
        time.sleep(2)
    assert all(s.get("completed") == 1 and s.get("total") == 3 for s in counted.values()), counted


def test_a_version_trained_through_the_balancer_is_served_by_both(deployment):
    d = deployment
    started = requests.post(f"{d.url}/train/sam2_finetune", json=TRAIN, timeout=60)
    assert started.status_code == 200, started.text
    lock_file = os.path.join(d.shared, "model", "finetuned", "_runs", "training.lock")
    holder = json.load(open(lock_file))  # taken before the POST answered
    holder_port = int(holder["server"].rsplit(":", 1)[1])
    assert holder_port in d.replicas
    other = next(p for p in d.replicas if p != holder_port)
    second = requests.post(f"{d.replicas[other]}/train/sam2_finetune", json=TRAIN, timeout=60)
    assert second.status_code == 409, second.text
    assert f":{holder_port}" in second.json()["detail"] and "one replica trains at a time" in second.json()["detail"]

    t0, stats = time.time(), {}
    while time.time() - t0 < 400:
        stats = requests.get(f"{d.replicas[other]}/info/", timeout=60).json()["train_stats"]["sam2_finetune"]
        if stats.get("status") in ("DONE", "FAILED") and not os.path.exists(lock_file):
            break
        time.sleep(2)
    assert stats.get("status") == "DONE" and stats.get("version"), f"{stats}\n{d.tail()}"
    assert not os.path.exists(lock_file), "the training process released the lock"
    for port, url in d.replicas.items():
        info = requests.get(f"{url}/info/", timeout=60).json()["trainers"]["sam2_finetune"]
        assert info["weights_in_use"].split("/")[-1] == stats["version"], (port, info["weights_in_use"])
    for image in d.images:  # and the answers say so, from whichever replica holds the image
        r = requests.post(f"{d.url}/infer/sam2_point", params={"image": image, "output": "json"},
                          files={"params": (None, json.dumps({"foreground": [[256, 256, 10]], "start_slice": 10,
                                                              "end_slice": 10, "client_id": "checker"}))},
                          timeout=300)
        assert r.status_code == 200, r.text
        assert (r.json().get("weights") or r.json()["params"]["weights"]).split("/")[-1] == stats["version"], r.text


def test_when_a_replica_dies_its_images_move_and_the_clients_carry_on(deployment):
    d = deployment
    served = {p: [i for i, q in d.before.items() if q == p] for p in d.replicas}
    victim = max(served, key=lambda p: len(served[p]))  # the one with the most images
    survivor = next(p for p in d.replicas if p != victim)
    pid = int(open(os.path.join(d.shared, "run", f"replica-{victim}.pid")).read())
    os.kill(pid, signal.SIGKILL)
    before_lines = len(d.infer_lines(survivor))
    _round(d, "after", rounds=2)
    calls = [c for c in d.calls if c[0] == "after"]
    assert not [c for c in calls if c[3] >= 500], f"5xx after the kill: {calls}\n{d.tail()}"
    assert [c[3] for c in calls] == [200] * len(calls), calls
    assert _logged(d, [survivor], before_lines + len(calls)) - before_lines == len(calls), "all to the survivor"
    moved = set(served[victim])
    restarts = {}
    for _, client, image, _, _, why in calls:
        if why:
            restarts.setdefault((client, image), []).append(why)
    assert all(len(v) == 1 for v in restarts.values()), restarts
    assert set(restarts) == {(c, i) for c in CLIENTS for i in moved}, (restarts, moved)  # the others: none
    assert all(f":{victim}" in v[0] for v in restarts.values()), restarts
    with open(os.path.join(d.shared, "logs", "haproxy.log")) as f:  # httplog: conns/retries before the queues
        retried = sum(int(m[1]) > 0 for m in re.finditer(r" \d+/\d+/\d+/\d+/\+?(\d+) \d+/\d+ \"POST /infer", f.read()))
    seconds = sorted(c[4] for c in d.calls)
    MEASURED["replicas: infer requests through HAProxy, p50 s, p95 s, 5xx, session_restarted after a kill -9"] = [
        len(d.calls), round(float(np.percentile(seconds, 50)), 2), round(float(np.percentile(seconds, 95)), 2),
        sum(c[3] >= 500 for c in d.calls), sum(len(v) for v in restarts.values())]
    MEASURED["replicas: images per replica before the kill, images moved, requests HAProxy re-sent"] = [
        sorted(len(v) for v in served.values()), len(moved), retried]
