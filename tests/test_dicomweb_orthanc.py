"""A real PACS: Orthanc + its DICOMweb plugin on loopback, the real server on ``--studies <DICOMweb URL>``.

Proves: the server starts offline (no dcmqi download), lists the series, infers on it by SeriesInstanceUID,
refuses unknown/malformed ids and blank-UID DICOM with a clear 4xx, and a final label goes back to Orthanc
as a DICOM SEG (highdicom) that references the source series, names its segments, and that a second
server with an empty cache finds again. SAM 2.1 tiny with RANDOM WEIGHTS (256 px): masks are meaningless.
"""

from __future__ import annotations

import io
import json
import os

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
from conftest import Server, shared
from dicomweb_client import DICOMwebClient
from support import orthanc as orthanc_support

STUDY_UID = "1.2.826.0.1.3680043.8.498.12198003171701915436914695260859955559"
SERIES_UID = "1.2.826.0.1.3680043.8.498.97006710487569071056074638989990160491"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    why = orthanc_support.available()
    if why:
        pytest.skip(why)
    source = shared("totalseg_ct_dicom", "dicom_uids")
    o = orthanc_support.Orthanc(str(tmp_path_factory.mktemp("orthanc")))
    uploads = o.upload_folder(source)
    assert [s for _, s, _ in uploads] == [200] * 20, uploads
    yield o
    o.stop()


def _server(pacs, tmp_path_factory, name):
    work = tmp_path_factory.mktemp(name)
    # A fresh DICOMweb cache per server: a second server must find labels in the PACS, not on disk.
    env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(work / "cache")}
    return Server(pacs.dicomweb, str(work), env=env)


@pytest.fixture(scope="module")
def pacs_server(pacs, tmp_path_factory):
    srv = _server(pacs, tmp_path_factory, "pacs_server")
    yield srv
    srv.stop()


def test_blank_uid_dicom_is_refused_clearly(pacs, tmp_path):
    """The published files (blank UIDs): Orthanc answers 400, and our SEG writer says what is wrong (422)."""
    from lib.datastore.seg import BlankUIDError, write_seg

    blank = shared("totalseg_ct_dicom", "dicom")
    status = pacs.upload_folder(blank)
    assert {s for _, s, _ in status} == {400} and "SOPInstanceUID" in status[0][2]
    with pytest.raises(BlankUIDError) as err:
        write_seg(blank, np.ones((20, 512, 512), np.uint8), {1: "x"})
    assert err.value.status_code == 422 and "blank" in str(err.value) and "SeriesInstanceUID" in str(err.value)


def test_server_starts_offline_and_lists_the_series(pacs_server):
    log = open(pacs_server.log_path).read()
    # monailabel's own set-up downloads dcmqi from GitHub here (fails offline: "Application startup failed").
    assert "stored back as highdicom DICOM SEG" in log and "dcmqi" not in log.replace("dcmqi not needed", "")
    first = requests.post(pacs_server.url + "/activelearning/first", json={"client_id": "c"}, timeout=120).json()
    assert first["id"] == SERIES_UID
    assert first["StudyInstanceUID"] == STUDY_UID and first["Modality"] == "CT"


def test_infer_by_series_uid_ohif_style(pacs_server):
    """What OHIF sends: image=<SeriesInstanceUID>, output=image, params only; an uncompressed uint8 NRRD back."""
    params = {"foreground": [[256, 256, 10]], "background": [], "label": "object", "start_slice": 9,
              "end_slice": 11, "result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False,
              "restore_label_idx": False}
    r = requests.post(f"{pacs_server.url}/infer/sam2_point", params={"image": SERIES_UID, "output": "image"},
                      files={"params": (None, json.dumps(params))}, timeout=300)
    assert r.status_code == 200, r.text
    path = os.path.join(os.path.dirname(pacs_server.log_path), "ohif_result.nrrd")
    open(path, "wb").write(r.content)
    label = sitk.ReadImage(path)
    assert label.GetSize() == (512, 512, 20)
    header = r.content[: r.content.index(b"\n\n")].decode()
    assert "encoding: raw" in header and "type: unsigned char" in header  # OHIF copies the raw bytes 1:1
    assert len(r.content) - len(header) - 2 == 512 * 512 * 20


