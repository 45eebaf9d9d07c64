"""What the OHIF browser tests share: the CT series' UIDs, Debian's Chromium and its flags, and a real
Orthanc holding that series with the app's server on it (one stack per test module: the loop test saves
a label, which the other's next-sample step must not see)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import Server, shared

from support import orthanc as orthanc_support

STUDY_UID = "1.2.826.0.1.3680043.8.498.12198003171701915436914695260859955559"
SERIES_UID = "1.2.826.0.1.3680043.8.498.97006710487569071056074638989990160491"
CHROMIUM = os.environ.get("SAM2_3D_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def nrrd_mask(body: bytes) -> tuple[dict, np.ndarray]:
    """The header fields and the ``[k, j, i]`` array of the raw uint8 NRRD OHIF's panel asks /infer for."""
    head, _, data = body.partition(b"\n\n")
    fields = dict(line.split(": ", 1) for line in head.decode().splitlines()[1:] if ": " in line)
    sizes = [int(s) for s in fields["sizes"].split()]
    return fields, np.frombuffer(data, dtype=np.uint8).reshape(sizes[::-1])  # i fastest


def orthanc_and_server(tmp_path_factory, name: str):
    """Yield (Orthanc, Server) for a module fixture; skip, saying why, without Orthanc, Chromium or playwright."""
    why = orthanc_support.available()
    if why:
        pytest.skip(why)
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium not found at {CHROMIUM} (run scripts/setup_system.sh: Debian package 'chromium')")
    pytest.importorskip("playwright", reason="playwright (Python) is not installed: pip install -r requirements-test.txt")
    o = orthanc_support.Orthanc(str(tmp_path_factory.mktemp(f"{name}_orthanc")))
    status = o.upload_series_with_sop_class(shared("totalseg_ct_dicom", "dicom_uids"))
    assert [s for _, s, _ in status] == [200] * 20, status
    work = tmp_path_factory.mktemp(f"{name}_server")
    srv = Server(o.dicomweb, str(work), env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(work / "cache")})
    try:
        yield o, srv
    finally:
        srv.stop()
        o.stop()
