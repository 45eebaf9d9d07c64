"""The app's local datastore in-process: bounded label history, atomic files, partial files removed."""

from __future__ import annotations

import json
import os

import pytest
from hostile_support import write_label_like, write_volume

from lib.datastore.history import Sam2LocalDatastore
from lib.engine.errors import EngineInputError


def test_history_is_bounded_and_every_version_complete(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    image = write_volume(studies / "a.nii.gz")
    (studies / "labels" / "final").mkdir(parents=True)
    (studies / "labels" / "final" / "a.nii.gz.part-deadbeef").write_bytes(b"half")  # left by a crash
    store = Sam2LocalDatastore(str(studies), auto_reload=False, history=2)
    assert not list(studies.rglob("*.part-*"))
    labels = [write_label_like(image, tmp_path / f"l{v}.nii.gz", value=v) for v in range(1, 6)]
    for path in labels:
        store.save_label("a", path, "final", {})
    kept = sorted(os.listdir(studies / ".replaced_labels" / "final"))
    assert len(kept) == 2
    info = store.get_label_info("a", "final")
    assert info["replaces"]["file"].endswith(kept[-1]) or os.path.basename(info["replaces"]["file"]) in kept
    assert open(store.get_label_uri("a", "final"), "rb").read() == open(labels[-1], "rb").read()
    json.loads((studies / "datastore_v2.json").read_text())
    with pytest.raises(EngineInputError):
        store.save_label("a", labels[0], "../x", {})
    with pytest.raises(EngineInputError):
        store.get_image_uri("../a")