def test_wado_proxy_forwards_accept_so_the_pacs_need_not_transcode(pacs_server):
    """OHIF asks for JPEG 2000 frames as stored; monailabel's proxy dropped Accept and Orthanc answered 500."""
    import pydicom

    folder = shared("totalseg_ct_dicom", "dicom_uids")
    sop = pydicom.dcmread(os.path.join(folder, sorted(os.listdir(folder))[0]), stop_before_pixels=True).SOPInstanceUID
    accept = 'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90'  # what OHIF sends
    r = requests.get(f"{pacs_server.url}/proxy/dicom/wado/studies/{STUDY_UID}/series/{SERIES_UID}/instances/{sop}/frames/1",
                     headers={"Accept": accept}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert "image/jp2" in r.headers["content-type"] and len(r.content) > 10_000


@pytest.mark.parametrize(
    "image, status, words",
    [("1.2.3.4.5.6.7", 404, ["1.2.3.4.5.6.7", "PACS"]), ("../../etc/passwd", 400, ["../../etc/passwd", "not paths"]), ("1.2.x", 400, ["SeriesInstanceUID"])],
)
def test_unknown_or_malformed_series_is_4xx(pacs_server, image, status, words):
    params = {"foreground": [[1, 1, 1]], "background": []}
    r = requests.post(f"{pacs_server.url}/infer/sam2_point", params={"image": image},
                      files={"params": (None, json.dumps(params))}, timeout=60)
    assert r.status_code == status, r.text
    assert all(w in r.text for w in words), r.text
    assert pacs_server.alive()


def _label_on_series(pacs_server) -> tuple[bytes, np.ndarray]:
    """A two-segment label on the cached series grid (CT thresholds: real anatomy, not random masks)."""
    ct = sitk.ReadImage(_cached_image(pacs_server))
    arr = sitk.GetArrayFromImage(ct)
    label = ((arr > 150).astype(np.uint8) + (arr > 700).astype(np.uint8)).astype(np.uint8)
    out = sitk.GetImageFromArray(label)
    out.CopyInformation(ct)
    path = os.path.join(os.path.dirname(pacs_server.log_path), "final.nii.gz")
    sitk.WriteImage(out, path)
    return open(path, "rb").read(), label


def _cached_image(pacs_server) -> str:
    r = requests.get(pacs_server.url + "/datastore/image", params={"image": SERIES_UID}, timeout=60)
    assert r.status_code == 200
    path = os.path.join(os.path.dirname(pacs_server.log_path), "image.nii.gz")
    open(path, "wb").write(r.content)
    return path


def test_final_label_goes_back_as_dicom_seg_and_is_found_again(pacs, pacs_server, tmp_path_factory):
    data, label = _label_on_series(pacs_server)
    params = {"label_info": [{"name": "soft tissue", "idx": 1}, {"name": "bone", "idx": 2}], "client_id": "ohif"}
    r = requests.put(pacs_server.url + "/datastore/label", params={"image": SERIES_UID, "tag": "final"},
                     files={"label": ("label.nii.gz", io.BytesIO(data)), "params": (None, json.dumps(params))},
                     timeout=300)
    assert r.status_code == 200, r.text

    segs = pacs.series("SEG")
    assert len(segs) == 1, segs
    seg_uid = segs[0]["0020000E"]["Value"][0]
    client = DICOMwebClient(pacs.dicomweb)
    instances = client.retrieve_series(STUDY_UID, seg_uid)
    assert len(instances) == 1
    path = str(tmp_path_factory.mktemp("seg") / "seg.dcm")
    instances[0].save_as(path)

    ds = pydicom.dcmread(path)  # plain pydicom reads it
    assert ds.Modality == "SEG" and ds.StudyInstanceUID == STUDY_UID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    seg = hd.seg.segread(path)  # and highdicom
    assert {d.segment_label for d in seg.SegmentSequence} == {"soft tissue", "bone"}
    source = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    series_sops = {str(pydicom.dcmread(os.path.join(d, f), stop_before_pixels=True).SOPInstanceUID)
                   for d in [shared("totalseg_ct_dicom", "dicom_uids")] for f in os.listdir(d)}
    assert source <= series_sops and source, "every SEG frame references an instance of the source series"

    from lib.datastore.seg import read_seg_on_series

    back, names = read_seg_on_series(path, shared("totalseg_ct_dicom", "dicom_uids"))
    assert names == {1: "soft tissue", 2: "bone"}
    assert np.array_equal(back, label), "the SEG holds exactly the saved label, slice by slice"

    # Saved as final: the series leaves the annotation queue at once.
    nxt = requests.post(pacs_server.url + "/activelearning/first", json={"client_id": "c"}, timeout=60).json()
    assert nxt == {}

    # A second read: another server with an empty cache finds the label in the PACS and serves it.
    second = _server(pacs, tmp_path_factory, "pacs_server_2")
    try:
        assert requests.post(second.url + "/activelearning/first", json={}, timeout=60).json() == {}
        train = requests.get(second.url + "/datastore/", params={"output": "train"}, timeout=300)
        assert train.status_code == 200, train.text
        assert [os.path.basename(x["image"]).split(".nii")[0] for x in train.json()] == [SERIES_UID]
        r = requests.get(second.url + "/datastore/label", params={"label": SERIES_UID, "tag": "final"}, timeout=60)
        assert r.status_code == 200, r.text
        path2 = os.path.join(os.path.dirname(second.log_path), "found_again.nii.gz")
        open(path2, "wb").write(r.content)
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(path2)), label)
    finally:
        second.stop()


