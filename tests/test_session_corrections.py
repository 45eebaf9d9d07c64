"""Corrections as annotators make them (issue 20), each through the real server over HTTP.

One request per action, with the params Slicer or OHIF send; answers are compared with what a fresh
client given the same final prompts answers (the oracle of tests/test_sessions.py, reached over HTTP).
Real SAM 2.1 tiny with RANDOM WEIGHTS (conftest): masks are meaningless but deterministic, so equality
between two answers is an exact statement. Slice ranges are small to keep CPU time low.
"""

from __future__ import annotations

import io
import json
import os
import uuid

import nrrd
import numpy as np
import requests
from requests_toolbelt.multipart.decoder import MultipartDecoder

IMAGE = "spinalcord_t2"  # 60 x 55 x 52 (i, j, k)


class Answer:
    def __init__(self, resp: requests.Response):
        self.status = resp.status_code
        self.resp = resp
        self.json: dict = {}
        self.mask = None
        if self.status != 200:
            self.detail = resp.json().get("detail", resp.text)
            return
        for part in MultipartDecoder.from_response(resp).parts:
            disposition = part.headers[b"Content-Disposition"].decode()
            if 'name="params"' in disposition:
                self.json = json.loads(part.content)
            else:
                header = nrrd.read_header(io.StringIO(part.content.split(b"\n\n", 1)[0].decode() + "\n\n"))
                data = np.frombuffer(part.content.split(b"\n\n", 1)[1], dtype=np.uint8)
                self.mask = data.reshape(tuple(reversed(header["sizes"]))).copy()  # [k, j, i]

    def __getitem__(self, key):
        return self.json[key]

    def ok(self) -> "Answer":
        assert self.status == 200, self.detail
        return self


def ask(server, params: dict, model: str = "sam2_point", http=requests, image: str = IMAGE) -> Answer:
    params = {"result_extension": ".nrrd", "result_dtype": "uint8", "preset": "mr", "auto_stop": 0, **params}
    resp = http.post(f"{server.url}/infer/{model}", params={"image": image},
                     data={"params": json.dumps(params)}, timeout=600)
    return Answer(resp)


def client(**kw) -> dict:
    """Params of a client of its own (a fresh client_id) on a small slice range."""
    return {"client_id": f"corr-{uuid.uuid4().hex[:8]}", "start_slice": 22, "end_slice": 28, **kw}


# -- 1. negative-only clicks on a slice are a correction ---------------------------------------------
def test_background_clicks_alone_on_a_slice_correct_it(server):
    base = client()
    first = ask(server, dict(base, foreground=[[30, 27, 24]])).ok()
    tracked = 27  # tracked by the first pass (inside its range); 30 lies beyond it, never tracked
    assert tracked in map(int, first["slice_scores"])
    on_tracked = ask(server, dict(base, foreground=[[30, 27, 24]], background=[[30, 27, tracked]])).ok()
    assert on_tracked["prompted_slices"] == [24, tracked]
    wider = dict(base, end_slice=30, foreground=[[30, 27, 24]], background=[[30, 27, tracked], [28, 25, 30]])
    on_untracked = ask(server, wider).ok()
    assert on_untracked["prompted_slices"] == [24, tracked, 30]
    # exactly what a fresh client sending the same clicks gets
    fresh = ask(server, dict(wider, client_id=f"fresh-{uuid.uuid4().hex[:8]}")).ok()
    np.testing.assert_array_equal(on_untracked.mask, fresh.mask)
    # background clicks alone, in a label with nothing positive anywhere, say what is missing
    only_background = ask(server, client(background=[[30, 27, 24]]))
    assert only_background.status == 400 and "only background" in only_background.detail


