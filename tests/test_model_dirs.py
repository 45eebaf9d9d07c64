"""Fine-tuned versions belong to their datastore: two servers from one checkout never share them.

Before, every server of a checkout kept versions in ``apps/sam2_3d/model`` (a version trained on the PACS
server was served by the local-folder server and became its next training run's start)."""

from __future__ import annotations

import json
import os

import pytest
import requests
import torch
from conftest import APP_DIR, Server


def test_default_model_dirs_are_per_datastore(tmp_path):
    from lib.configs.sam2_3d import default_model_dir

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert default_model_dir(APP_DIR, a) == os.path.join(a, ".sam2-3d", "model")
    assert default_model_dir(APP_DIR, a) != default_model_dir(APP_DIR, b)
    pacs = default_model_dir(APP_DIR, "http://127.0.0.1:8042/dicom-web")
    other_pacs = default_model_dir(APP_DIR, "http://127.0.0.1:8043/dicom-web")
    assert pacs.startswith(os.path.join(APP_DIR, "model", "dicomweb-127.0.0.1-8042-")) and pacs != other_pacs
    assert default_model_dir(APP_DIR, "http://127.0.0.1:8042/dicom-web/") == pacs


def _versions(url: str) -> list[str]:
    info = requests.get(url + "/info/", timeout=30).json()
    return [v["name"] for v in info["trainers"]["sam2_finetune"]["versions"]]


@pytest.mark.server
def test_two_servers_on_two_datastores_do_not_see_each_others_versions(server, tmp_path):
    other_studies = tmp_path / "other-studies"
    other_studies.mkdir()
    other = Server(str(other_studies), str(tmp_path))
    # A complete version in the shared server's datastore. Its base is another checkpoint, so the shared
    # server lists it but never loads it into the model the other tests use.
    version = os.path.join(server.studies, ".sam2-3d", "model", "finetuned", "v0001")
    os.makedirs(version)
    try:
        torch.save({}, os.path.join(version, "weights.pt"))
        with open(os.path.join(version, "config.json"), "w") as f:
            json.dump({"base": {"checkpoint": "sam2.1_hiera_small", "random_weights": True}}, f)
        assert _versions(server.url) == ["v0001"]
        assert _versions(other.url) == []
        assert not os.path.exists(os.path.join(APP_DIR, "model", "finetuned", "v0001"))
    finally:
        other.stop()
        import shutil

        shutil.rmtree(os.path.join(server.studies, ".sam2-3d"))
