"""Hostile and unlucky clients against the real server (SAM 2.1 tiny, RANDOM WEIGHTS, 256 px).

Named regressions for every case of issue 11, then generated requests (hypothesis): each malformed
request gets a 4xx whose ``detail`` names the problem, never a 5xx; the server answers ``/info/`` after
each; no file outside the studies folder is read, written or deleted; rejected uploads leave no
temporary file behind; the datastore is unchanged by rejected saves.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from conftest import MEASURED, Server
from hostile_support import healthy, put_label, write_label_like, write_volume
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TINY = "tiny"  # 32 x 32 x 6: a full propagation costs ~1 s, so generated valid requests stay cheap
COUNTS = {"kinds": 0, "requests": 0}


@pytest.fixture(scope="module")
def hserver(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    studies = root / "studies"
    studies.mkdir()
    image = write_volume(studies / f"{TINY}.nii.gz")
    write_volume(studies / "other.nii.gz", seed=1)
    tmp = root / "tmp"
    tmp.mkdir()
    (root / "outside.txt").write_text("must survive")
    srv = Server(str(studies), str(root), env={"TMPDIR": str(tmp)})
    srv.root, srv.tmp, srv.image = root, tmp, image
    srv.tmp_baseline = set(os.listdir(tmp))  # what the server wrote at start-up (not uploads)
    yield srv
    srv.stop()
    MEASURED["hostile input (kinds of bad input, requests sent)"] = dict(COUNTS)


def post(srv, model, image=TINY, params=None, raw_params=None, query=None, files=None):
    COUNTS["requests"] += 1
    q = {"image": image} if image is not None else {}
    q.update(query or {})
    data = {"params": raw_params if raw_params is not None else json.dumps(params or {})}
    return requests.post(f"{srv.url}/infer/{model}", params=q, data=data, files=files, timeout=300)


def datastore_state(srv):
    return requests.get(srv.url + "/datastore/?output=all", timeout=30).json()


def leftover_temp_files(srv):
    return sorted(set(os.listdir(srv.tmp)) - srv.tmp_baseline)


# -- named regressions from the issue ------------------------------------------------------------------
FG = {"foreground": [[16, 16, 3]], "start_slice": 2, "end_slice": 4}
INFER_CASES = [
    ("params malformed JSON", "sam2_point", TINY, "{'x':", 400, "not valid JSON"),
    ("params a list", "sam2_point", TINY, "[1, 2]", 400, "must be a JSON object"),
    ("params a string", "sam2_point", TINY, '"abc"', 400, "must be a JSON object"),
    ("params null", "sam2_point", TINY, "null", 400, "must be a JSON object"),
    ("coordinate Infinity", "sam2_point", TINY, '{"foreground": [[1, 1, Infinity]]}', 400, "Infinity"),
    ("coordinate 1e400", "sam2_point", TINY, '{"foreground": [[1, 1, 1e400]]}', 400, "not a finite number"),
    ("coordinate 10**400", "sam2_point", TINY, '{"foreground": [[1, 1, 1' + "0" * 400 + ']]}', 400, "finite number"),
    ("start_slice abc", "sam2_point", TINY, json.dumps(dict(FG, start_slice="abc")), 400, "start_slice must be an integer"),
    ("start_slice NaN", "sam2_point", TINY, '{"foreground": [[16, 16, 3]], "start_slice": NaN}', 400, "NaN"),
    ("start_slice 2.5", "sam2_point", TINY, json.dumps(dict(FG, start_slice=2.5)), 400, "start_slice must be an integer"),
    ("auto_stop abc", "sam2_point", TINY, json.dumps(dict(FG, auto_stop="abc")), 400, "auto_stop must be an integer"),
    ("auto_stop -1", "sam2_point", TINY, json.dumps(dict(FG, auto_stop=-1)), 400, "auto_stop must be >= 0"),
    ("label_value abc", "sam2_propagate", TINY, json.dumps({"label_tag": "final", "label_value": "abc"}), 400,
     "label_value must be an integer"),
    ("roi Infinity", "sam2_box", TINY, '{"roi": [1, 20, 1, 20, 1, Infinity]}', 400, "Infinity"),
    ("roi huge", "sam2_box", TINY, '{"roi": [1, 20, 1, 20, 1, 1e300]}', 400, "not a finite number"),
    ("box slice abc", "sam2_box", TINY, json.dumps({"roi": [1, 20, 1, 20, 1, 4], "slice": "abc"}), 400,
     "slice must be an integer"),
    ("box slice outside roi", "sam2_box", TINY, json.dumps({"roi": [1, 20, 1, 20, 1, 3], "slice": 5}), 400,
     "outside the roi's slices"),
    ("window_center NaN", "sam2_point", TINY, '{"foreground": [[16, 16, 3]], "window_center": NaN, "window_width": 3}',
     400, "NaN"),
    ("window_width Infinity", "sam2_point", TINY,
     '{"foreground": [[16, 16, 3]], "window_center": 1, "window_width": Infinity}', 400, "Infinity"),
    ("window_width 0", "sam2_point", TINY, json.dumps(dict(FG, window_center=1, window_width=0)), 400,
     "window_width must be > 0"),
    ("window_center alone", "sam2_point", TINY, json.dumps(dict(FG, window_center=1)), 400, "go together"),
    ("unknown model", "sam2_nope", TINY, "{}", 404, "unknown model"),
    ("no image, file or session", "sam2_point", None, json.dumps(FG), 400, "no image"),
    ("absolute image path", "sam2_point", "/etc/passwd", json.dumps(FG), 400, "path separator"),
    ("missing absolute path", "sam2_point", "/no/such/file", json.dumps(FG), 400, "path separator"),
    ("relative escape", "sam2_point", "../../etc/passwd", json.dumps(FG), 400, "path separator"),
    ("image a file beside the server", "sam2_point", "server.log", json.dumps(FG), 404, "unknown image"),
    ("image id with NUL", "sam2_point", "tin\x00y", json.dumps(FG), 400, "control characters"),
    ("image id ..", "sam2_point", "..", json.dumps(FG), 400, "'..'"),
    ("params sets image", "sam2_point", TINY, json.dumps(dict(FG, image="/etc/passwd")), 400, "may not set 'image'"),
    ("params label a server path", "sam2_propagate", TINY, json.dumps({"label": "/etc/passwd"}), 400,
     "not a path"),
    ("label_tag escape", "sam2_propagate", TINY, json.dumps({"label_tag": "../../x"}), 400, "path separator"),
    ("save_label with escaping tag", "sam2_point", TINY, json.dumps(dict(FG, save_label=True, label_tag="../../x")),
     400, "path separator"),
    ("session_id escape", "sam2_point", "node", json.dumps(FG), 400, "session_id"),
    ("expired session", "sam2_point", "node", json.dumps(FG), 404, "unknown or has expired"),
    ("dicom_seg on a local datastore", "sam2_point", TINY, json.dumps(FG), 400, "needs a DICOMweb datastore"),
]
QUERIES = {"session_id escape": {"session_id": ".."}, "expired session": {"session_id": "no-such-session"},
           "dicom_seg on a local datastore": {"output": "dicom_seg"}}


@pytest.mark.parametrize("what,model,image,raw,status,message", INFER_CASES, ids=[c[0] for c in INFER_CASES])
def test_bad_infer_request_gets_a_named_4xx(hserver, what, model, image, raw, status, message):
    COUNTS["kinds"] += 1
    resp = post(hserver, model, image=image, raw_params=raw, query=QUERIES.get(what))
    assert resp.status_code == status, resp.text
    assert message in resp.json()["detail"], resp.text
    assert healthy(hserver.url)


def test_uploads_that_are_not_masks_are_refused_and_leave_no_temp_file(hserver, tmp_path):
    junk = tmp_path / "mask.bin"
    junk.write_bytes(os.urandom(50_000))
    text = tmp_path / "mask.nii.gz"
    text.write_text("not an image")
    cases = [(junk, 415, "use one of"), (text, 415, "cannot read")]
    for path, status, message in cases:
        COUNTS["kinds"] += 1
        with open(path, "rb") as f:
            resp = post(hserver, "sam2_propagate", params={"prompt_slices": [3]}, files={"label": (path.name, f)})
        assert resp.status_code == status, resp.text
        assert message in resp.json()["detail"]
    with open(text, "rb") as f:  # an image upload that is not an image
        COUNTS["kinds"] += 1
        resp = post(hserver, "sam2_point", image="", params=FG, files={"file": ("x.nii.gz", f)})
    assert resp.status_code == 415, resp.text
    time.sleep(0.5)
    assert leftover_temp_files(hserver) == []


def test_moving_a_prompt_to_another_slice_is_answered(hserver):
    """Issue 11: a click moved from slice 2 to 4 in the same session answered 500 (AssertionError in SAM 2)."""
    COUNTS["kinds"] += 1
    base = {"client_id": "mover", "start_slice": 1, "end_slice": 5, "auto_stop": 0}
    first = post(hserver, "sam2_point", params=dict(base, foreground=[[16, 16, 2]], reset_state=True),
                 query={"output": "json"})
    moved = post(hserver, "sam2_point", params=dict(base, foreground=[[16, 16, 4]]), query={"output": "json"})
    assert first.status_code == moved.status_code == 200, moved.text
    assert moved.json()["prompted_slices"] == [4] and moved.json()["propagation"] == "full"
    again = post(hserver, "sam2_point", params=dict(base, foreground=[[16, 16, 4]]), query={"output": "json"})
    assert again.status_code == 200 and again.json()["propagation"] == "cached"


def test_malformed_image_and_label_info_get_a_400(hserver):
    for route, query in (("image/info", {"image": TINY}), ("label/info", {"label": TINY, "tag": "final"})):
        for raw in ("{x", "[1, 2]", "null"):
            COUNTS["kinds"] += 1
            COUNTS["requests"] += 1
            resp = requests.put(f"{hserver.url}/datastore/{route}", params=query, data={"info": raw}, timeout=30)
            assert resp.status_code == 400, (route, raw, resp.status_code, resp.text)
            assert "info" in resp.json()["detail"], resp.text
    assert healthy(hserver.url)


# -- labels on save ---------------------------------------------------------------------------------------
def _truncated(src, dest):
    data = open(src, "rb").read()
    open(dest, "wb").write(data[: len(data) // 2])
    return str(dest)


def test_labels_that_are_not_labels_of_the_image_are_refused(hserver, tmp_path):
    image = hserver.image
    good = write_label_like(image, tmp_path / "good.nii.gz")
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((32, 32), np.uint8)), str(flat))
    floaty = tmp_path / "float.nii.gz"
    f_img = sitk.GetImageFromArray(np.full(tuple(reversed(image.GetSize())), 0.5, np.float32))
    f_img.CopyInformation(image)
    sitk.WriteImage(f_img, str(floaty))
    wrong_size = tmp_path / "size.nii.gz"
    write_label_like(write_volume(tmp_path / "big.nii.gz", shape_kji=(6, 32, 30)), wrong_size)
    text = tmp_path / "text.nii.gz"
    text.write_text("hello")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    exe = tmp_path / "label.exe"
    exe.write_bytes(open(good, "rb").read())
    cases = [
        ("text", text, 415, "cannot read"),
        ("0 bytes", empty, 422, "empty"),
        ("2D", flat, 422, "3D label is needed"),
        ("wrong size", wrong_size, 422, "differs from the image size"),
        ("truncated .nii.gz", _truncated(good, tmp_path / "trunc.nii.gz"), 422, "truncated"),
        (".exe", exe, 415, "use one of"),
        ("origin differs", write_label_like(image, tmp_path / "o.nii.gz", Origin=(5.0, 0.0, 0.0)), 422, "origin"),
        ("spacing differs", write_label_like(image, tmp_path / "s.nii.gz", Spacing=(1.0, 1.0, 3.0)), 422, "spacing"),
        ("direction differs", write_label_like(image, tmp_path / "d.nii.gz", Direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)),
         422, "direction"),
        ("non-integer values", floaty, 422, "non-integer"),
    ]
    before = datastore_state(hserver)
    for what, path, status, message in cases:
        COUNTS["kinds"] += 1
        COUNTS["requests"] += 1
        resp = put_label(hserver.url, TINY, path)
        assert resp.status_code == status, (what, resp.text)
        assert message in resp.json()["detail"], (what, resp.text)
    for what, query, status in [("unknown image", {"image": "nope"}, 404), ("tag ../../x", {"tag": "../../x"}, 400),
                                ("absolute tag", {"tag": "/tmp/x"}, 400)]:
        COUNTS["kinds"] += 1
        COUNTS["requests"] += 1
        resp = put_label(hserver.url, query.get("image", TINY), good, tag=query.get("tag", "final"))
        assert resp.status_code == status, (what, resp.text)
    for raw in ("{x", "[1]"):  # malformed params on a label save
        COUNTS["kinds"] += 1
        COUNTS["requests"] += 1
        with open(good, "rb") as f:
            resp = requests.put(f"{hserver.url}/datastore/label", params={"image": TINY, "tag": "final"},
                                files={"label": ("good.nii.gz", f)}, data={"params": raw}, timeout=60)
        assert resp.status_code == 400, resp.text
    assert datastore_state(hserver) == before
    assert requests.get(hserver.url + "/datastore/", timeout=30).json()["completed"] == 0
    time.sleep(0.5)
    assert leftover_temp_files(hserver) == []
    assert not list(hserver.root.glob("x*")) and not os.path.exists("/tmp/x")
    assert put_label(hserver.url, TINY, good).status_code == 200  # and a good label is still saved
    assert healthy(hserver.url)


# -- ids on every endpoint ----------------------------------------------------------------------------------
BAD_IDS = ["../outside", "../../outside.txt", "/etc/passwd", "..", "a/b", "x\x01y", "x\\y"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_path_like_ids_are_refused_on_every_endpoint(hserver, bad):
    url = hserver.url
    COUNTS["kinds"] += 1
    calls = [
        ("GET", "/datastore/image", {"image": bad}), ("HEAD", "/datastore/image", {"image": bad}),
        ("GET", "/datastore/image/info", {"image": bad}), ("DELETE", "/datastore/image", {"id": bad}),
        ("GET", "/datastore/label", {"label": bad, "tag": "final"}), ("GET", "/datastore/label", {"label": TINY, "tag": bad}),
        ("GET", "/datastore/label/info", {"label": bad, "tag": "final"}),
        ("DELETE", "/datastore/label", {"id": bad, "tag": "final"}), ("DELETE", "/datastore/label", {"id": TINY, "tag": bad}),
    ]
    for method, path, query in calls:
        COUNTS["requests"] += 1
        resp = requests.request(method, url + path, params=query, timeout=30)
        assert resp.status_code == 400, (method, path, query, resp.status_code, resp.text)
    with open(hserver.image_path if hasattr(hserver, "image_path") else os.path.join(hserver.studies, f"{TINY}.nii.gz"), "rb") as f:
        COUNTS["requests"] += 1
        resp = requests.put(url + "/datastore/image", params={"image": bad}, files={"file": ("v.nii.gz", f)}, timeout=60)
    assert resp.status_code == 400, resp.text
    COUNTS["requests"] += 1
    resp = requests.put(url + "/datastore/image/info", params={"image": bad}, data={"info": "{}"}, timeout=30)
    assert resp.status_code == 400, resp.text
    assert (hserver.root / "outside.txt").read_text() == "must survive"
    assert os.path.exists("/etc/passwd")
    assert sorted(p.name for p in hserver.root.iterdir() if p.suffix == ".gz") == []


def test_no_oracle_for_server_files(hserver):
    existing = post(hserver, "sam2_point", image="/etc/passwd", params=FG)
    missing = post(hserver, "sam2_point", image="/etc/no-such-file", params=FG)
    assert existing.status_code == missing.status_code == 400
    assert existing.json()["detail"].replace("passwd", "X") == missing.json()["detail"].replace("no-such-file", "X")


def test_a_label_name_never_reads_a_server_file(hserver):
    """params ``label`` is a label name; a name that happens to be a file in the server's working folder
    (the folder the server was started from) is neither read as a mask nor told apart from a missing one."""
    COUNTS["kinds"] += 1
    image = sitk.ReadImage(str(hserver.root / "studies" / f"{TINY}.nii.gz"))
    write_label_like(image, hserver.root / "server_mask.nii.gz")  # a valid mask for the image, on the server
    answers = {}
    for name in ("server_mask.nii.gz", "outside.txt", "no_such_file.nii.gz"):
        resp = post(hserver, "sam2_propagate", params={"label": name, "start_slice": 2, "end_slice": 4})
        assert resp.status_code == 400, (name, resp.status_code, resp.text[:300])
        answers[name] = resp.json()["detail"].replace(name, "X")
    assert len(set(answers.values())) == 1, answers
    assert "needs a mask" in answers["no_such_file.nii.gz"]
    assert (hserver.root / "outside.txt").read_text() == "must survive"


def test_session_ids_are_plain_names(hserver):
    COUNTS["kinds"] += 1
    sessions = hserver.root / "sessions"
    sessions.mkdir(exist_ok=True)
    (sessions / "keep.txt").write_text("a session file")
    for sid in ("..", "."):  # raw paths: requests would normalise /session/.. away
        COUNTS["requests"] += 2
        for method in ("GET", "DELETE"):
            req = requests.Request(method, f"{hserver.url}/session/{sid}").prepare()
            req.url = f"{hserver.url}/session/{sid}"
            resp = requests.Session().send(req, timeout=30)
            assert resp.status_code in (400, 404, 405), resp.text
            assert healthy(hserver.url)
    # nothing of the sessions folder, the studies or the test's root was deleted
    assert (sessions / "keep.txt").read_text() == "a session file"
    assert (hserver.root / "outside.txt").read_text() == "must survive"
    assert os.path.isfile(hserver.root / "studies" / f"{TINY}.nii.gz")


# -- CORS -------------------------------------------------------------------------------------------------
def test_cors_allows_no_credentials_from_any_origin_by_default(hserver):
    resp = requests.options(hserver.url + "/datastore/", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "PUT"}, timeout=30)
    assert resp.headers.get("access-control-allow-credentials") is None
    resp = requests.get(hserver.url + "/info/", headers={"Origin": "http://evil.example", "Cookie": "s=1"}, timeout=30)
    assert resp.headers.get("access-control-allow-origin") == "*"
    assert resp.headers.get("access-control-allow-credentials") is None


# -- generated requests ---------------------------------------------------------------------------------------
FIELDS = ["foreground", "background", "roi", "slice", "start_slice", "end_slice", "auto_stop", "label_value",
          "prompt_slices", "preset", "window_center", "window_width", "label", "label_tag", "client_id",
          "result_extension", "reset_state", "incremental", "checkpoint", "save_label"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(["..", "/etc/passwd", "\x00", "-1"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                      max_leaves=12)
points = st.lists(st.lists(st.integers(-2, 40), min_size=3, max_size=3), max_size=3)
params_strategy = st.dictionaries(st.sampled_from(FIELDS), values | points, max_size=5)


def _dump(params) -> str:
    return json.dumps(params, allow_nan=True)  # NaN/Infinity are what hostile clients send


@settings(max_examples=int(os.environ.get("SAM2_3D_HOSTILE_EXAMPLES", "80")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(model=st.sampled_from(["sam2_point", "sam2_box", "sam2_propagate", "sam2_2d"]), params=params_strategy)
def test_generated_requests_never_get_a_5xx(hserver, model, params):
    params = dict(params)
    params.setdefault("start_slice", 1)
    params.setdefault("end_slice", 3)
    resp = post(hserver, model, raw_params=_dump(params))
    assert resp.status_code < 500, (model, params, resp.text)
    if resp.status_code >= 400:
        assert resp.json().get("detail"), resp.text
    assert healthy(hserver.url)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.text(max_size=30), st.binary(max_size=30).map(lambda b: b.decode("latin-1"))))
def test_generated_raw_params_never_get_a_5xx(hserver, raw):
    resp = post(hserver, "sam2_point", raw_params=raw)
    assert resp.status_code < 500, (raw, resp.text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=1, max_size=20))
def test_generated_ids_never_get_a_5xx_or_escape(hserver, name):
    COUNTS["requests"] += 3
    for method, path, query in [("GET", "/datastore/image", {"image": name}),
                                ("DELETE", "/datastore/label", {"id": name, "tag": "final"}),
                                ("GET", "/datastore/label/info", {"label": TINY, "tag": name})]:
        resp = requests.request(method, hserver.url + path, params=query, timeout=30)
        assert resp.status_code < 500, (method, path, name, resp.text)
    assert (hserver.root / "outside.txt").exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.text(max_size=30), params_strategy.map(_dump)), field=st.sampled_from(["params", "info"]),
       endpoint=st.sampled_from(["label", "image/info", "label/info"]))
def test_generated_saves_and_infos_never_get_a_5xx_or_change_the_datastore(hserver, tmp_path_factory, raw, field, endpoint):
    """Label saves (a valid label file, generated ``params``) and image/label info updates (generated
    ``info``): never a 5xx; what is refused leaves the datastore as it was."""
    COUNTS["requests"] += 1
    before = datastore_state(hserver)
    if endpoint == "label":
        good = write_label_like(hserver.image, tmp_path_factory.mktemp("gen") / "l.nii.gz")
        with open(good, "rb") as f:
            resp = requests.put(f"{hserver.url}/datastore/label", params={"image": TINY, "tag": "generated"},
                                files={"label": ("l.nii.gz", f)}, data={"params": raw}, timeout=60)
    else:
        query = {"image": TINY} if endpoint == "image/info" else {"label": TINY, "tag": "final"}
        resp = requests.put(f"{hserver.url}/datastore/{endpoint}", params=query, data={field: raw}, timeout=30)
    assert resp.status_code < 500, (endpoint, field, raw, resp.text)
    if resp.status_code >= 400:
        assert resp.json().get("detail"), resp.text
        assert datastore_state(hserver) == before
    assert healthy(hserver.url)


# -- generated requests on every route of the route table (issue 16) ------------------------------------------
from lib.web import routes_table  # noqa: E402

ROUTE_COUNTS = {"requests": 0, "2xx": 0, "4xx": 0, "5xx": 0, "path attempts": 0, "escapes": 0, "routes": 0}
PATHY = ["..", "../outside.txt", "../../outside.txt", "/etc/passwd", "%2e%2e", "a/../../b", "~root", ".hidden",
         "x\\..\\y", "tin\x00y", "é" * 120, "", " ", "-1", "0"]
PARAM_NAMES = ["image", "label", "tag", "id", "session_id", "output", "uncompress", "expiry", "run_sync",
               "check_if_running", "update_ts", "params", "info", "image_id", "client_id", "limit_cases", "check_sum"]
KEEP = (TINY, "other")  # never generated where a DELETE could remove them
names = st.one_of(st.sampled_from(PATHY + [TINY, "final", "first", "sam2_point", "sam2_finetune", "nope", "true"]),
                  st.text(max_size=16))
query_values = st.one_of(names, st.sampled_from(["all", "stats", "train", "image", "json", "dicom_seg", "1", "yes"]))
bodies = st.one_of(
    st.none(),
    st.builds(lambda t: ("json", t), st.one_of(params_strategy.map(_dump), st.text(max_size=40))),
    st.builds(lambda k, t: ("form", {k: t}), st.sampled_from(["params", "info", "client_id"]),
              st.one_of(params_strategy.map(_dump), st.text(max_size=40))),
    st.builds(lambda k, n, b: ("files", {k: (n, b)}), st.sampled_from(["file", "label", "files"]),
              st.one_of(names, st.sampled_from(["x.nii.gz", "l.nrrd", "e.tar", "a.dcm"])), st.binary(max_size=64)),
)
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def _is_path_attempt(value) -> bool:
    return isinstance(value, str) and (".." in value or value.startswith(("/", "\\", "~")) or "%2e" in value.lower())


def _root_listing(srv):
    return sorted(p.name for p in srv.root.iterdir())


@settings(max_examples=int(os.environ.get("SAM2_3D_ROUTE_EXAMPLES", "300")), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(row=st.one_of(st.sampled_from(routes_table.open_routes()), st.sampled_from(routes_table.ROUTES)), data=st.data())
def test_generated_requests_on_every_route_never_get_a_5xx_or_escape(hserver, row, data):
    """Every row of lib/web/routes_table.py, open or closed: generated methods, path parameters, query
    and bodies. Never a 5xx; the server keeps answering; a refused request leaves the datastore as it was;
    nothing appears in, or disappears from, the folder around the studies."""
    if not hasattr(hserver, "root_listing"):
        (hserver.root / "sessions").mkdir(exist_ok=True)  # monailabel makes it at the first session
        hserver.root_listing = _root_listing(hserver)
    method = data.draw(st.sampled_from(row.methods) | st.sampled_from(row.methods) | st.sampled_from(ANY_METHOD), "method")
    path, values = row.path, []
    for template in ("{model}", "{strategy}", "{session_id}", "{method}", "{path:path}"):
        if template in path:
            value = data.draw(names.filter(lambda n: n not in KEEP) if method == "DELETE" else names, template)
            values.append(value)
            path = path.replace(template, requests.utils.quote(value, safe="") or "x")
    query = data.draw(st.dictionaries(st.sampled_from(PARAM_NAMES), query_values, max_size=4), "query")
    if method == "DELETE":
        query = {k: v for k, v in query.items() if v not in KEEP}
    body = data.draw(bodies, "body")
    kwargs = {}
    if body is not None:
        kind, content = body
        if row.path.startswith("/train/") and method == "POST":
            kind, content = "json", json.dumps({"hostile": 1})  # never a valid training request: none starts
        if kind == "json":
            kwargs = {"data": content.encode("utf-8", "surrogatepass"), "headers": {"Content-Type": "application/json"}}
        elif kind == "form":
            kwargs = {"data": content}
        else:
            kwargs = {"files": content}
    elif row.path.startswith("/train/") and method == "POST":
        kwargs = {"json": {"hostile": 1}}
    ROUTE_COUNTS["requests"] += 1
    ROUTE_COUNTS["path attempts"] += any(_is_path_attempt(v) for v in values + list(query.values()))
    before = datastore_state(hserver)
    resp = requests.request(method, hserver.url + path, params=query, timeout=120, **kwargs)
    ROUTE_COUNTS[f"{resp.status_code // 100}xx"] = ROUTE_COUNTS.get(f"{resp.status_code // 100}xx", 0) + 1
    ROUTE_COUNTS.setdefault("by status", {})
    ROUTE_COUNTS["by status"][str(resp.status_code)] = ROUTE_COUNTS["by status"].get(str(resp.status_code), 0) + 1
    assert resp.status_code < 500, (method, path, query, body, resp.status_code, resp.text[:300])
    assert healthy(hserver.url)
    if resp.status_code >= 400:
        assert datastore_state(hserver) == before, (method, path, query, resp.status_code)
    escaped = _root_listing(hserver) != hserver.root_listing or (hserver.root / "outside.txt").read_text() != "must survive"
    ROUTE_COUNTS["escapes"] += escaped
    assert not escaped, (method, path, query, _root_listing(hserver))
    assert os.path.isfile(hserver.root / "studies" / f"{TINY}.nii.gz")
    ROUTE_COUNTS["routes"] = len(routes_table.ROUTES)
    MEASURED["generated requests on every route (issue 16)"] = json.loads(json.dumps(ROUTE_COUNTS))
