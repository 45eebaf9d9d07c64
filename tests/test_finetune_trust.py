"""Fine-tuning a user can trust (issue 22): SAM 2's train/eval state, the best version kept, no version
when nothing was gained, checkpoints of the trained parameters only, a standalone SAM 2 checkpoint.

In-process Lightning runs on SAM 2.1 tiny with RANDOM WEIGHTS at 128 px (no checkpoint can be downloaded
here), a few steps each: they check what a run does, not accuracy. The HTTP side (status, broken
versions, rollback, export, input checks) is in tests/test_finetune.py, on its training server.
"""

from __future__ import annotations

import csv
import json
import os

import lightning as L
import pytest
import torch
from conftest import shared

TRAIN_SIZE = 128

@pytest.fixture
def pairs():
    """Two labelled images (read at test time: without ../shared these tests skip, saying why)."""
    return [
        {"image_id": "spinalcord", "image": shared("spinalcord_t2", "image.nii.gz"),
         "label": shared("spinalcord_t2", "label.nii.gz"), "split": "train"},
        {"image_id": "brain", "image": shared("pyradiomics_brain", "image.nrrd"),
         "label": shared("pyradiomics_brain", "label.nrrd"), "split": "validation"},
    ]


@pytest.fixture(scope="module")
def train_engine():
    from lib.engine.build import engine_from_conf

    return engine_from_conf({"checkpoint": "sam2.1_hiera_tiny", "random_weights": "true",
                             "image_size": str(TRAIN_SIZE), "device": "cpu"})


class ModeAndCheckpointProbe(L.Callback):
    """Records, at every training batch, which modules are in train mode; and the keys of each Lightning
    checkpoint written during the run (they are removed when the run ends)."""

    def __init__(self):
        self.modes = []
        self.checkpoint_keys = []
        self.checkpoint_bytes = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        model = pl_module.model
        self.modes.append({
            "trained_in_train_mode": all(m.training for part in (model.sam_mask_decoder, model.sam_prompt_encoder,
                                                                   model.memory_attention, model.memory_encoder)
                                         for m in part.modules()),
            "dropout_in_train_mode": [m.training for m in model.modules() if isinstance(m, torch.nn.Dropout)],
            "encoder_in_eval_mode": not any(m.training for m in model.image_encoder.modules()),
        })

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for cb in trainer.checkpoint_callbacks:
            last = os.path.join(cb.dirpath, "last.ckpt")
            if os.path.exists(last):
                ckpt = torch.load(last, map_location="cpu", weights_only=False)
                self.checkpoint_keys.append(sorted(ckpt["state_dict"]))
                self.checkpoint_bytes.append(os.path.getsize(last))


def _params(**kw):
    from lib.training.params import parse

    return parse({"epochs": 2, "steps_per_epoch": 1, "clip_length": 2, "val_z_margin": 0, "checkpoint_every": 1,
                  "prompt_types": "box,click", "objects": "any", "correction_clicks": 1, **kw})


