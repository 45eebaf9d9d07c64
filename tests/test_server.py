"""The real monailabel server running the app, driven with the requests Slicer and OHIF really send.

One server for the whole module (``server`` fixture in conftest): SAM 2.1 tiny, RANDOM WEIGHTS, 256 px.
Its masks are meaningless, so these tests check protocol, geometry, ranges, sessions and errors, not
accuracy. Request formats follow docs/clients.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import nrrd
import numpy as np
import pytest
import requests
import SimpleITK as sitk
from conftest import APP_DIR, STUDY_FILES, TEST_IMAGE_SIZE, same_grid, shared
from requests_toolbelt.multipart.decoder import MultipartDecoder

IMAGE = "spinalcord_t2"  # 60 x 55 x 52, permuted axes: small and non-trivial
SIZE = (60, 55, 52)


def infer(server, model, image, params=None, output=None, files=None, session_id=None, timeout=600):
    query = {"image": image}
    if output:
        query["output"] = output
    if session_id:
        query["session_id"] = session_id
    return requests.post(
        f"{server.url}/infer/{model}", params=query, data={"params": json.dumps(params or {})},
        files=files, timeout=timeout,
    )


def multipart(resp: requests.Response) -> tuple[dict, str, bytes]:
    """(params, image filename, image bytes) of a default (multipart) infer answer."""
    assert resp.status_code == 200, resp.text
    parts = {}
    for part in MultipartDecoder.from_response(resp).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        name = disposition.split('name="')[1].split('"')[0]
        filename = disposition.split('filename="')[1].split('"')[0] if "filename=" in disposition else None
        parts[name] = (filename, part.content)
    assert "params" in parts and "image" in parts, "an interactive answer must carry params AND a file"
    return json.loads(parts["params"][1]), parts["image"][0], parts["image"][1]


def read_result(filename: str, content: bytes, tmp_path) -> sitk.Image:
    path = tmp_path / os.path.basename(filename)
    path.write_bytes(content)
    return sitk.ReadImage(str(path))


def slicer_params(**kw) -> dict:
    """What Slicer's MONAI Label module sends for a deepgrow-type model (clients.md)."""
    params = {
        "label": "spinal cord", "foreground": [], "background": [], "reset_state": False,
        "device": "cpu", "result_extension": ".nrrd", "result_dtype": "uint8", "client_id": "slicer-user",
        "preset": "auto", "auto_stop": 3, "start_slice": -1, "end_slice": -1,
    }
    params.update(kw)
    return params


# -- /info/ -------------------------------------------------------------------------------------
def test_info_lists_models_the_clients_show(server):
    info = requests.get(server.url + "/info/", timeout=30).json()
    assert "config" not in info  # Slicer would ask to "upgrade the server"
    assert isinstance(info["labels"], list) and info["labels"]
    models = info["models"]
    assert {"sam2_point", "sam2_box", "sam2_propagate", "sam2_2d"} <= set(models)
    for name, model in models.items():
        assert model["type"] == "deepgrow", name  # the type Slicer and OHIF show point tools for
        assert model["labels"] and isinstance(model["labels"], list)
        assert model["random_weights"] is True and "RANDOM WEIGHTS" in model["description"]
        assert model["compiled"] is None  # a CPU server never compiles (tests/test_compile.py)
        assert model["compiled_note"].startswith("not compiled: eager PyTorch")
        # what is served: the weights the next request runs on, at which size, where, in which precision
        assert model["checkpoint"] == "sam2.1_hiera_tiny" and model["weights"] == "base", model
        assert model["image_size"] == TEST_IMAGE_SIZE and model["device"] == "cpu" and model["dtype"] == "float32"
    assert models["sam2_2d"]["dimension"] == 2 and models["sam2_point"]["dimension"] == 3


