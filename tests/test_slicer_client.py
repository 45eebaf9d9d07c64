"""3D Slicer's code path: monailabel's own ``MONAILabelClient`` (the module Slicer's MONAI Label extension
uses) against the real server, sending exactly the parameters Slicer sends (docs/clients.md).

Server: real ``monailabel start_server`` (SAM 2.1 tiny, RANDOM WEIGHTS, 256 px) on its own copy of two
volumes. The Slicer GUI itself cannot run here (no Slicer build for this machine); its client module does.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import Server, same_grid, shared
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException


@pytest.fixture(scope="module")
def slicer_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slicer_studies")
    shutil.copy(shared("totalseg_ct_small", "image.nii.gz"), folder / "totalseg_ct_small.nii.gz")
    shutil.copy(shared("pyradiomics_brain", "image.nrrd"), folder / "pyradiomics_brain.nrrd")
    srv = Server(str(folder), str(tmp_path_factory.mktemp("slicer_server")))
    yield srv
    srv.stop()


def _slicer_params(info_model: dict, **prompt) -> dict:
    """What Slicer adds to every infer: each advertised config value (a list: its first element) + result format."""
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in info_model.get("config", {}).items()}
    params.update({"result_extension": ".nrrd", "result_dtype": "uint8", "client_id": "slicer-user"})
    params.update(prompt)
    return params


def _same_grid(result_file: str, image: sitk.Image) -> np.ndarray:
    out = sitk.ReadImage(result_file)  # what Slicer does with the response file
    same_grid(out, image)
    arr = sitk.GetArrayFromImage(out)
    assert set(np.unique(arr)) <= {0, 1}
    return arr


def test_slicer_local_volume_click_box_switch_save_next(slicer_server, tmp_path):
    client = MONAILabelClient(slicer_server.url, tmpdir=str(tmp_path), client_id="slicer-user")
    info = client.info()
    assert not client.auth_enabled()
    deepgrow = {name: m for name, m in info["models"].items() if m["type"] == "deepgrow"}
    assert {"sam2_point", "sam2_box", "sam2_propagate", "sam2_2d"} <= set(deepgrow), "Slicer shows only deepgrow/deepedit"
    assert isinstance(info["labels"], list) and info["labels"] and "config" not in info

    # A volume loaded locally in Slicer (here: spinal cord T2, permuted axes) goes through a session.
    local = str(tmp_path / "t2.nii.gz")
    shutil.copy(shared("spinalcord_t2", "image.nii.gz"), local)
    image = sitk.ReadImage(local)
    session = client.create_session(local, {"client_id": "slicer-user"})
    session_id = session["session_id"]
    node = "t2"  # Slicer sends the volume node's name as image id
    ni, nj, nk = image.GetSize()
    k = nk // 2

    # 1. clicks (sam2_point): voxel indices [i, j, k], propagated over a few slices.
    params = _slicer_params(deepgrow["sam2_point"], label="cord", foreground=[[ni // 2, nj // 2, k]],
                            background=[[2, 2, k]], reset_state=False, start_slice=k - 1, end_slice=k + 1)
    result_file, result = client.infer("sam2_point", node, params, session_id=session_id)
    arr = _same_grid(result_file, image)
    assert result["label_names"] == {"cord": 1}
    assert sorted(int(s) for s in result["slice_scores"]) == [k - 1, k, k + 1]
    assert not arr[: k - 1].any() and not arr[k + 2:].any(), "nothing outside start_slice..end_slice"

    # 2. the ROI box: Slicer interleaves the two corners' IJK, pairs NOT sorted (LPS data reverses i/j).
    roi = [ni - 10, 10, nj - 10, 10, k - 1, k + 1]
    params = _slicer_params(deepgrow["sam2_box"], label="cord", roi=roi, foreground=[], background=[],
                            reset_state=False)
    result_file, result = client.infer("sam2_box", node, params, session_id=session_id)
    arr = _same_grid(result_file, image)
    assert result["slice_range"] == [k - 1, k + 1], "the ROI's k-range bounds propagation"
    assert k in result["prompted_slices"], "the box is put on the ROI's middle slice"
    assert not arr[: k - 1].any() and not arr[k + 2:].any()

    # 3. switching segment in Slicer sends reset_state: the new label starts from its own prompts only.
    params = _slicer_params(deepgrow["sam2_point"], label="csf", foreground=[[ni // 2 + 3, nj // 2, k]],
                            background=[], reset_state=True, start_slice=k, end_slice=k)
    result_file, result = client.infer("sam2_point", node, params, session_id=session_id)
    _same_grid(result_file, image)
    assert result["label_names"] == {"csf": 1} and result["prompted_slices"] == [k]

    # 4. an unknown session: a clear 4xx, and the server keeps serving.
    with pytest.raises(MONAILabelClientException) as err:
        client.infer("sam2_point", node, params, session_id="no-such-session")
    # the client does not keep the status code; it is in the message Slicer shows
    assert "Status: 404" in err.value.msg and "session" in err.value.msg, err.value.msg
    assert slicer_server.alive()

    # 5. "Submit label": the local volume is uploaded, its label saved as final; "Next sample" moves on.
    client.upload_image(local, image_id=node)
    label = str(tmp_path / "t2_label.nii.gz")
    shutil.copy(result_file, label) if result_file.endswith(".nii.gz") else sitk.WriteImage(sitk.ReadImage(result_file), label)
    saved = client.save_label(node, label, tag="final",
                              params={"label_info": [{"name": "csf", "idx": 1}], "client_id": "slicer-user"})
    assert saved["image"] == node and saved["label"]
    ds = client.datastore()
    assert "final" in ds["objects"][node]["labels"]
    sample = client.next_sample("first", {"client_id": "slicer-user"})
    assert sample["id"] == "pyradiomics_brain", "the labelled volume is done; next is the first unlabelled"
    # no server path in the answer (issue 16): Slicer then downloads the image by id, as from a remote server
    assert "path" not in sample
    import requests

    download = requests.get(slicer_server.url + "/datastore/image", params={"image": sample["id"]}, timeout=60)
    assert download.status_code == 200
    local_copy = tmp_path / sample["name"]
    local_copy.write_bytes(download.content)

    # The sample is then opened by id (no session): a click on it works the same way.
    brain = sitk.ReadImage(str(local_copy))
    bi, bj, bk = brain.GetSize()
    params = _slicer_params(deepgrow["sam2_2d"], label="tumour", foreground=[[bi // 2, bj // 2, bk // 2]],
                            background=[], slice=bk // 2)
    result_file, result = client.infer("sam2_2d", sample["id"], params)
    arr = _same_grid(result_file, brain)
    assert not np.delete(arr, bk // 2, axis=0).any(), "a 2D model answers on its slice only"


def test_blank_uid_dicom_series_as_a_session_is_served(slicer_server):
    """The published CT files have blank Study/Series/SOP UIDs: a PACS refuses them, but inference needs no
    UID, so a session made of them (a DICOM folder) is read and answered on its own grid, not a crash."""
    import requests

    folder = shared("totalseg_ct_dicom", "dicom")
    names = sorted(os.listdir(folder))
    files = [("files", (n, open(os.path.join(folder, n), "rb").read())) for n in names]
    r = requests.put(slicer_server.url + "/session/", files=files, data={"client_id": "slicer-user"}, timeout=120)
    assert r.status_code == 200, r.text
    session_id = r.json()["session_id"]
    params = {"label": "object", "foreground": [[256, 256, 10]], "background": [], "slice": 10,
              "result_extension": ".nrrd", "client_id": "slicer-user"}
    import json

    r = requests.post(f"{slicer_server.url}/infer/sam2_2d", params={"image": "ct", "session_id": session_id,
                      "output": "image"}, files={"params": (None, json.dumps(params))}, timeout=300)
    assert r.status_code == 200, r.text
    head = r.content[: r.content.index(b"\n\n")].decode()
    assert "sizes: 512 512 20" in head
    assert slicer_server.alive()
