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
import time

import numpy as np
import pytest
import requests
import torch

from conftest import Server, shared

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
def test_clips_start_on_the_object_with_the_evaluations_prompts():
    from lib.engine.intensity import IntensityPreset
    from lib.evaluation import prompts as P
    from lib.training import data as D

    pair = {"image_id": "sc", "image": shared("spinalcord_t2", "image.nii.gz"),
            "label": shared("spinalcord_t2", "label.nii.gz")}
    vol = D.load_volume(pair, IntensityPreset("auto"), "each")
    sampler = D.ClipSampler([vol], 8, ("mask", "click", "box"), seed=3)
    kinds = set()
    for n in range(12):
        clip = sampler.clip(n)
        again = sampler.clip(n)  # clip n depends only on (seed, n): a resumed run draws the same clips
        assert (again.slices, again.object, again.prompt["kind"]) == (clip.slices, clip.object, clip.prompt["kind"])
        assert len(clip.slices) == 8 and abs(np.diff(clip.slices)).tolist() == [1] * 7
        gt0 = vol.objects[clip.object][clip.slices[0]]
        assert gt0.any(), "a clip starts on a slice holding the object"
        kinds.add(clip.prompt["kind"])
        if clip.prompt["kind"] == "box":
            assert tuple(clip.prompt["box"]) == P.bounding_box(gt0)
        if clip.prompt["kind"] == "click":
            assert tuple(clip.prompt["points"][0]) == P.deepest_point(gt0)
    assert kinds == {"mask", "click", "box"}


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
    sampler.clip = lambda n: clip  # the same clip every step: a loss that cannot fall means no learning
    module = Sam2Finetune(train_engine, sampler, parse({"learning_rate": 1e-3, "clip_length": 3}), [])
    opt = module.configure_optimizers()["optimizer"]
    encoder_before = train_engine.predictor.image_encoder.trunk.patch_embed.proj.weight.detach().clone()
    module.train()
    losses = []
    for _ in range(8):
        loss = module.training_step(None, 0)
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
        weights._MANAGERS.pop(engine, None)
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
    studies = tmp_path_factory.mktemp("train_studies")
    final = studies / "labels" / "final"
    final.mkdir(parents=True)
    for name, folder, ext in (("spinalcord", "spinalcord_t2", ".nii.gz"), ("brain", "pyradiomics_brain", ".nrrd")):
        shutil.copy(shared(folder, "image" + ext), studies / (name + ext))
        shutil.copy(shared(folder, "label" + ext), final / (name + ext))
    model_dir = tmp_path_factory.mktemp("model")
    srv = Server(str(studies), str(tmp_path_factory.mktemp("train_server")),
                 conf={"image_size": str(TRAIN_SIZE), "model_dir": str(model_dir)})
    srv.model_dir = str(model_dir)
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


TRAIN = {"epochs": 1, "steps_per_epoch": 6, "clip_length": 3, "learning_rate": 1e-3, "checkpoint_every": 2,
         "validation_split": 0.5, "val_z_margin": 1, "prompt_types": "box,click"}


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
    assert requests.post(f"{url}/train/sam2_finetune", json=TRAIN, timeout=30).status_code == 200
    progress = os.path.join(train_server.model_dir, "finetuned", "_runs", "progress.json")

    def step_reached(status):
        try:
            return json.load(open(progress)).get("step", 0) >= 3  # the checkpoint of step 2 exists
        except (OSError, ValueError):
            return False

    _wait(train_server, step_reached, "step 3")
    assert any("step 1/6" in line for line in requests.get(f"{url}/train/", timeout=30).json()["details"])
    stopped = requests.delete(f"{url}/train/", timeout=30).json()
    assert stopped["status"] == "STOPPED"
    assert train_server.alive()

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
    assert stats["status"] == "DONE" and stats["version"] == "v0001", stats
    assert stats["step"] == stats["total_steps"] == 6 and stats["epoch"] == stats["total_epochs"] == 1
    assert stats["loss"] > 0 and 0 <= stats["val_dice"] <= 1 and stats["resumed_from_step"] == saved_step
    versions = requests.get(f"{url}/info/", timeout=30).json()["trainers"]["sam2_finetune"]["versions"]
    assert [v["name"] for v in versions] == ["v0001"]
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