# -- Slicer and OHIF point requests --------------------------------------------------------------
def test_slicer_point_request_propagates_both_ways(server, tmp_path):
    k = 26
    params = slicer_params(foreground=[[30, 27, k]], background=[[10, 10, k]], auto_stop=0,
                           start_slice=k - 4, end_slice=k + 3)
    result, filename, content = multipart(infer(server, "sam2_point", IMAGE, params))
    assert filename.endswith(".nrrd")
    label = read_result(filename, content, tmp_path)
    same_grid(label, sitk.ReadImage(os.path.join(server.studies, IMAGE + ".nii.gz")))
    assert label.GetPixelID() == sitk.sitkUInt8
    array = sitk.GetArrayFromImage(label)
    assert set(np.unique(array)) <= {0, 1}
    assert result["prompted_slices"] == [k]
    assert result["slice_range"] == [k - 4, k + 3] and result["processed_range"] == [k - 4, k + 3]
    assert sorted(map(int, result["slice_scores"])) == list(range(k - 4, k + 4))  # both directions
    assert all(0.0 <= s <= 1.0 for s in result["slice_scores"].values())
    outside = np.ones(array.shape[0], bool)
    outside[k - 4 : k + 4] = False
    assert not array[outside].any()  # nothing outside start_slice..end_slice
    assert result["label_names"] == {"spinal cord": 1}


def test_ohif_request_gets_raw_uint8_nrrd(server, tmp_path):
    k = 20
    params = {"foreground": [[28, 30, k]], "background": [], "start_slice": k - 1, "end_slice": k + 1,
              "result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False,
              "restore_label_idx": False}
    resp = infer(server, "sam2_point", IMAGE, params, output="image")
    assert resp.status_code == 200, resp.text
    path = tmp_path / "ohif.nrrd"
    path.write_bytes(resp.content)
    data, header = nrrd.read(str(path))
    assert header["type"] in ("uint8", "unsigned char") and header["encoding"] == "raw"
    assert tuple(header["sizes"]) == SIZE
    # OHIF copies the raw bytes 1:1 into its labelmap: the body must end with exactly one byte per voxel
    raw = resp.content[-int(np.prod(SIZE)):]
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint8).reshape(SIZE[::-1]).transpose(2, 1, 0), data)