# -- 2. a refused request changes nothing -------------------------------------------------------------
def test_a_refused_request_leaves_prompts_history_and_answer_as_they_were(server):
    base = client()
    ask(server, dict(base, foreground=[[30, 27, 24]])).ok()
    two = ask(server, dict(base, foreground=[[30, 27, 24], [30, 27, 26]])).ok()
    assert two["undo_available"] == 2
    # a click outside start_slice/end_slice: refused after the prompts were parsed
    refused = ask(server, dict(base, foreground=[[30, 27, 24], [30, 27, 26], [33, 22, 35]]))
    assert refused.status == 400 and "outside the slice range" in refused.detail
    # the same, after clearing every label: the reset is refused with it
    refused = ask(server, dict(base, reset_all=True, foreground=[[30, 27, 35]]))
    assert refused.status == 400
    again = ask(server, dict(base, foreground=[[30, 27, 24], [30, 27, 26]])).ok()
    assert again["propagation"] == "cached" and again["undo_available"] == 2 and again["redo_available"] == 0
    np.testing.assert_array_equal(again.mask, two.mask)
    undone = ask(server, dict(base, undo=True)).ok()
    assert undone["prompted_slices"] == [24] and undone["redo_available"] == 1
    redone = ask(server, dict(base, redo=True)).ok()
    assert redone["prompted_slices"] == [24, 26] and redone["redo_available"] == 0


# -- 7 and 8: undo answers what the session that never had the action answered --------------------------
def test_undo_of_a_second_click_on_the_same_slice_is_exact(server):
    base = client()
    one = ask(server, dict(base, foreground=[[30, 27, 25]])).ok()
    two = ask(server, dict(base, foreground=[[30, 27, 25]], background=[[24, 22, 25]])).ok()
    assert two["prompted_slices"] == [25] and two["propagation"] == "incremental"
    undone = ask(server, dict(base, undo=True)).ok()
    assert undone["propagation"] == "full"  # a removed click rebuilds, as the one-click answer was made
    np.testing.assert_array_equal(undone.mask, one.mask)
    redone = ask(server, dict(base, redo=True)).ok()
    np.testing.assert_array_equal(redone.mask, two.mask)
    # moving a click within its slice rebuilds too: the answer is a fresh client's
    moved = dict(base, foreground=[[31, 26, 25]], background=[[24, 22, 25]])
    after_move = ask(server, moved).ok()
    assert after_move["propagation"] == "full"
    np.testing.assert_array_equal(after_move.mask, ask(server, dict(moved, client_id=base["client_id"] + "-f")).ok().mask)


def test_undoing_the_only_click_answers_an_empty_label(server):
    base = client()
    ask(server, dict(base, foreground=[[30, 27, 25]])).ok()
    empty = ask(server, dict(base, undo=True)).ok()
    assert empty["prompted_slices"] == [] and empty["undo_available"] == 0 and empty["redo_available"] == 1
    assert empty.mask.shape == (52, 55, 60) and not empty.mask.any()
    back = ask(server, dict(base, redo=True)).ok()
    assert back["prompted_slices"] == [25]


def test_2d_undo_steps_back_to_the_previous_slice(server):
    base = {"client_id": f"corr2d-{uuid.uuid4().hex[:8]}"}
    first = ask(server, dict(base, foreground=[[30, 27, 25]], slice=25), model="sam2_2d").ok()
    second = ask(server, dict(base, foreground=[[30, 27, 27]], slice=27), model="sam2_2d").ok()
    assert second["undo_available"] == 2
    undone = ask(server, dict(base, undo=True), model="sam2_2d").ok()
    assert undone["prompted_slices"] == [25]
    np.testing.assert_array_equal(undone.mask, first.mask)
    empty = ask(server, dict(base, undo=True), model="sam2_2d").ok()
    assert empty["prompted_slices"] == [] and not empty.mask.any() and empty["undo_available"] == 0
    assert ask(server, dict(base, undo=True), model="sam2_2d").status == 400  # nothing left to undo