def test_infer_output_dicom_seg_is_a_seg_of_the_series(pacs_server, tmp_path):
    """output=dicom_seg (monailabel's endpoint needs dcmqi: HTTP 500): a highdicom SEG referencing the series."""
    ct = sitk.ReadImage(_cached_image(pacs_server))
    mask = np.zeros(sitk.GetArrayFromImage(ct).shape, np.uint8)
    mask[10, 200:260, 220:300] = 1  # a mask prompt's slice comes back exactly as given
    prompt = sitk.GetImageFromArray(mask)
    prompt.CopyInformation(ct)
    sitk.WriteImage(prompt, str(tmp_path / "prompt.nii.gz"))
    params = {"prompt_slices": [10], "start_slice": 9, "end_slice": 11, "label_info": [{"name": "liver", "idx": 1}]}
    r = requests.post(f"{pacs_server.url}/infer/sam2_propagate", params={"image": SERIES_UID, "output": "dicom_seg"},
                      files={"params": (None, json.dumps(params)),
                             "label": ("prompt.nii.gz", open(tmp_path / "prompt.nii.gz", "rb"))}, timeout=300)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    path = tmp_path / "result.seg.dcm"
    path.write_bytes(r.content)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.StudyInstanceUID == STUDY_UID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    from lib.datastore.seg import read_seg_on_series

    label, names = read_seg_on_series(str(path), shared("totalseg_ct_dicom", "dicom_uids"))
    assert names == {1: "liver"}
    assert np.array_equal(label[10], mask[10]), "the prompted slice is in the SEG exactly as given"
    assert not label[:9].any() and not label[12:].any(), "nothing outside start_slice..end_slice"

    # a session or an upload has no series in the PACS to reference
    r = requests.post(f"{pacs_server.url}/infer/sam2_point", params={"output": "dicom_seg"},
                      files={"params": (None, json.dumps({"foreground": [[256, 256, 10]]})),
                             "file": ("ct.nii.gz", open(_cached_image(pacs_server), "rb"))}, timeout=120)
    assert r.status_code == 400 and "SeriesInstanceUID" in r.json()["detail"], r.text
    assert pacs_server.alive()


def _stow_body(*files: bytes) -> tuple[bytes, str]:
    boundary = "sam2-3d-test-boundary"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n" for f in files)
    return body + b"--" + boundary.encode() + b"--\r\n", f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_a_seg_stored_like_ohif_becomes_the_final_label_and_a_second_replaces_it(pacs, pacs_server, tmp_path):
    """OHIF stores a SEG with POST {wadoRoot}/studies: through the app it is checked, stored, and made the label."""
    from lib.datastore.seg import write_seg

    folder = shared("totalseg_ct_dicom", "dicom_uids")
    segs_before = len(pacs.series("SEG"))

    # refused, nothing stored: not multipart, not DICOM, a SEG of a series this datastore does not hold
    r = requests.post(f"{pacs_server.url}/proxy/dicom/wado/studies", data=b"x", headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and "multipart/related" in r.json()["detail"], r.text
    body, ctype = _stow_body(b"not a dicom file")
    r = requests.post(f"{pacs_server.url}/proxy/dicom/wado/studies", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 400 and "part 1" in r.json()["detail"], r.text
    label = np.zeros((20, 512, 512), np.uint8)
    label[8:12, 200:300, 200:300] = 1
    stray = pydicom.dcmread(write_seg(folder, label, {1: "stray"}, str(tmp_path / "stray.dcm")))
    stray.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4.5"
    stray.save_as(tmp_path / "stray.dcm")
    body, ctype = _stow_body((tmp_path / "stray.dcm").read_bytes())
    r = requests.post(f"{pacs_server.url}/proxy/dicom/wado/studies", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 422 and "1.2.3.4.5" in r.json()["detail"], r.text
    assert len(pacs.series("SEG")) == segs_before

    stored = []
    for n, (name, rows) in enumerate([("liver", slice(200, 300)), ("liver corrected", slice(210, 320))]):
        label = np.zeros((20, 512, 512), np.uint8)
        label[8:12, rows, 200:300] = 1
        path = write_seg(folder, label, {1: name}, str(tmp_path / f"ohif{n}.dcm"))
        body, ctype = _stow_body(open(path, "rb").read())
        r = requests.post(f"{pacs_server.url}/proxy/dicom/wado/studies", data=body, headers={"Content-Type": ctype},
                          timeout=120)
        assert r.status_code == 200, r.text
        stored.append(str(pydicom.dcmread(path).SeriesInstanceUID))
        assert len(pacs.series("SEG")) == segs_before + n + 1, "the SEG is in the PACS"

        everything = requests.get(f"{pacs_server.url}/datastore/", params={"output": "all"}, timeout=60).json()
        final = everything["objects"][SERIES_UID]["labels"]["final"]
        assert final["info"]["SeriesInstanceUID"] == stored[-1] and final["info"]["label_info"] == [{"name": name, "idx": 1}]
        if n:
            assert final["info"].get("replaces"), "the earlier final label is kept, not overwritten"
        got = requests.get(f"{pacs_server.url}/datastore/label", params={"label": SERIES_UID, "tag": "final"}, timeout=60)
        (tmp_path / "got.nii.gz").write_bytes(got.content)
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "got.nii.gz"))), label)
    stats = requests.get(f"{pacs_server.url}/datastore/", params={"output": "stats"}, timeout=60).json()
    assert stats["completed"] == 1 and stats["total"] == 1
    assert pacs_server.alive()