@pytest.mark.parametrize("name", list(STUDY_FILES))
def test_result_has_the_input_geometry(server, tmp_path, name):
    image_id = name.split(".")[0]
    original = sitk.ReadImage(os.path.join(server.studies, name))
    i, j, k = (s // 2 for s in original.GetSize())
    for extension in (".nii.gz", ".nrrd"):
        params = slicer_params(foreground=[[i, j, k]], start_slice=k - 1, end_slice=k + 1,
                               result_extension=extension, client_id=f"geo-{extension}")
        _, filename, content = multipart(infer(server, "sam2_point", image_id, params))
        assert filename.endswith(extension)
        same_grid(read_result(filename, content, tmp_path), original)


def test_auto_stop_ends_where_the_object_vanished(server):
    params = slicer_params(foreground=[[30, 27, 26]], auto_stop=1, client_id="autostop")
    result, _, _ = multipart(infer(server, "sam2_point", IMAGE, params))
    scores = {int(k): v for k, v in result["slice_scores"].items()}
    lo, hi = result["processed_range"]
    assert sorted(scores) == list(range(lo, hi + 1))
    stopped = result["stopped_early"]
    for direction, end in (("forward", hi), ("reverse", lo)):
        if stopped[direction] is not None:
            assert stopped[direction] == end and scores[end] < 0.5
        else:  # it ran to the volume's end, never seeing an absent slice past the prompt
            assert end == (SIZE[2] - 1 if direction == "forward" else 0)


def test_box_prompt_on_its_middle_slice_bounds_propagation(server):
    roi = [40, 20, 35, 15, 30, 22]  # Slicer: [i_a, i_b, j_a, j_b, k_a, k_b], pairs not sorted
    result, _, _ = multipart(infer(server, "sam2_box", IMAGE, slicer_params(roi=roi, auto_stop=0, client_id="box")))
    assert result["prompted_slices"] == [26]
    assert result["processed_range"] == [22, 30]
    box_with_slice = slicer_params(roi=roi, slice=24, auto_stop=0, client_id="box2", foreground=[[30, 25, 24]])
    result, _, _ = multipart(infer(server, "sam2_box", IMAGE, box_with_slice))
    assert result["prompted_slices"] == [24]


# -- mask propagation --------------------------------------------------------------------------------
def test_uploaded_mask_comes_back_unchanged_on_its_slices(server, tmp_path):
    label_path = shared("spinalcord_t2", "label.nii.gz")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(label_path)) > 0
    nonempty = np.flatnonzero(truth.any(axis=(1, 2)))
    ks = [int(nonempty[len(nonempty) // 3]), int(nonempty[2 * len(nonempty) // 3])]
    params = {"prompt_slices": ks, "auto_stop": 0, "start_slice": ks[0] - 2, "end_slice": ks[1] + 2,
              "client_id": "mask", "result_extension": ".nii.gz"}
    with open(label_path, "rb") as f:
        resp = infer(server, "sam2_propagate", IMAGE, params, files={"label": ("label.nii.gz", f)})
    result, filename, content = multipart(resp)
    out = sitk.GetArrayFromImage(read_result(filename, content, tmp_path)).astype(bool)
    assert result["prompted_slices"] == ks
    for k in ks:
        np.testing.assert_array_equal(out[k], truth[k])
    assert result["processed_range"] == [ks[0] - 2, ks[1] + 2]


def test_mask_from_a_label_saved_in_the_datastore(server, tmp_path):
    label_path = shared("spinalcord_t2", "label.nii.gz")
    with open(label_path, "rb") as f:
        resp = requests.put(f"{server.url}/datastore/label", params={"image": IMAGE, "tag": "seed"},
                            files={"label": ("label.nii.gz", f)},
                            data={"params": json.dumps({"label_info": [{"name": "spinal cord", "idx": 1}]})})
    assert resp.status_code == 200, resp.text
    truth = sitk.GetArrayFromImage(sitk.ReadImage(label_path)) > 0
    nonempty = np.flatnonzero(truth.any(axis=(1, 2)))
    middle = int(nonempty[0] + nonempty[-1]) // 2
    params = {"label_tag": "seed", "auto_stop": 0, "start_slice": middle - 1, "end_slice": middle + 1,
              "client_id": "mask-ds"}
    result, filename, content = multipart(infer(server, "sam2_propagate", IMAGE, params))
    assert result["prompted_slices"] == [middle]  # default: the middle of the object's z-range
    out = sitk.GetArrayFromImage(read_result(filename, content, tmp_path)).astype(bool)
    np.testing.assert_array_equal(out[middle], truth[middle])


# -- 2D and sessions -----------------------------------------------------------------------------------
def test_2d_click_answers_one_slice_and_reuses_features(server, tmp_path):
    k = 15
    params = {"foreground": [[30, 27, k]], "background": [], "slice": k, "client_id": "u2d",
              "result_extension": ".nrrd"}
    first, filename, content = multipart(infer(server, "sam2_2d", IMAGE, params))
    out = sitk.GetArrayFromImage(read_result(filename, content, tmp_path))
    others = np.delete(out, k, axis=0)
    assert not others.any()
    assert first["prompted_slices"] == [k] and first["processed_range"] == [k, k]
    params["foreground"].append([33, 29, k])
    second, _, _ = multipart(infer(server, "sam2_2d", IMAGE, params))
    assert second["frames_encoded"] == 0  # the slice's image features were cached by the first click


def test_session_correction_keeps_state(server):
    k = 26
    # a preset no other test uses, so this volume's features start uncached
    base = slicer_params(foreground=[[30, 27, k]], auto_stop=0, start_slice=k - 3, end_slice=k + 6,
                         client_id="correcting", preset="volume_minmax")
    first, _, _ = multipart(infer(server, "sam2_point", IMAGE, dict(base, reset_state=True)))
    assert first["frames_encoded"] == 10
    corrected = dict(base, foreground=[[30, 27, k], [31, 27, k + 5]], background=[[5, 5, k + 5]])
    second, _, _ = multipart(infer(server, "sam2_point", IMAGE, corrected))
    assert second["prompted_slices"] == [k, k + 5]
    assert second["frames_encoded"] == 0  # no slice re-encoded: the volume's features are cached
    switched = dict(base, label="another", foreground=[[20, 20, k + 1]])
    third, _, _ = multipart(infer(server, "sam2_point", IMAGE, switched))
    assert third["prompted_slices"] == [k + 1]  # switching label starts from fresh prompts


def test_the_model_is_built_and_run_on_one_torch_thread(server):
    """lib/engine/torch_thread.py: CPU inference in another thread than the model's build ran 1.7-2.5x
    slower (libgomp throttles once several threads run torch). The server log names each line's thread."""
    multipart(infer(server, "sam2_point", IMAGE, slicer_params(foreground=[[30, 27, 25]], start_slice=24,
                                                               end_slice=26, client_id="which-thread")))
    log = open(server.log_path).read().splitlines()
    built = [line for line in log if "(lib.engine.build" in line and "SAM 2 engine:" in line]
    ran = [line for line in log if "(lib.infers.sam2_infer" in line and "changed slices" in line]
    assert built and ran
    assert all("[sam2-torch" in line for line in built + ran), [l[:120] for l in built + ran if "[sam2-torch" not in l]


def test_slicer_local_volume_through_a_session(server, tmp_path):
    src = shared("pyradiomics_brain", "image.nrrd")
    with open(src, "rb") as f:
        resp = requests.put(f"{server.url}/session/", files=[("files", ("brain.nrrd", f))],
                            data={"client_id": "slicer-user"})
    assert resp.status_code == 200, resp.text
    session_id = resp.json()["session_id"]
    params = slicer_params(foreground=[[128, 100, 12]], start_slice=11, end_slice=13)
    _, filename, content = multipart(infer(server, "sam2_point", "brain", params, session_id=session_id))
    same_grid(read_result(filename, content, tmp_path), sitk.ReadImage(src))


def test_dicom_series_through_a_session(server, tmp_path):
    folder = shared("totalseg_ct_dicom", "dicom")
    files = sorted(os.listdir(folder))
    handles = [open(os.path.join(folder, f), "rb") for f in files]
    try:
        resp = requests.put(f"{server.url}/session/", files=[("files", (f, h)) for f, h in zip(files, handles)])
    finally:
        for h in handles:
            h.close()
    assert resp.status_code == 200, resp.text
    params = slicer_params(foreground=[[256, 200, 10]], start_slice=9, end_slice=11, result_extension=".nii.gz")
    _, filename, content = multipart(infer(server, "sam2_point", "ct", params, session_id=resp.json()["session_id"]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    same_grid(read_result(filename, content, tmp_path), reader.Execute())


# -- intensity ---------------------------------------------------------------------------------------
def test_presets_and_windows_leave_the_input_untouched(server):
    path = os.path.join(server.studies, "totalseg_ct_small.nii.gz")
    before = hashlib.sha256(open(path, "rb").read()).hexdigest()
    for extra, expected in (({"preset": "lung"}, "lung"), ({"window_center": 50, "window_width": 350}, "window(50,350)"),
                            ({}, "soft_tissue")):  # auto on CT -> soft tissue
        params = dict(foreground=[[60, 50, 15]], start_slice=15, end_slice=15, client_id="presets", **extra)
        result, _, _ = multipart(infer(server, "sam2_point", "totalseg_ct_small", params))
        assert result["preset"] == expected
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == before


# -- bad input ------------------------------------------------------------------------------------------
def _upload(array: np.ndarray, tmp_path, name="bad.nii.gz") -> str:
    path = str(tmp_path / name)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=False), path)
    return path


BAD_REQUESTS = [
    ("unknown image", "sam2_point", "no-such-image", {"foreground": [[1, 1, 1]]}, 404, "unknown image"),
    ("point outside", "sam2_point", IMAGE, {"foreground": [[60, 10, 10]]}, 400, "outside the volume"),
    ("negative point", "sam2_point", IMAGE, {"foreground": [[-1, 10, 10]]}, 400, "outside the volume"),
    ("malformed point", "sam2_point", IMAGE, {"foreground": [[1, 2]]}, 400, "not a voxel index"),
    ("empty prompts", "sam2_point", IMAGE, {"foreground": [], "background": []}, 400, "no prompt"),
    ("only background", "sam2_point", IMAGE, {"background": [[5, 5, 5]]}, 400, "only background"),
    ("box outside", "sam2_box", IMAGE, {"roi": [100, 120, 5, 10, 1, 3]}, 400, "outside the volume"),
    ("no box", "sam2_box", IMAGE, {"foreground": [[5, 5, 5]]}, 400, "needs a 'roi'"),
    ("no mask", "sam2_propagate", IMAGE, {}, 400, "needs a mask"),
    ("unknown preset", "sam2_point", IMAGE, {"foreground": [[5, 5, 5]], "preset": "xray"}, 400, "unknown preset"),
    ("unknown checkpoint", "sam2_point", IMAGE, {"foreground": [[5, 5, 5]], "checkpoint": "sam3"}, 400,
     "unknown checkpoint"),
    ("other checkpoint", "sam2_point", IMAGE, {"foreground": [[5, 5, 5]], "checkpoint": "sam2.1_hiera_large"}, 400,
     "restart it with --conf checkpoint"),
    ("bad extension", "sam2_point", IMAGE, {"foreground": [[5, 5, 5]], "result_extension": ".exe"}, 400,
     "unsupported result_extension"),
    ("slice range", "sam2_point", IMAGE, {"foreground": [[5, 5, 5]], "start_slice": 10, "end_slice": 2}, 400,
     "after end_slice"),
    ("prompt outside range", "sam2_point", IMAGE, {"foreground": [[5, 5, 5]], "start_slice": 10}, 400,
     "outside the slice range"),
]


@pytest.mark.parametrize("what,model,image,params,status,message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_named_4xx(server, what, model, image, params, status, message):
    resp = infer(server, model, image, params)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["detail"]


def test_bad_files_get_a_named_4xx_and_the_server_keeps_serving(server, tmp_path):
    labels_before = requests.get(server.url + "/datastore/?output=all", timeout=30).json()
    cases = [
        (_upload(np.zeros((30, 40), np.int16), tmp_path, "flat.nii.gz"), 422, "3D volume"),  # a 2D image
        (_upload(np.zeros((2, 5, 6, 7), np.int16), tmp_path, "four.nii.gz"), 422, "3D volume"),  # 4D
    ]
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not an image")
    cases.append((str(junk), 415, "cannot read"))
    for path, status, message in cases:
        with open(path, "rb") as f:
            resp = infer(server, "sam2_point", "", {"foreground": [[1, 1, 1]]},
                         files={"file": (os.path.basename(path), f)})
        assert resp.status_code == status, (path, resp.text)
        assert message in resp.json()["detail"]
    resp = infer(server, "sam2_point", "node", {"foreground": [[1, 1, 1]]}, session_id="no-such-session")
    assert resp.status_code == 404 and "session" in resp.json()["detail"]
    assert server.alive()
    assert requests.get(server.url + "/info/", timeout=30).status_code == 200
    assert requests.get(server.url + "/datastore/?output=all", timeout=30).json() == labels_before


# -- model choice ------------------------------------------------------------------------------------
def test_missing_checkpoint_stops_start_up_with_the_download_command(tmp_path, studies):
    env = dict(os.environ, SAM2_3D_CHECKPOINT_DIR=str(tmp_path / "empty"))
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "monailabel"), "start_server", "--app", APP_DIR,
         "--studies", studies, "--port", "1", "--conf", "checkpoint", "sam2.1_hiera_large"],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path),
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 or "Application startup failed" in log
    assert str(tmp_path / "empty" / "sam2.1_hiera_large.pt") in log
    assert "python checkpoints/download_ckpts.py sam2.1_hiera_large" in log
