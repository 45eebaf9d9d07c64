"""Fine-tuning on two devices through the real server: Lightning's DDP with two CPU processes on gloo.

``POST /train/sam2_finetune`` with ``devices: 2`` starts monailabel's train child (rank 0); Lightning's
``ddp`` launcher runs the same command again as rank 1. Both ranks' lines reach the server's log through
the child's stdout, which is how this test sees them."""

from __future__ import annotations

import os
import re
import time

import pytest
import requests
from conftest import labelled_studies, training_server

TRAIN_SIZE = 128  # as tests/test_finetune.py
DDP_TRAIN = {"epochs": 1, "steps_per_epoch": 2, "clip_length": 3, "learning_rate": 1e-3, "checkpoint_every": 2,
             "validation_split": 0.5, "val_z_margin": 1, "prompt_types": "box,click", "keep_only_if_better": False,
             "correction_clicks": 1, "devices": 2, "strategy": "ddp"}


@pytest.fixture(scope="module")
def ddp_server(tmp_path_factory):
    """Two labelled images (one is held out for validation); versions in a temp model_dir."""
    studies = labelled_studies(tmp_path_factory.mktemp("ddp_studies"), {
        name: ("spinalcord_t2", ".nii.gz") for name in ("spinalcord_a.nii.gz", "spinalcord_b.nii.gz")})
    srv = training_server(tmp_path_factory, "ddp", studies, TRAIN_SIZE)
    yield srv
    srv.stop()


def test_bad_device_counts_and_strategies_are_422(ddp_server):
    url = ddp_server.url
    too_many = requests.post(f"{url}/train/sam2_finetune", json={"devices": 64}, timeout=30)
    assert too_many.status_code == 422 and "devices=64" in too_many.text, too_many.text
    spawn = requests.post(f"{url}/train/sam2_finetune", json={"strategy": "ddp_spawn", "devices": 0}, timeout=30)
    assert spawn.status_code == 422 and "strategy" in spawn.text and "devices" in spawn.text, spawn.text
    assert requests.get(f"{url}/train/?check_if_running=true", timeout=30).status_code == 404  # nothing started


def test_two_cpu_processes_train_one_run_in_sync_and_write_one_version(ddp_server):
    url = ddp_server.url
    started = requests.post(f"{url}/train/sam2_finetune", json=DDP_TRAIN, timeout=30)
    assert started.status_code == 200, started.text
    t0 = time.time()
    while True:
        status = requests.get(f"{url}/train/", timeout=30).json()
        if status.get("status") in ("DONE", "ERROR", "STOPPED"):
            break
        assert time.time() - t0 < 300, f"training did not end; log:\n{ddp_server.tail(80)}"
        time.sleep(2)
    log = open(ddp_server.log_path).read()
    assert status["status"] == "DONE", f"{status.get('details')}\n{ddp_server.tail(80)}"

    # both ranks joined one gloo process group and trained
    for rank in (0, 1):
        assert re.search(rf"rank {rank} of 2 \(DDPStrategy, gloo\) training from step 0", log), ddp_server.tail(80)
    finished = {rank: (step, digest) for rank, step, digest in
                re.findall(r"rank (\d) of 2 finished at step (\d+): trained parameters sha256 (\w+)", log)}
    assert set(finished) == {"0", "1"}, ddp_server.tail(80)
    # each rank trained other clips; only synced gradients leave the same parameters on both
    assert finished["0"] == finished["1"] and finished["0"][0] == str(DDP_TRAIN["steps_per_epoch"]), finished

    # rank 0 alone wrote: one version, one history line per step, the validation of the held-out image
    root = os.path.join(ddp_server.model_dir, "finetuned")
    versions = sorted(d for d in os.listdir(root) if d.startswith("v"))
    assert versions == ["v0001"], versions
    trainer = requests.get(f"{url}/info/", timeout=30).json()["trainers"]["sam2_finetune"]
    assert [v["name"] for v in trainer["versions"]] == ["v0001"], trainer["versions"]
    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["sam2_finetune"]
    assert stats["status"] == "DONE" and stats["version"] == "v0001" and stats["step"] == 2, stats
    assert stats["val_dice"] is not None, stats  # the gathered validation of the held-out image
    run_dir = os.path.join(root, "_runs", stats["run"])
    with open(os.path.join(run_dir, "history.jsonl")) as f:
        steps = [line for line in f if '"loss"' in line]
    assert len(steps) == DDP_TRAIN["steps_per_epoch"], steps
