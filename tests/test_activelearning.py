"""The annotation loop over HTTP on a real server: strategies hand out images, final labels take them out.

Server: real ``monailabel start_server`` (SAM 2.1 tiny, RANDOM WEIGHTS, 256 px) on its own copy of three
real volumes, so saving labels here cannot disturb other test modules.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from conftest import STUDY_FILES, Server, shared

IMAGES = sorted(name.split(".")[0] for name in STUDY_FILES)  # ids: file names without extension


@pytest.fixture(scope="module")
def loop_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loop_studies")
    for name, parts in STUDY_FILES.items():
        shutil.copy(shared(*parts), folder / name)
    srv = Server(str(folder), str(tmp_path_factory.mktemp("loop_server")))
    srv.folder = str(folder)
    srv.scratch = str(tmp_path_factory.mktemp("loop_scratch"))  # not in the studies folder: it is watched
    yield srv
    srv.stop()


def _next(srv, strategy, client_id):
    r = requests.post(f"{srv.url}/activelearning/{strategy}", json={"client_id": client_id}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _image_path(srv, image_id):
    name = next(n for n in STUDY_FILES if n.split(".")[0] == image_id)
    return os.path.join(srv.folder, name)


def _label_bytes(srv, image_id, value_slice):
    """A NIfTI label on the image grid whose non-zero block is unique to this image (so a mix-up shows)."""
    ref = sitk.ReadImage(_image_path(srv, image_id))
    arr = np.zeros(tuple(reversed(ref.GetSize())), dtype=np.uint8)
    arr[value_slice, 2:6, 2:6] = 1
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(ref)
    path = os.path.join(srv.scratch, f"{image_id}.nii.gz")
    sitk.WriteImage(lab, path)
    data = open(path, "rb").read()
    os.unlink(path)
    return data, arr


def _save_final(srv, image_id, data, client_id):
    params = {"label_info": [{"name": "object", "idx": 1}], "client_id": client_id}
    return requests.put(
        f"{srv.url}/datastore/label", params={"image": image_id, "tag": "final"},
        files={"label": (f"{image_id}.nii.gz", io.BytesIO(data)), "params": (None, json.dumps(params))}, timeout=60,
    )


def test_strategies_advertised_and_unknown_is_404(loop_server):
    info = requests.get(loop_server.url + "/info/", timeout=10).json()
    assert {"random", "first", "sam2_low_confidence"} <= set(info["strategies"])
    r = requests.post(loop_server.url + "/activelearning/nosuch", json={}, timeout=10)
    assert r.status_code == 404 and "nosuch" in r.text and "first" in r.text
    assert loop_server.alive()


def test_sam2_low_confidence_picks_the_least_confident_propagation(loop_server):
    """Run a real propagation on two images; the strategy must pick the one whose propagated object was
    least stable (SAM's stability score of the mask logits), equal stabilities by the lower object score
    (random weights: no logit passes +1, every stability is 0)."""
    keys = {}
    for image_id in ("spinalcord_t2", "totalseg_ct_small"):
        size = sitk.ReadImage(_image_path(loop_server, image_id)).GetSize()
        k = size[2] // 2
        params = {"foreground": [[size[0] // 2, size[1] // 2, k]], "background": [], "label": "object",
                  "start_slice": k - 1, "end_slice": k + 1, "result_extension": ".nii.gz"}
        r = requests.post(f"{loop_server.url}/infer/sam2_point", params={"image": image_id, "output": "json"},
                          data={"params": json.dumps(params)}, timeout=300)
        assert r.status_code == 200, r.text
        scores, stability = r.json()["slice_scores"], r.json()["stability"]
        info = requests.get(f"{loop_server.url}/datastore/image/info", params={"image": image_id}, timeout=10).json()
        recorded = info["sam2_confidence"]
        assert recorded["slices"] == len(scores)
        assert recorded["mean_slice_score"] == pytest.approx(np.mean(list(scores.values())), abs=1e-3)
        assert 0.0 <= stability <= 1.0 and recorded["stability"] == stability
        keys[image_id] = (stability, recorded["mean_slice_score"])
    assert len(set(keys.values())) == 2, keys  # else the pick below would be by id
    chosen = _next(loop_server, "sam2_low_confidence", "annotator-c")
    assert chosen["id"] == min(keys, key=keys.get), (chosen, keys)
    assert (chosen["sam2_stability"], chosen["sam2_mean_slice_score"]) == min(keys.values())


def test_annotation_loop_first_lease_save_and_concurrent_saves(loop_server):
    """first: two annotators get different images; a final label takes an image out; parallel saves both land."""
    a = _next(loop_server, "first", "annotator-a")
    assert a["id"] == IMAGES[0] and "path" not in a  # no server path in an answer (issue 16)
    assert _next(loop_server, "first", "annotator-a")["id"] == IMAGES[0]  # same client: same image
    b = _next(loop_server, "first", "annotator-b")
    assert b["id"] != a["id"], "a second annotator must not be handed the image the first is working on"

    payloads = {img: _label_bytes(loop_server, img, value_slice=n) for n, img in enumerate([a["id"], b["id"]], 1)}
    results = {}

    def save(image_id, client):
        results[image_id] = _save_final(loop_server, image_id, payloads[image_id][0], client)

    threads = [threading.Thread(target=save, args=(a["id"], "annotator-a")),
               threading.Thread(target=save, args=(b["id"], "annotator-b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for image_id, r in results.items():
        assert r.status_code == 200, r.text

    ds = requests.get(loop_server.url + "/datastore/", params={"output": "all"}, timeout=10).json()
    for image_id, (_, arr) in payloads.items():
        assert "final" in ds["objects"][image_id]["labels"], f"label of {image_id} lost"
        r = requests.get(loop_server.url + "/datastore/label", params={"label": image_id, "tag": "final"}, timeout=10)
        assert r.status_code == 200
        path = os.path.join(loop_server.scratch, f"back_{image_id}.nii.gz")
        open(path, "wb").write(r.content)
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(path)), arr), f"label of {image_id} overwritten"

    rest = [i for i in IMAGES if i not in payloads]
    assert _next(loop_server, "first", "annotator-a")["id"] == rest[0]
    assert _next(loop_server, "random", "annotator-b")["id"] == rest[0]
    data, _ = _label_bytes(loop_server, rest[0], value_slice=3)
    assert _save_final(loop_server, rest[0], data, "annotator-a").status_code == 200
    for strategy in ("first", "random", "sam2_low_confidence"):
        assert _next(loop_server, strategy, "annotator-a") == {}, "every image is labelled: nothing to hand out"
    assert loop_server.alive()


def test_same_image_saved_twice_at_once_keeps_every_version(loop_server):
    """Two annotators submit the same image at the same moment: one version is the label, none is lost."""
    image_id = IMAGES[0]
    r = requests.get(loop_server.url + "/datastore/label", params={"label": image_id, "tag": "final"}, timeout=10)
    assert r.status_code == 200, "the loop test above saved a final label for this image"
    versions = {"earlier": r.content}
    payloads = {c: _label_bytes(loop_server, image_id, value_slice=n) for n, c in ((4, "annotator-a"), (5, "annotator-b"))}
    results = {}
    threads = [threading.Thread(target=lambda c=c: results.__setitem__(c, _save_final(loop_server, image_id, payloads[c][0], c)))
               for c in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results.values()), {c: r.text for c, r in results.items()}

    def arr_of(data: bytes) -> np.ndarray:
        path = os.path.join(loop_server.scratch, "v.nii.gz")
        open(path, "wb").write(data)
        return sitk.GetArrayFromImage(sitk.ReadImage(path))

    current = requests.get(loop_server.url + "/datastore/label", params={"label": image_id, "tag": "final"}, timeout=10)
    info = requests.get(loop_server.url + "/datastore/label/info", params={"label": image_id, "tag": "final"}, timeout=10).json()
    assert "replaces" in info, info
    kept_dir = os.path.join(loop_server.folder, ".replaced_labels", "final")
    kept = [open(os.path.join(kept_dir, f), "rb").read() for f in sorted(os.listdir(kept_dir)) if f.startswith(image_id + ".")]
    assert len(kept) == 2, "the earlier label and the version saved first are both kept"
    got = [arr_of(current.content)] + [arr_of(k) for k in kept]
    wanted = [arr_of(versions["earlier"])] + [arr for _, arr in payloads.values()]
    for w in wanted:
        assert sum(np.array_equal(w, g) for g in got) == 1, "a version was lost (or kept twice)"
    assert loop_server.alive()
