"""The distributed runner on a real two-node Ray cluster on this machine: `ray start --head` plus a second
node joining it, each with its own CPU count (1). Cases run on both nodes, give the records of the
single-process run, and a node killed mid-run loses no finished case while the run still completes
(Ray runs the lost task again on the surviving node) or reports the cases it could not finish.

SAM 2.1 tiny with RANDOM WEIGHTS at 128 px on 4 synthetic 5-slice cases, protocol `mask`.
Every process of the cluster is found by the cluster's own temporary folder and ended by its id at the end
(never `ray stop`, which would end every Ray instance of this user on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

pytest.importorskip("ray", reason="ray is not installed (requirements-eval.txt)")

import evaluate  # noqa: E402

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
EVALUATE = os.path.abspath(evaluate.__file__)


def _pids_of(marker: str) -> set[int]:
    """This user's processes whose command line names ``marker`` (the cluster's private temp folder)."""
    pids = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.stat(f"/proc/{d}").st_uid != os.getuid():
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.add(int(d))
        except OSError:
            continue
    return pids


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(*args) -> None:
    out = subprocess.run([RAY, "start", *args, "--disable-usage-stats"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.fixture(scope="module")
def cluster():
    import secrets

    temp = tempfile.mkdtemp(prefix="r2n-", dir="/tmp")  # short: Ray's socket paths live under it
    port = _free_port()
    # Ray >= 2.5x turns token authentication on for `ray start --head` and reads the token from
    # ~/.ray/auth_token, which any other Ray user of this account may replace: this cluster gets its own
    # token, given to its nodes and drivers (this process and the evaluate subprocess) by the environment.
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _ray_start("--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                   "--include-dashboard", "false", "--temp-dir", temp)
        head = _pids_of(temp)
        _ray_start("--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1", "--num-cpus", "1")
        second = _pids_of(temp) - head
        raylets = [p for p in second if "/raylet/raylet " in _cmdline(p)]
        assert len(raylets) == 1, [_cmdline(p)[:120] for p in second]
        yield {"address": f"127.0.0.1:{port}", "temp": temp, "second_raylet": raylets[0]}
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _pids_of(temp):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            time.sleep(3)
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("tiny")
    for n in range(4):
        zz, yy, xx = np.mgrid[:5, :32, :30]
        gt = ((zz - 2) ** 2 / 4 + (yy - 15 - n) ** 2 / 64 + (xx - 14) ** 2 / 40) < 1
        img = (gt * 80.0 + np.random.default_rng(n).normal(0, 12, gt.shape)).astype(np.float32)
        sitk.WriteImage(sitk.GetImageFromArray(img), str(root / f"c{n}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(gt.astype(np.uint8)), str(root / f"c{n}_label.nii.gz"))
    return str(root)


def _argv(data, out, *extra):
    return ["--data", data, "--protocol", "mask", "--random-weights", "--image-size", "128", "--device", "cpu",
            "--out", str(out), "--no-progress", *extra]


def _strip(obj):
    """A record without what depends on where and how fast it ran."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in ("seconds", "hardware", "encode")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _cases(out) -> list[dict]:
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)["cases"]


@pytest.fixture(scope="module")
def local(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    assert evaluate.main(_argv(dataset, out, "--workers", "1")) == 0
    return _cases(out)


def _on_cluster(dataset, out, address) -> subprocess.CompletedProcess:
    """The command as a user runs it, a driver process of its own (it reads the cluster's token at start)."""
    return subprocess.run([sys.executable, EVALUATE, *_argv(dataset, out, "--address", address)],
                          capture_output=True, text=True, timeout=900)


def test_cases_run_on_both_nodes_and_equal_the_local_run(cluster, dataset, local, tmp_path):
    run = _on_cluster(dataset, tmp_path, cluster["address"])
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    cases = _cases(tmp_path)
    nodes = {c["hardware"]["node"]["ray_node_id"] for c in cases}
    assert len(nodes) == 2, "every case ran on one node"
    assert _strip(cases) == _strip(local)


def test_a_node_killed_mid_run_loses_no_finished_case(cluster, dataset, local, tmp_path):
    proc = subprocess.Popen([sys.executable, EVALUATE, *_argv(dataset, tmp_path, "--address", cluster["address"])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    saved = os.path.join(tmp_path, "cases", "default")
    first, t0 = None, time.time()
    while first is None and proc.poll() is None and time.time() - t0 < 600:
        done = sorted(f for f in os.listdir(saved) if f.endswith(".json")) if os.path.isdir(saved) else []
        if done:
            first = os.path.join(saved, done[0])
        time.sleep(0.2)
    assert first is not None, "no case finished"
    with open(first, "rb") as f:
        before = f.read()
    os.kill(cluster["second_raylet"], signal.SIGKILL)  # the second node dies with whatever it was running
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    with open(first, "rb") as f:
        assert f.read() == before  # the case finished before the kill is kept as it was
    cases = {c["case"]: c for c in _cases(tmp_path)}
    assert sorted(cases) == [c["case"] for c in local]
    lost = [c for c in cases.values() if c.get("retry")]
    for c in lost:  # reported, with the reason, never silently dropped
        assert all(r["status"] == "failed" and "lost on the cluster" in r["reason"] for r in c["results"])
    ok = [_strip(c) for c in cases.values() if not c.get("retry")]
    assert ok == [_strip(c) for c in local if c["case"] in {o["case"] for o in ok}]
    if lost:  # rerunning the command finishes them on the node that is left
        assert _on_cluster(dataset, tmp_path, cluster["address"]).returncode == 0
        assert _strip(_cases(tmp_path)) == _strip(local)


def test_a_lost_case_is_reported_failed_and_run_again_on_resume(tmp_path):
    """What the driver does when Ray cannot finish a task even on its retry (no cluster needed)."""
    from lib.evaluation import datasets, distributed, outputs
    from lib.evaluation.store import Store

    store = Store(str(tmp_path))
    case = datasets.Case("c7", "/data/c7.nii.gz", "/data/c7_label.nii.gz")
    record = distributed.lost_case_record({"name": "default"}, case, RuntimeError("node died\ndetails"), ["fg", "wt"])
    store.save(record, {})
    assert not store.done("default", "c7")  # a rerun of the command runs it again
    rows = outputs.rows([store.load("default", "c7")])
    assert [(r["label"], r["status"]) for r in rows] == [("fg", "failed"), ("wt", "failed")]
    assert all("lost on the cluster (RuntimeError: node died)" in r["reason"] for r in rows)
    store.save({**record, "retry": False}, {})
    assert store.done("default", "c7")