# -- 4. clicks are never refused for where they lie --------------------------------------------------
def test_axial_clicks_in_one_sagittal_plane_are_answered_along_k_with_a_hint(server):
    """Three clicks down the spinal cord at the same i, no axis (as OHIF sends): answered along k."""
    clicks = [[30, 27, 38], [30, 28, 40], [30, 29, 42]]
    answer = ask(server, client(start_slice=37, end_slice=43, foreground=clicks)).ok()
    assert answer["axis"] == "k" and answer["prompted_slices"] == [38, 40, 42]
    assert '"axis": "i"' in answer["axis_hint"]
    plain = ask(server, client(start_slice=37, end_slice=43, foreground=[[30, 27, 38], [31, 28, 40], [29, 29, 42]]))
    assert plain.ok()["axis_hint"] is None


# -- 3. clients without a client_id never share a session ------------------------------------------------
def test_browsers_without_client_id_keep_sessions_of_their_own(server):
    """Two OHIF-like browsers (no client_id, cookies kept as a browser keeps them) on one image."""
    ohif = {"start_slice": 22, "end_slice": 26, "result_compress": False, "restore_label_idx": False}
    alice, bob = requests.Session(), requests.Session()
    a1 = ask(server, dict(ohif, foreground=[[30, 27, 24]]), http=alice).ok()
    cookie = a1.resp.headers["set-cookie"]
    assert "sam2_3d_client=" in cookie and "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    b1 = ask(server, dict(ohif, label="bob's", foreground=[[20, 20, 25]]), http=bob).ok()
    assert b1["session_labels"] == ["bob's"] and b1["undo_available"] == 1
    a2 = ask(server, dict(ohif, foreground=[[30, 27, 24], [29, 25, 26]]), http=alice).ok()
    assert "set-cookie" not in a2.resp.headers  # the browser's cookie came back: same session
    assert a2["undo_available"] == 2 and a2["propagation"] == "incremental"
    undone = ask(server, dict(ohif, undo=True), http=alice).ok()  # alice's undo touches alice's clicks only
    assert undone["prompted_slices"] == [24]
    both = ask(server, dict(ohif, label="bob's", foreground=[[20, 20, 25]], labels="all"), http=bob).ok()
    assert both["label_names"] == {"bob's": 1} and both["propagation"] == "cached"
    forged = ask(server, dict(ohif, foreground=[[30, 27, 24]], client_key="user:alice"), http=bob)
    assert forged.status == 400 and "client_key" in forged.detail  # only the server sets it


def test_sessions_are_keyed_by_the_user_when_auth_is_on(monkeypatch):
    from types import SimpleNamespace

    from monailabel.config import settings

    from lib.infers.sam2_infer import _session_client
    from lib.web import client_key

    request = SimpleNamespace(cookies={})
    key, token = client_key.of_request(request, SimpleNamespace(username="admin"))
    assert key == f"browser:{token}" and len(token) >= 16  # auth off: the browser's own key
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTH_ENABLE", True)
    assert client_key.of_request(request, SimpleNamespace(username="alice")) == ("user:alice", None)
    assert _session_client({"client_key": "user:alice"}, "") == "user:alice"
    assert _session_client({"client_key": "user:alice"}, "slicer") == "user:alice/slicer"  # not bob's "slicer"
    assert _session_client({"client_key": "browser:" + "x" * 24}, "slicer") == "slicer"


# -- 5 and 6: sessions outlive the caches and a preset change ----------------------------------------------
def test_a_session_outlives_its_volume_leaving_the_cache(server):
    """max_volumes is 4: another user opening 4 other volumes pushes this session's volume out."""
    base = client(start_slice=22, end_slice=26)
    one = ask(server, dict(base, label="a", foreground=[[30, 27, 24]])).ok()
    ask(server, dict(base, label="a", foreground=[[30, 27, 24], [29, 26, 26]])).ok()
    ask(server, dict(base, label="b", foreground=[[20, 20, 25]])).ok()
    for preset in ("bone", "lung", "brain", "liver"):  # 4 other volumes (image, preset), one slice each
        ask(server, {"client_id": "someone-else", "preset": preset, "start_slice": 5, "end_slice": 5,
                     "foreground": [[10, 10, 5]]}, image="totalseg_ct_small").ok()
    undone = ask(server, dict(base, label="a", undo=True)).ok()
    assert undone["prompted_slices"] == [24] and undone["propagation"] == "full"
    assert undone["session_restarted"] is None and undone["redo_available"] == 1
    np.testing.assert_array_equal(undone.mask, one.mask)  # rebuilt from the prompts: the fresh answer
    both = ask(server, dict(base, label="b", foreground=[[20, 20, 25]], labels="all")).ok()
    assert both["label_names"] == {"a": 1, "b": 2}
    log = open(server.log_path).read()
    assert f"client {base['client_id']} on" in log and "its volume had left the cache" in log


