"""Image and label files whose header names another file, or declares a volume that is not there
(issue 16), sent to the real server (SAM 2.1 tiny, RANDOM WEIGHTS) on every route that reads one.

Before ``lib/datastore/header_checks.py``, ITK followed an NRRD ``data file:`` or a MetaImage
``ElementDataFile`` to any file on the server: ``PUT /datastore/label`` stored such labels with 200, and
``sam2_propagate`` with ``label_value`` sent the file's bytes back as the prompted slice; the answer for a
named file that exists (``/etc/shadow``: 415 "fread got only ...") differed from a missing one, so any
path could be probed; a 352-byte NIfTI header claiming 1024^3 voxels was accepted and cost ~2 GB of RSS.
"""

from __future__ import annotations

import gzip
import json
import os

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests
import SimpleITK as sitk
from conftest import MEASURED
from hostile_support import healthy

IMAGE = "spinalcord_t2"  # 60 x 55 x 52 in the shared studies
SIZE = (60, 55, 52)
SECRET = b"TOP-SECRET-server-file-"  # the marker of a file outside the studies folder
COUNTS = {"requests": 0, "refused": 0}


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    """A server file outside the studies folder, as large as the label it stands for (so that ITK, on the
    code before the fix, reads it without a complaint), made of a marker repeated."""
    path = tmp_path_factory.mktemp("outside") / "secret.bin"
    n = int(np.prod(SIZE))
    path.write_bytes((SECRET * (n // len(SECRET) + 1))[:n])
    yield str(path)
    MEASURED["file headers (requests, refused 4xx)"] = dict(COUNTS)


def spinal_grid_nrrd(tmp_path, target, name="label.nrrd", key="data file"):
    """A detached NRRD label with exactly the spinal image's size, spacing, origin and direction."""
    ref = _spinal()
    d = np.array(ref.GetDirection()).reshape(3, 3) * np.array(ref.GetSpacing())
    space_dirs = " ".join("(" + ",".join(f"{v:.10g}" for v in d[:, c]) + ")" for c in range(3))
    lps = ref.GetOrigin()
    text = (f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {' '.join(map(str, ref.GetSize()))}\n"
            f"space: left-posterior-superior\nspace directions: {space_dirs}\n"
            f"space origin: ({','.join(f'{v:.10g}' for v in lps)})\nencoding: raw\n{key}: {target}\n\n")
    path = tmp_path / name
    path.write_bytes(text.encode())
    return str(path)


_SPINAL = {}


def _spinal():
    if "image" not in _SPINAL:
        from conftest import shared

        _SPINAL["image"] = sitk.ReadImage(shared("spinalcord_t2", "image.nii.gz"))
    return _SPINAL["image"]


def metaimage_pointing_at(tmp_path, target, name="label.mha"):
    ref = _spinal()
    text = (f"ObjectType = Image\nNDims = 3\nDimSize = {' '.join(map(str, ref.GetSize()))}\n"
            f"ElementSpacing = {' '.join(map(str, ref.GetSpacing()))}\nOffset = {' '.join(map(str, ref.GetOrigin()))}\n"
            f"TransformMatrix = {' '.join(map(str, ref.GetDirection()))}\nElementType = MET_UCHAR\n"
            f"ElementDataFile = {target}\n")
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def refused(resp, *codes) -> dict:
    COUNTS["requests"] += 1
    assert resp.status_code in codes, (resp.status_code, resp.text[:500])
    assert SECRET not in resp.content and b"root:" not in resp.content
    COUNTS["refused"] += 1
    return resp.json()


def put_label(server, path, tag="final"):
    with open(path, "rb") as f:
        return requests.put(f"{server.url}/datastore/label", params={"image": IMAGE, "tag": tag},
                            files={"label": (os.path.basename(path), f)}, timeout=120)


def propagate_with(server, path, params=None):
    with open(path, "rb") as f:
        return requests.post(f"{server.url}/infer/sam2_propagate", params={"image": IMAGE, "output": "json"},
                             data={"params": json.dumps(params or {"label_value": 0x54, "prompt_slices": [26]})},
                             files={"label": (os.path.basename(path), f)}, timeout=300)


def test_nrrd_label_naming_a_server_file_is_refused_on_save(server, secret, tmp_path):
    for key in ("data file", "datafile"):
        for target in (secret, "/etc/passwd", "/dev/zero"):
            body = refused(put_label(server, spinal_grid_nrrd(tmp_path, target, key=key)), 400)
            assert "separate data file" in body["detail"]
    # nothing was stored under the tag
    assert requests.get(f"{server.url}/datastore/label", params={"label": IMAGE, "tag": "final"}, timeout=30).status_code == 404
    assert healthy(server.url)


def test_nrrd_label_naming_a_server_file_never_reaches_the_answer_of_sam2_propagate(server, secret, tmp_path):
    # label_value 0x54 = "T", the marker's first byte: before the fix, this slice came back as the file's bytes
    body = refused(propagate_with(server, spinal_grid_nrrd(tmp_path, secret)), 400)
    assert "separate data file" in body["detail"]
    body = refused(propagate_with(server, spinal_grid_nrrd(tmp_path, "/etc/passwd")), 400)
    assert "separate data file" in body["detail"]


def test_a_named_file_that_exists_and_one_that_does_not_get_the_same_answer(server, secret, tmp_path):
    saved, propagated = set(), set()  # per route: one answer, whatever the named file is
    for target in ("/etc/shadow", "/etc/passwd", secret, "/nonexistent/file", str(tmp_path / "missing.raw")):
        resp = put_label(server, spinal_grid_nrrd(tmp_path, target))
        saved.add((resp.status_code, refused(resp, 400)["detail"]))
        resp = propagate_with(server, spinal_grid_nrrd(tmp_path, target))
        propagated.add((resp.status_code, refused(resp, 400)["detail"]))
    assert len(saved) == 1 and len(propagated) == 1, (saved, propagated)


def test_metaimage_with_an_outside_element_data_file_is_refused(server, secret, tmp_path):
    body = refused(put_label(server, metaimage_pointing_at(tmp_path, secret)), 400)
    assert "separate data file" in body["detail"]
    for name in ("label.mha", "label.mhd"):
        body = refused(propagate_with(server, metaimage_pointing_at(tmp_path, secret, name)), 400)
        assert "separate data file" in body["detail"]


def test_nifti_pair_and_analyze_headers_are_refused(server, tmp_path):
    image = nib.Nifti1Pair(np.zeros((8, 8, 4), np.int16), np.eye(4))  # magic "ni1": voxels in a .img beside it
    nib.save(image, str(tmp_path / "pair.hdr"))
    (tmp_path / "pair.nii").write_bytes((tmp_path / "pair.hdr").read_bytes())  # the header under a .nii name
    with open(tmp_path / "pair.nii", "rb") as f:
        resp = requests.put(f"{server.url}/datastore/image", params={"image": "pair_probe"},
                            files={"file": ("pair.nii", f)}, timeout=120)
    body = refused(resp, 400)
    assert "separate data file" in body["detail"]
    assert "pair_probe" not in requests.get(f"{server.url}/datastore/?output=all", timeout=30).json().get("objects", {})


def huge_nifti(path, dtype=np.float32, gz=False):
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    data = header.binaryblock + b"\0" * 4  # 352 bytes: the header and the extension flag, no voxel
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


def test_a_tiny_header_declaring_a_huge_volume_is_refused_before_allocation(server, tmp_path):
    process = psutil.Process(server.proc.pid)
    rss_before = process.memory_info().rss
    cases = [(huge_nifti(tmp_path / "huge.nii"), 413, "max_volume_gb"),  # 4 GiB declared > 2 GiB bound
             (huge_nifti(tmp_path / "huge.nii.gz", gz=True), 413, "max_volume_gb"),
             (huge_nifti(tmp_path / "huge_u8.nii", dtype=np.uint8), 422, "truncated")]  # 1 GiB declared, 0 present
    for path, status, words in cases:
        assert os.path.getsize(path) <= 352
        with open(path, "rb") as f:
            resp = requests.put(f"{server.url}/datastore/image", params={"image": "huge_probe"},
                                files={"file": (os.path.basename(path), f)}, timeout=120)
        assert words in refused(resp, status)["detail"]
        with open(path, "rb") as f:  # the same file as an image uploaded with an inference
            resp = requests.post(f"{server.url}/infer/sam2_2d", params={"output": "json"},
                                 data={"params": json.dumps({"foreground": [[1, 1, 1]], "slice": 1})},
                                 files={"file": (os.path.basename(path), f)}, timeout=120)
        assert words in refused(resp, status)["detail"]
    grown = (process.memory_info().rss - rss_before) / 2**20
    MEASURED["server RSS growth over 6 tiny-header huge-volume uploads (MiB)"] = round(grown, 1)
    assert grown < 300, f"the server grew by {grown:.0f} MiB on volumes it refused"
    assert healthy(server.url)


def test_a_session_upload_naming_a_server_file_is_refused(server, secret, tmp_path):
    path = spinal_grid_nrrd(tmp_path, secret, name="volume.nrrd")
    with open(path, "rb") as f:  # what Slicer sends for a volume loaded from its own disk
        resp = requests.put(f"{server.url}/session/", files=[("files", ("volume.nrrd", f))], timeout=120)
    assert "separate data file" in refused(resp, 400)["detail"]
    with open(huge_nifti(tmp_path / "huge_session.nii"), "rb") as f:
        resp = requests.put(f"{server.url}/session/", files=[("files", ("huge_session.nii", f))], timeout=120)
    assert "max_volume_gb" in refused(resp, 413)["detail"]


def test_good_files_in_every_accepted_format_still_work(server, tmp_path):
    """The checks refuse only what they should: the spinal label as .nii.gz, .nrrd, .mha and .seg.nrrd saves."""
    from conftest import shared

    label = sitk.ReadImage(shared("spinalcord_t2", "label.nii.gz"))
    for name in ("l.nii.gz", "l.nii", "l.nrrd", "l.mha", "l.seg.nrrd"):
        sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8), str(tmp_path / name), useCompression=name.endswith(".gz"))
        resp = put_label(server, str(tmp_path / name), tag="headers_ok")
        assert resp.status_code == 200, (name, resp.text)
