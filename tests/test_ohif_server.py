"""Server side of the OHIF loop, over HTTP against the real server (session fixture, local datastore).

OHIF's MONAI Label panel (monailabel 0.8.5's bundle) sends clicks only, shows one line of /info/ (the
app's name), and reads its configuration from /ohif/app-config.js. What it gets:
* a box from two foreground clicks (its rectangle tool is a measurement the panel never reads): sam2_box
  without a roi reads them as the box's corners, the same answer as Slicer's roi;
* /info/ asked from its page: the name says which weights are served (here: RANDOM WEIGHTS), and
  sam2_propagate (needs a mask file OHIF cannot send; it answered every Run with 400) is not offered;
* the app's own app-config.js, whose data source stores through the app.
"""

from __future__ import annotations

import json

import numpy as np
import requests
import SimpleITK as sitk


def _label(response) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(_write(response.content)))


def _write(data: bytes) -> str:
    import tempfile

    path = tempfile.NamedTemporaryFile(suffix=".nrrd", delete=False).name
    open(path, "wb").write(data)
    return path


def _infer(server, model, params):
    base = {"label": "cord", "start_slice": 24, "end_slice": 28, "result_extension": ".nrrd", "result_dtype": "uint8"}
    return requests.post(f"{server.url}/infer/{model}", params={"image": "spinalcord_t2", "output": "image"},
                         files={"params": (None, json.dumps({**base, **params}))}, timeout=300)


def test_two_foreground_clicks_are_the_corners_of_a_box(server):
    """What OHIF can send to sam2_box: the same mask as the roi Slicer would send for that box."""
    corners = _infer(server, "sam2_box", {"foreground": [[22, 18, 26], [38, 36, 26]], "client_id": "ohif-box-a"})
    assert corners.status_code == 200, corners.text
    roi = _infer(server, "sam2_box", {"roi": [38, 22, 36, 18, 26, 26], "client_id": "ohif-box-b"})
    assert roi.status_code == 200, roi.text
    a, b = _label(corners), _label(roi)
    assert a.shape == b.shape and np.array_equal(a, b), "two corner clicks must give the roi's answer"
    print(f"box from corners: {int(a.sum())} voxels")
    # and it is a box prompt, not two clicks: sam2_point on the same clicks answers differently
    clicks = _infer(server, "sam2_point", {"foreground": [[22, 18, 26], [38, 36, 26]], "client_id": "ohif-box-d"})
    assert clicks.status_code == 200 and not np.array_equal(_label(clicks), a)
    # one click is not a box: the 400 says what sam2_box needs, both ways of giving it
    one = _infer(server, "sam2_box", {"foreground": [[22, 18, 26]], "client_id": "ohif-box-c"})
    assert one.status_code == 400 and "two foreground clicks" in one.json()["detail"], one.text


def test_info_for_ohif_names_the_weights_and_offers_only_what_ohif_can_send(server):
    plain = requests.get(f"{server.url}/info/", timeout=30).json()
    assert plain["name"] == "sam2-3d" and "sam2_propagate" in plain["models"]  # Slicer, scripts: unchanged
    ohif = requests.get(f"{server.url}/info/", headers={"Referer": f"{server.url}/ohif/monai-label?StudyInstanceUIDs=1.2"},
                        timeout=30).json()
    assert sorted(ohif["models"]) == ["sam2_2d", "sam2_box", "sam2_point"]
    assert ohif["name"].startswith("sam2-3d: sam2.1_hiera_tiny") and "RANDOM WEIGHTS" in ohif["name"], ohif["name"]
    assert ohif["labels"] == plain["labels"] and ohif["datastore"] == plain["datastore"]


def test_ohif_reads_the_apps_config_with_a_store_target(server):
    r = requests.get(f"{server.url}/ohif/app-config.js", timeout=30)
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert "stowRoot: '/proxy/dicom/stow'" in r.text and "wadoRoot: '/proxy/dicom/wado'" in r.text
    assert "dicomUploadEnabled: true" in r.text and "supportsReject: false" in r.text  # upload: the way to store a SEG


def test_ohif_loads_the_apps_extension_as_a_module(server):
    """app-config.js names the extension; the server hands it out as JavaScript, as an ES module import needs."""
    config = requests.get(f"{server.url}/ohif/app-config.js", timeout=30).text
    assert "extensions: ['/ohif/sam2-3d/extension.mjs']" in config
    r = requests.get(f"{server.url}/ohif/sam2-3d/extension.mjs", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript"), r.headers
    assert "export default" in r.text and "sam2SaveLabel" in r.text
    # nothing else of the app's folder is reachable through that path
    assert requests.get(f"{server.url}/ohif/sam2-3d/app-config.js", timeout=30).status_code == 404
