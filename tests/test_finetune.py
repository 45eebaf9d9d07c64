"""Fine-tuning SAM 2 on the datastore (issue 10), on CPU at CI size.

SAM 2.1 tiny with RANDOM WEIGHTS at 128 px (no checkpoint can be downloaded here): these tests check that
the training path is real and wired end to end (gradients reach the trained parts and the loss falls on
a clip, a version is written and served, an interrupted run resumes at its saved step), not accuracy.
The learning demonstration on BraTS is benchmarks/finetune_demo.py (reports/finetune_demo/).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
import requests
import torch
from conftest import labelled_studies, shared, training_server

TRAIN_SIZE = 128


# -- parameters ---------------------------------------------------------------------------------
def test_bad_parameters_are_named():
    from lib.training.params import DEFAULTS, TrainParamError, parse

    assert parse({}) == DEFAULTS and DEFAULTS.clip_length == 8 and DEFAULTS.train_image_encoder is False
    with pytest.raises(TrainParamError) as e:
        parse({"epochs": 0, "learning_rate": "fast", "clip_length": 2.5, "train_parts": "memory,heads", "bogus": 1})
    text = str(e.value)
    for name in ("epochs=0", "learning_rate='fast'", "clip_length=2.5", "train_parts='memory,heads'", "'bogus'"):
        assert name in text
    # what Slicer sends back (strings, single-element lists) parses
    p = parse({"epochs": "3", "train_image_encoder": "true", "preset": ["mr"], "model": "sam2_finetune"})
    assert (p.epochs, p.train_image_encoder, p.preset) == (3, True, "mr")


# -- clips and prompts ----------------------------------------------------------------------------
def test_clips_start_on_the_object_with_sam2s_prompt_sampling():
    from lib.engine.intensity import IntensityPreset
    from lib.evaluation import prompts as P
    from lib.training import data as D

    pair = {"image_id": "sc", "image": shared("spinalcord_t2", "image.nii.gz"),
            "label": shared("spinalcord_t2", "label.nii.gz")}
    vol = D.load_volume(pair, IntensityPreset("auto"), "each")
    sampler = D.ClipSampler([vol], 8, ("mask", "click", "box"), seed=3)
    kinds, clicks = set(), set()
    for n in range(12):
        clip = sampler.clip(n)
        again = sampler.clip(n)  # clip n depends only on (seed, n): a resumed run draws the same clips
        assert (again.slices, again.object, again.prompt["kind"]) == (clip.slices, clip.object, clip.prompt["kind"])
        assert str(again.prompt) == str(clip.prompt)  # the same click / noised box too
        assert len(clip.slices) == 8 and abs(np.diff(clip.slices)).tolist() == [1] * 7
        gt0 = vol.objects[clip.object][clip.slices[0]]
        assert gt0.any(), "a clip starts on a slice holding the object"
        kinds.add(clip.prompt["kind"])
        if clip.prompt["kind"] == "box":  # SAM's box noise: at most 10 % of the box size and 20 px per corner
            x0, y0, x1, y1 = P.bounding_box(gt0)
            bound = np.minimum([0.1 * (x1 - x0), 0.1 * (y1 - y0)] * 2, 20) + 1e-4
            assert np.all(np.abs(np.subtract(clip.prompt["box"], (x0, y0, x1, y1))) <= bound), (clip.prompt, (x0, y0, x1, y1))
        if clip.prompt["kind"] == "click":  # one positive click drawn uniformly inside the object
            (x, y), = clip.prompt["points"]
            assert clip.prompt["labels"] == [1] and gt0[int(y), int(x)]
            clicks.add((x, y))
    assert kinds == {"mask", "click", "box"} and len(clicks) > 1


# -- the training step itself -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_engine():
    """A separate engine (training changes its weights); RANDOM WEIGHTS, 128 px."""
    from lib.engine.build import engine_from_conf

    return engine_from_conf({"checkpoint": "sam2.1_hiera_tiny", "random_weights": "true",
                             "image_size": str(TRAIN_SIZE), "device": "cpu"})


def test_loss_falls_when_fitting_one_clip(train_engine):
    """SAM 2's video forward + loss + AdamW on the trained parts only: repeated on one clip, the loss falls
    and the frozen image encoder does not move."""
    from lib.engine.intensity import IntensityPreset
    from lib.training import data as D
    from lib.training.module import Sam2Finetune
    from lib.training.params import parse

    pair = {"image_id": "sc", "image": shared("spinalcord_t2", "image.nii.gz"),
            "label": shared("spinalcord_t2", "label.nii.gz")}
    sampler = D.ClipSampler([D.load_volume(pair, IntensityPreset("auto"), "each")], 3, ("box",), seed=0)
    clip = sampler.clip(0)
    # the same clip every step: a loss that cannot fall means no learning
    module = Sam2Finetune(train_engine, sampler, parse({"learning_rate": 1e-3, "clip_length": 3}), [])
    opt = module.configure_optimizers()["optimizer"]
    encoder_before = train_engine.predictor.image_encoder.trunk.patch_embed.proj.weight.detach().clone()
    module.train()
    losses = []
    for _ in range(8):
        loss = module.training_step(clip, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    print("losses on one clip:", [round(v, 3) for v in losses])
    assert np.mean(losses[-2:]) < 0.7 * losses[0], losses
    assert torch.equal(encoder_before, train_engine.predictor.image_encoder.trunk.patch_embed.proj.weight)
    train_engine.predictor.eval()


# -- versions: loading, pinning, rolling back -------------------------------------------------------------
def test_versions_load_live_pin_and_roll_back(engine, tmp_path):
    from lib.engine import weights
    from lib.engine.errors import UnknownOption
    from lib.engine.weights import BASE
    from lib.training.versions import write_version

    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    base_value = engine.predictor.state_dict()[key].clone()
    root = weights.versions_root(str(tmp_path))
    config = {"base": weights.base_identity(engine), "trained_parts": ["mask_decoder"], "steps": 1,
              "validation": {"dice_before": 0.1, "dice_after": 0.5, "images": ["x"]}}
    manager = weights.attach(engine, str(tmp_path))
    try:
        assert manager.current == BASE
        name = write_version(root, {key: base_value + 1.0}, config, {}, {}, {"validation": config["validation"]}, [])
        session = engine.open(shared("spinalcord_t2", "image.nii.gz"), "versions-test")
        session.features.get(0)  # something in the feature cache
        assert weights.ensure_weights(engine) == name  # the newest version, picked up without a restart
        assert weights.weights_in_use(engine) == f"finetuned/{name}"
        assert torch.equal(engine.predictor.state_dict()[key], base_value + 1.0)
        assert engine.stats()["sessions"] == 0 and len(engine.feature_cache) == 0  # old-weight state dropped
        assert [v["val_dice_after"] for v in map(weights.summary, manager.compatible())] == [0.5]
        manager.pin = "none"  # --conf finetuned none: the base model, exactly
        assert weights.ensure_weights(engine) == BASE
        assert torch.equal(engine.predictor.state_dict()[key], base_value)
        manager.pin = "v9999"
        with pytest.raises(UnknownOption, match="v9999"):
            weights.ensure_weights(engine)
    finally:
        manager.pin = "none"
        weights.ensure_weights(engine)
        weights.detach(engine)
    assert torch.equal(engine.predictor.state_dict()[key], base_value)


# -- active learning follows the weights in use -------------------------------------------------------------
def test_low_confidence_ranks_scores_of_the_weights_in_use_first(tmp_path):
    from monailabel.datastore.local import LocalDatastore

    from lib.activelearning import LowestSam2Confidence, record_confidence

    for name in ("a", "b", "c"):
        shutil.copy(shared("spinalcord_t2", "image.nii.gz"), tmp_path / f"{name}.nii.gz")
    store = LocalDatastore(str(tmp_path), extensions=["*.nii.gz"], auto_reload=False)
    record_confidence(store, "a", "sam2_point", {"1": 0.1, "2": 0.2})  # least confident, but the base model's
    record_confidence(store, "b", "sam2_point", {"1": 0.7, "2": 0.8}, weights="finetuned/v0001")
    in_use = ["base"]
    strategy = LowestSam2Confidence(weights_in_use=lambda: in_use[0])
    assert strategy({"client_id": "x", "strategy": "s"}, store)["id"] == "a"
    in_use[0] = "finetuned/v0001"  # a version is in use: its own scores rank first, stale ones after
    assert strategy({"client_id": "x", "strategy": "s"}, store)["id"] == "b"


# -- through the real server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_server(tmp_path_factory):
    """A server whose local datastore has two images with final labels; versions in a temp model_dir."""
    studies = labelled_studies(tmp_path_factory.mktemp("train_studies"), {
        "spinalcord.nii.gz": ("spinalcord_t2", ".nii.gz"), "brain.nrrd": ("pyradiomics_brain", ".nrrd")})
    final = studies / "labels" / "final"
    # a label of another size, put on disk by hand (the save would refuse it): training skips it, with a warning
    shutil.copy(shared("totalseg_ct_small", "image.nii.gz"), studies / "aaa_wrongsize.nii.gz")
    shutil.copy(shared("spinalcord_t2", "label.nii.gz"), final / "aaa_wrongsize.nii.gz")
    shutil.copy(shared("spinalcord_t2", "image.nii.gz"), studies / "ccc_nothing.nii.gz")  # saved empty, explicitly
    srv = training_server(tmp_path_factory, "train", studies, TRAIN_SIZE)
    yield srv
    srv.stop()


def _assert_the_run_changed_the_trained_parts(weights_file):
    """The version's tensors are the trained parts only, and the Lightning run moved them away from the
    base (the server's random weights, rebuilt here from the same seed): a broken optimiser, freezing or
    checkpointing would write the base back and every other check would still pass."""
    from lib.engine.build import engine_from_conf

    base = engine_from_conf({"checkpoint": "sam2.1_hiera_tiny", "random_weights": "true",
                             "image_size": str(TRAIN_SIZE), "device": "cpu"}).predictor.state_dict()
    trained = torch.load(weights_file, map_location="cpu")
    assert trained and not any(k.startswith("image_encoder.") for k in trained), sorted(trained)[:5]
    assert any(k.startswith("sam_mask_decoder.") for k in trained) and any(k.startswith("memory_attention.") for k in trained)
    moved = [k for k, v in trained.items() if not torch.equal(v.float(), base[k].float())]
    assert len(moved) > len(trained) // 2, f"only {len(moved)} of {len(trained)} trained tensors changed"


def _infer_weights(server) -> str:
    resp = requests.post(f"{server.url}/infer/sam2_point", params={"image": "spinalcord", "output": "json"},
                         data={"params": json.dumps({"foreground": [[30, 27, 26]], "start_slice": 24,
                                                     "end_slice": 28})}, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.json()["weights"] if "weights" in resp.json() else resp.json()["params"]["weights"]


def _wait(server, pred, what, timeout=400):
    t0 = time.time()
    while time.time() - t0 < timeout:
        status = requests.get(f"{server.url}/train/", timeout=30).json()
        if pred(status):
            return status
        if status.get("status") in ("ERROR", "DONE") and not pred(status):
            raise AssertionError(f"training ended ({status['status']}) before {what}: {status.get('details')}")
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; server log:\n{server.tail()}")


# keep_only_if_better false: random weights may not gain in 6 steps, and this run must write a version
TRAIN = {"epochs": 1, "steps_per_epoch": 6, "clip_length": 3, "learning_rate": 1e-3, "checkpoint_every": 2,
         "validation_split": 0.5, "val_z_margin": 1, "prompt_types": "box,click", "keep_only_if_better": False,
         "correction_clicks": 1}  # one corrective click per clip keeps CI short (SAM 2.1 and the default: 7)


def _stats(server) -> dict:
    return requests.get(f"{server.url}/info/", timeout=30).json()["train_stats"]["sam2_finetune"]


def _task_end(server, since_id=None, timeout=300) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        status = requests.get(f"{server.url}/train/", timeout=30).json()
        if status["id"] != since_id and status["status"] in ("DONE", "ERROR", "STOPPED"):
            return status
        time.sleep(2)
    raise AssertionError(f"no training task ended; server log:\n{server.tail()}")


def _progress(server) -> dict:
    try:
        with open(os.path.join(server.model_dir, "finetuned", "_runs", "progress.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save_label(server, image_id, array, params=None):
    import SimpleITK as sitk

    ref = sitk.ReadImage(os.path.join(server.studies, image_id + ".nii.gz"))
    label = sitk.GetImageFromArray(array.astype(np.uint8))
    label.CopyInformation(ref)
    path = os.path.join(os.path.dirname(server.log_path), f"{image_id}-label.nii.gz")
    sitk.WriteImage(label, path)
    with open(path, "rb") as f:
        return requests.put(f"{server.url}/datastore/label", params={"image": image_id, "tag": "final"},
                            files={"label": (f"{image_id}.nii.gz", f)}, data={"params": json.dumps(params or {})},
                            timeout=60)


def test_training_input_is_checked_before_a_run_and_every_end_is_reported(train_server):
    """Issue 22: clip_length 1, POST /train/ with a body, an empty final label, labels that cannot be used,
    a run that fails, a run whose process vanished (kill -9 / restart): each gets its 4xx or final status."""
    import SimpleITK as sitk

    url = train_server.url
    one = requests.post(f"{url}/train/sam2_finetune", json={"clip_length": 1}, timeout=30)
    assert one.status_code == 422 and "clip_length=1" in one.text, one.text
    for body in ({"sam2_finetune": {"clip_length": 1}}, {"sam2_finetune": {"epochs": "x"}}, {"bogus": 1}):
        resp = requests.post(f"{url}/train/", json=body, timeout=30)  # monailabel's "train every model" route
        assert resp.status_code == 422, (body, resp.text)
    assert requests.get(f"{url}/train/?check_if_running=true", timeout=30).status_code == 404  # nothing started

    # an empty final label is refused at save, unless said to be empty on purpose
    shape = sitk.ReadImage(os.path.join(train_server.studies, "ccc_nothing.nii.gz")).GetSize()[::-1]
    empty = _save_label(train_server, "ccc_nothing", np.zeros(shape))
    assert empty.status_code == 422 and "empty" in empty.json()["detail"], empty.text
    assert not os.path.exists(os.path.join(train_server.studies, "labels", "final", "ccc_nothing.nii.gz"))
    assert _save_label(train_server, "ccc_nothing", np.zeros(shape), {"allow_empty": True}).status_code == 200

    # a run whose only image has an unusable label (another size) ends FAILED, the reason in train_stats
    assert requests.post(f"{url}/train/sam2_finetune", json={"max_images": 1}, timeout=30).status_code == 200
    assert _task_end(train_server)["status"] == "ERROR"
    stats = _stats(train_server)
    assert stats["status"] == "FAILED" and "aaa_wrongsize" in stats["reason"] and "size" in stats["reason"], stats

    # a run marked RUNNING whose process is gone (kill -9 of it or of the server, then a restart)
    progress = os.path.join(train_server.model_dir, "finetuned", "_runs", "progress.json")
    gone = subprocess.Popen(["true"])
    gone.wait()
    json.dump({"status": "RUNNING", "pid": gone.pid, "step": 3}, open(progress, "w"))
    stats = _stats(train_server)
    assert stats["status"] == "FAILED" and "ended without finishing" in stats["reason"], stats
    assert train_server.alive()


def test_no_final_label_is_a_4xx_at_once(server):
    if requests.get(f"{server.url}/datastore/?output=stats", timeout=30).json().get("completed"):
        pytest.skip("another test saved a final label on the shared server; the 409 needs a store without one")
    resp = requests.post(f"{server.url}/train/sam2_finetune", json={}, timeout=30)
    assert resp.status_code == 409 and "final label" in resp.text, resp.text
    assert requests.get(f"{server.url}/train/?check_if_running=true", timeout=30).status_code == 404


def test_train_endpoint_stop_resume_and_serve_the_version(train_server):
    url = train_server.url
    info = requests.get(f"{url}/info/", timeout=30).json()
    trainer = info["trainers"]["sam2_finetune"]
    assert trainer["config"]["clip_length"] == 8 and trainer["config"]["train_image_encoder"] is False
    assert trainer["versions"] == [] and _infer_weights(train_server) == "base"

    bad = requests.post(f"{url}/train/sam2_finetune", json={"epochs": -1, "clip_length": "x"}, timeout=30)
    assert bad.status_code == 422 and "epochs=-1" in bad.text and "clip_length='x'" in bad.text
    other_size = requests.post(f"{url}/train/sam2_finetune", json={"image_size": 256}, timeout=30)
    assert other_size.status_code == 422 and "image_size=256" in other_size.text
    assert requests.get(f"{url}/train/?check_if_running=true", timeout=30).status_code == 404

    # start, let it save a checkpoint, stop it as DELETE /train/ does (kills the process)
    started = requests.post(f"{url}/train/", json={"sam2_finetune": TRAIN}, timeout=30)  # with a body
    assert started.status_code == 200 and started.json()["sam2_finetune"]["result"]["status"], started.text
    progress = os.path.join(train_server.model_dir, "finetuned", "_runs", "progress.json")

    def step_reached(status):
        try:
            state = json.load(open(progress))
            return state.get("status") == "RUNNING" and state.get("step", 0) >= 3  # step 2's checkpoint exists
        except (OSError, ValueError):
            return False

    _wait(train_server, step_reached, "step 3")
    assert any("step 1/6" in line for line in requests.get(f"{url}/train/", timeout=30).json()["details"])
    stopped = requests.delete(f"{url}/train/", timeout=30).json()
    assert stopped["status"] == "STOPPED"
    assert train_server.alive()
    stats = _stats(train_server)  # Slicer's progress bar reads this: not RUNNING any more
    assert stats["status"] == "STOPPED" and "DELETE" in stats["reason"], stats
    assert sorted(s["image_id"] for s in stats["skipped_labels"]) == ["aaa_wrongsize", "ccc_nothing"], stats

    # the same request again resumes at the saved step and finishes
    assert requests.post(f"{url}/train/sam2_finetune", json=TRAIN, timeout=30).status_code == 200
    done = _wait(train_server, lambda s: s.get("status") == "DONE" and s["id"] != stopped["id"], "the resumed run's end")
    resumed = [line for line in done["details"] if "resumed from the checkpoint at step" in line]
    assert resumed, done["details"]
    saved_step = int(resumed[0].split("at step ")[1].split()[0])
    assert 2 <= saved_step < 6
    steps_run = [int(line.split(" step ")[1].split("/")[0]) for line in done["details"] if "/6 loss" in line]
    assert steps_run[0] == saved_step + 1 and steps_run[-1] == 6, steps_run

    # what Slicer's and OHIF's training panels read: /info/ train_stats
    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["sam2_finetune"]
    assert stats["status"] == "DONE" and stats["version"] == "v0001" and stats["reason"], stats
    trainer_info = requests.get(f"{url}/info/", timeout=30).json()["trainers"]["sam2_finetune"]
    assert trainer_info["weights_in_use"] == "finetuned/v0001"  # at once, before any request loaded it
    assert stats["step"] == stats["total_steps"] == 6 and stats["epoch"] == stats["total_epochs"] == 1
    assert stats["loss"] > 0 and 0 <= stats["val_dice"] <= 1 and stats["resumed_from_step"] == saved_step
    versions = requests.get(f"{url}/info/", timeout=30).json()["trainers"]["sam2_finetune"]["versions"]
    assert [v["name"] for v in versions] == ["v0001"]
    # /info/ names what the next request runs on before any request has loaded it
    models = requests.get(f"{url}/info/", timeout=30).json()["models"]
    assert {m["weights"] for m in models.values()} == {"finetuned/v0001"}, models
    assert versions[0]["val_dice_before"] is not None and versions[0]["val_dice_after"] is not None
    vdir = os.path.join(train_server.model_dir, "finetuned", "v0001")
    for f in ("weights.pt", "config.json", "params.json", "labels.json", "metrics.json", "curve.png"):
        assert os.path.getsize(os.path.join(vdir, f)) > 0, f
    metrics = json.load(open(os.path.join(vdir, "metrics.json")))
    assert metrics["steps"] == 6 and metrics["resumed_from_step"] == saved_step
    assert metrics["validation"]["side_by_side"], metrics
    labels = json.load(open(os.path.join(vdir, "labels.json")))["images"]
    assert sorted(p["image_id"] for p in labels) == ["brain", "spinalcord"] and all(p["label_sha256"] for p in labels)
    params = json.load(open(os.path.join(vdir, "params.json")))
    assert params["steps_per_epoch"] == 6 and params["clip_length"] == 3
    _assert_the_run_changed_the_trained_parts(os.path.join(vdir, "weights.pt"))

    # the running server's infer tasks use it now, without a restart, and say so
    assert _infer_weights(train_server) == "finetuned/v0001"


# a run without validation images (the last step is kept), checkpointing every step
TRAIN_SHORT = {"epochs": 1, "steps_per_epoch": 4, "clip_length": 2, "learning_rate": 1e-3, "checkpoint_every": 1,
               "validation_split": 0, "prompt_types": "box", "max_images": 2, "objects": "any", "correction_clicks": 1}


def test_corrupt_checkpoint_broken_version_rollback_and_export(train_server):
    """Issue 22: a corrupt resume checkpoint is moved aside (the run starts fresh and says so); a version
    that does not load is skipped and listed as broken while serving goes on; versions are listed, rolled
    back and exported over HTTP; the export is a checkpoint SAM 2's own builder loads."""
    url = train_server.url
    runs = os.path.join(train_server.model_dir, "finetuned", "_runs")
    assert requests.post(f"{url}/train/sam2_finetune", json=TRAIN_SHORT, timeout=30).status_code == 200
    first = _wait(train_server, lambda s: _progress(train_server).get("status") == "RUNNING"
                  and _progress(train_server).get("step", 0) >= 2, "step 2")
    run = _progress(train_server)["run"]
    stopped = requests.delete(f"{url}/train/", timeout=30).json()
    assert stopped["status"] == "STOPPED" and first["id"] == stopped["id"]
    last = os.path.join(runs, run, "checkpoints", "last.ckpt")
    assert os.path.exists(last)
    with open(last, "r+b") as f:
        f.truncate(os.path.getsize(last) // 3)  # a checkpoint cut off (disk full, a copy interrupted)

    assert requests.post(f"{url}/train/sam2_finetune", json=TRAIN_SHORT, timeout=30).status_code == 200
    done = _wait(train_server, lambda s: s.get("status") == "DONE" and s["id"] != stopped["id"], "the fresh run's end")
    assert any("moved aside" in line for line in done["details"]), done["details"]
    stats = _stats(train_server)
    assert stats["status"] == "DONE" and "started fresh" in stats["resume_note"] and stats["version"] == "v0002", stats
    assert not stats.get("resumed_from_step")
    assert [p for p in os.listdir(runs) if ".corrupt-" in p], os.listdir(runs)

    # the newest version's weights are cut off: serving skips it (one error), says so, and goes on
    v2 = os.path.join(train_server.model_dir, "finetuned", "v0002", "weights.pt")
    with open(v2, "r+b") as f:
        f.truncate(100)
    assert _infer_weights(train_server) == "finetuned/v0001"
    assert requests.post(f"{url}/activelearning/sam2_low_confidence", json={"client_id": "t"}, timeout=60).status_code == 200
    listing = requests.get(f"{url}/train/sam2_finetune/versions", timeout=30).json()
    assert [b["name"] for b in listing["broken_versions"]] == ["v0002"] and listing["weights_in_use"] == "finetuned/v0001"
    assert [v["name"] for v in listing["versions"] if v["broken"]] == ["v0002"]
    trainer_info = requests.get(f"{url}/info/", timeout=30).json()["trainers"]["sam2_finetune"]
    assert [b["name"] for b in trainer_info["broken_versions"]] == ["v0002"]
    assert train_server.tail(400).count("does not load, skipped") == 1, "one logged error for the broken version"

    # roll back and forward over HTTP; weights_in_use is exact at once
    rolled = requests.put(f"{url}/train/sam2_finetune/versions/in_use", params={"version": "base"}, timeout=60)
    assert rolled.status_code == 200 and rolled.json()["weights_in_use"] == "base", rolled.text
    assert requests.get(f"{url}/info/", timeout=30).json()["trainers"]["sam2_finetune"]["weights_in_use"] == "base"
    assert _infer_weights(train_server) == "base"
    broken = requests.put(f"{url}/train/sam2_finetune/versions/in_use", params={"version": "v0002"}, timeout=60)
    assert broken.status_code == 409 and "v0002" in broken.text, broken.text
    unknown = requests.put(f"{url}/train/sam2_finetune/versions/in_use", params={"version": "v0042"}, timeout=60)
    assert unknown.status_code == 400 and "v0042" in unknown.text, unknown.text
    back = requests.put(f"{url}/train/sam2_finetune/versions/in_use", params={"version": "newest"}, timeout=60)
    assert back.status_code == 200 and back.json()["weights_in_use"] == "finetuned/v0001", back.text

    # export: a standalone SAM 2 checkpoint {"model": state_dict}, loaded by SAM 2's own builder
    from sam2.build_sam import build_sam2_video_predictor

    resp = requests.get(f"{url}/train/sam2_finetune/versions/v0001/export", timeout=300)
    assert resp.status_code == 200, resp.text
    path = os.path.join(os.path.dirname(train_server.log_path), "exported.pt")
    open(path, "wb").write(resp.content)
    predictor = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=path, device="cpu")
    version = torch.load(os.path.join(train_server.model_dir, "finetuned", "v0001", "weights.pt"), map_location="cpu")
    state = predictor.state_dict()
    assert all(torch.equal(state[k], v) for k, v in version.items())
    assert requests.get(f"{url}/train/sam2_finetune/versions/v0002/export", timeout=60).status_code == 409