def test_fit_trains_in_train_mode_keeps_the_best_and_checkpoints_only_trained_parameters(train_engine, pairs, tmp_path):
    from lib.training.module import trainable_names
    from lib.training.run import read_progress, train

    probe = ModeAndCheckpointProbe()
    result = train(train_engine, None, _params(learning_rate=1e-3, keep_only_if_better=False), str(tmp_path),
                   pairs=[dict(p) for p in pairs], callbacks=[probe])

    # SAM 2's training state during fit: trained parts (and their dropout) train, the frozen encoder is eval
    assert len(probe.modes) == 2, probe.modes
    for mode in probe.modes:
        assert mode["trained_in_train_mode"] and mode["encoder_in_eval_mode"], mode
        assert mode["dropout_in_train_mode"] and all(mode["dropout_in_train_mode"]), mode
    assert not train_engine.predictor.training  # back to eval for serving

    # checkpoints hold the trained parameters only (no frozen image encoder)
    trained = {f"model.{n}" for n in trainable_names(train_engine.predictor, _params().parts(), False)}
    assert probe.checkpoint_keys and all(set(keys) == trained for keys in probe.checkpoint_keys)
    assert all(not k.startswith("model.image_encoder.") for k in probe.checkpoint_keys[0])

    # the version kept is the best validation Dice (ties: the later), the curve saved by Lightning's CSVLogger
    vdir = result["path"]
    history = [json.loads(line) for line in open(os.path.join(vdir, "..", "_runs", read_progress(str(tmp_path))["run"],
                                                              "history.jsonl"))]
    vals = [(h["val_dice"], h["step"]) for h in history if h.get("val_dice") is not None]
    assert len(vals) == 2, history
    best_dice = max(d for d, _ in vals)
    best_step = max(s for d, s in vals if d == best_dice)
    validation = result["validation"]
    assert validation["kept_step"] == best_step and validation["dice_after"] == best_dice, (vals, validation)
    rows = list(csv.DictReader(open(os.path.join(vdir, "curve.csv"))))
    assert [float(r["val_dice"]) for r in rows if r.get("val_dice")] == pytest.approx([d for d, _ in vals], abs=1e-6)
    assert sum(1 for r in rows if r.get("train_loss")) == 2
    stats = read_progress(str(tmp_path))
    assert stats["status"] == "DONE" and stats["version"] == os.path.basename(vdir) and stats["reason"], stats


def test_a_run_that_gains_nothing_writes_no_version_and_says_so(train_engine, pairs, tmp_path):
    """A learning rate of 1e-9 cannot change a prediction: validation Dice equals the starting weights',
    which is not better, so no version is written and the engine keeps its weights exactly."""
    from lib.engine.weights import list_versions, versions_root
    from lib.training.run import read_progress, train

    before = {k: v.clone() for k, v in train_engine.predictor.state_dict().items()}
    result = train(train_engine, None, _params(learning_rate=1e-9, epochs=1), str(tmp_path),
                   pairs=[dict(p) for p in pairs])
    assert result["version"] is None and "not better than the starting weights" in result["reason"], result
    assert list_versions(versions_root(str(tmp_path))) == []
    stats = read_progress(str(tmp_path))
    assert stats["status"] == "DONE" and stats["version"] is None and "no version written" in stats["reason"]
    after = train_engine.predictor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_server_starting_on_a_broken_newest_version_serves_the_one_before(engine, tmp_path, caplog):
    """What a restart does with a truncated newest ``weights.pt``: one logged error, the version listed as
    broken, the previous version served (before: every request and the restart failed)."""
    from lib.engine import weights
    from lib.training.versions import write_version

    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    base_value = engine.predictor.state_dict()[key].clone()
    root = weights.versions_root(str(tmp_path))
    config = {"base": weights.base_identity(engine), "trained_parts": ["mask_decoder"], "steps": 1}
    good = write_version(root, {key: base_value + 1.0}, config, {}, {}, {}, [])
    bad = write_version(root, {key: base_value + 2.0}, config, {}, {}, {}, [])
    with open(os.path.join(root, bad, "weights.pt"), "r+b") as f:
        f.truncate(64)
    try:
        with caplog.at_level("ERROR", logger="lib.engine.weights"):
            manager = weights.attach(engine, str(tmp_path))
            assert weights.ensure_weights(engine) == good  # and again: no second error
        assert manager.current == good and torch.equal(engine.predictor.state_dict()[key], base_value + 1.0)
        assert [b["name"] for b in manager.broken_list()] == [bad]
        assert len([r for r in caplog.records if bad in r.getMessage()]) == 1
        with pytest.raises(weights.BrokenVersion):
            manager.set_pin(bad)
        assert manager.current == good
    finally:
        manager.pin = "none"
        weights.ensure_weights(engine)
        weights.detach(engine)
    assert torch.equal(engine.predictor.state_dict()[key], base_value)