def test_a_preset_change_keeps_labels_and_history(server):
    base = client(start_slice=22, end_slice=26)
    window = {"window_center": 321, "window_width": 543}  # a preset no other test uses
    ask(server, dict(base, label="a", foreground=[[30, 27, 24]])).ok()
    ask(server, dict(base, label="a", foreground=[[30, 27, 24], [29, 26, 26]])).ok()
    changed = ask(server, dict(base, **window, label="a", foreground=[[30, 27, 24], [29, 26, 26]])).ok()
    assert changed["undo_available"] == 2 and changed["propagation"] == "full" and changed["preset"] != "mr"
    undone = ask(server, dict(base, **window, label="a", undo=True)).ok()
    assert undone["prompted_slices"] == [24]
    back = ask(server, dict(base, label="a", redo=True)).ok()  # the first preset again, the redone click
    assert back["preset"] == "mr" and back["prompted_slices"] == [24, 26] and back["propagation"] == "full"
    fresh = ask(server, dict(base, client_id=base["client_id"] + "-f", foreground=[[30, 27, 24], [29, 26, 26]]))
    np.testing.assert_array_equal(back.mask, fresh.ok().mask)
    assert "the preset changed from mr to window" in open(server.log_path).read()


def test_a_session_ends_only_by_its_ttl_or_the_byte_bound_and_the_answer_says_so(engine):
    """Through the infer task (what the server runs), with bounds small enough to reach."""
    from conftest import shared

    from lib.engine.engine import Sam2VolumeEngine
    from lib.infers.sam2_infer import Sam2InferTask

    small = Sam2VolumeEngine(engine.predictor, session_ttl_s=3600)
    task = Sam2InferTask(small, "point", ["object"])
    request = {"image": shared("spinalcord_t2", "image.nii.gz"), "client_id": "ends", "preset": "mr",
               "start_slice": 24, "end_slice": 25, "auto_stop": 0, "foreground": [[30, 27, 24]]}

    def answer(**kw):
        out_file, result = task(dict(request, **kw))
        os.unlink(out_file)
        return result

    assert answer()["session_restarted"] is None
    assert answer(reset_all=True)["session_restarted"] is None  # an explicit reset is the client's own
    small.session_ttl_s = 0
    expired = answer()
    assert "expired" in expired["session_restarted"] and expired["undo_available"] == 1
    small.session_ttl_s = 3600
    assert answer()["session_restarted"] is None  # said once
    small.max_record_bytes = 1  # room for one session's prompts: another client's ends this one
    answer(client_id="other")
    bounded = answer()
    assert "max_session_gb" in bounded["session_restarted"]
    assert small.stats()["sessions_ended"] == 3


# -- 8. a box whose slices miss an earlier click bounds the propagation ---------------------------------
def test_a_box_beside_an_earlier_click_bounds_the_propagation_with_it(server):
    base = client(start_slice=21, end_slice=28)
    ask(server, dict(base, foreground=[[30, 27, 22]])).ok()
    boxed = ask(server, dict(base, roi=[40, 20, 35, 15, 24, 26], slice=25, foreground=[[30, 27, 22]]),
                model="sam2_box").ok()  # Slicer sends every click of the label with the box
    assert boxed["prompted_slices"] == [22, 25] and boxed["slice_range"] == [22, 26]
    assert not boxed.mask[27:].any() and not boxed.mask[:22].any()


# -- 9. finished labels are kept: locked labels, excluded voxels -------------------------------------------
def test_a_locked_label_keeps_its_voxels(server):
    base = client(start_slice=23, end_slice=26)
    click = [[30, 27, 24]]
    a = ask(server, dict(base, label="a", foreground=click, lock=True)).ok()
    assert a.mask.any(), "nothing to protect: the test would say nothing"
    free = ask(server, dict(client(start_slice=23, end_slice=26), label="b", foreground=click)).ok()
    np.testing.assert_array_equal(free.mask, a.mask)  # unlocked, the same click gives b exactly a's voxels
    b = ask(server, dict(base, label="b", foreground=click)).ok()
    assert not (b.mask & a.mask).any()
    both = ask(server, dict(base, label="b", foreground=click, labels="all")).ok()
    assert both["label_names"] == {"a": 1, "b": 2} and (both.mask[a.mask > 0] == 1).all()
    # Slicer sends the locked segments with each single-label request: none locked, then a again
    unlocked = ask(server, dict(base, label="b", foreground=click, locked_labels=[])).ok()
    np.testing.assert_array_equal(unlocked.mask, free.mask)
    relocked = ask(server, dict(base, label="b", foreground=click, locked_labels=["a"])).ok()
    assert not (relocked.mask & a.mask).any()
    bad = ask(server, dict(base, label="b", foreground=click, lock="yes"))
    assert bad.status == 400 and "lock" in bad.detail


def test_excluded_labels_are_taken_out_of_the_answer(server):
    base = client(start_slice=23, end_slice=26)
    click = [[30, 27, 24]]
    a = ask(server, dict(base, label="a", foreground=click)).ok()
    assert a.mask.any()
    b = ask(server, dict(base, label="b", foreground=click, exclude=["a"])).ok()
    assert not b.mask.any()  # the same click as a's: all of b's voxels were a's
    kept = ask(server, dict(base, label="b", foreground=click)).ok()  # exclude is per request
    np.testing.assert_array_equal(kept.mask, a.mask)
    bad = ask(server, dict(base, label="b", foreground=click, exclude=["nope"]))
    assert bad.status == 400 and "nope" in bad.detail


def test_exclude_final_takes_the_saved_final_label_out_of_the_answer(engine, tmp_path):
    """Through the infer task on a real monailabel LocalDatastore holding the manual label as ``final``."""
    import shutil

    import SimpleITK as sitk
    from conftest import shared
    from monailabel.datastore.local import LocalDatastore

    from lib.infers.sam2_infer import Sam2InferTask

    shutil.copy(shared("spinalcord_t2", "image.nii.gz"), tmp_path / "cord.nii.gz")
    store = LocalDatastore(str(tmp_path), extensions=["*.nii.gz"], auto_reload=False)
    store.save_label("cord", shared("spinalcord_t2", "label.nii.gz"), "final", {})
    task = Sam2InferTask(engine, "point", ["object"], datastore=lambda: store)
    request = {"image": str(tmp_path / "cord.nii.gz"), "image_id": "cord", "client_id": "exclude-final",
               "preset": "mr", "start_slice": 23, "end_slice": 26, "auto_stop": 0, "foreground": [[30, 27, 24]]}
    answers = []
    for extra in ({}, {"exclude": ["final"]}):
        out_file, _ = task(dict(request, **extra))
        answers.append(sitk.GetArrayFromImage(sitk.ReadImage(out_file)))
        os.unlink(out_file)
    plain, excluded = answers
    final = sitk.GetArrayFromImage(sitk.ReadImage(shared("spinalcord_t2", "label.nii.gz"))) > 0
    assert (plain.astype(bool) & final).any(), "nothing of the final label to take out: the test would say nothing"
    np.testing.assert_array_equal(excluded, np.where(final, 0, plain))
