"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) for the tests, in a temp folder.

Orthanc has no HTTP bind-address option: it listens on every interface, so the config sets
``RemoteAccessAllowed: false`` (requests from anything but loopback are refused), switches the DICOM
port off (only DICOMweb is used), and the tests only ever talk to 127.0.0.1.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import time

import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def available() -> str:
    """'' when Orthanc and its DICOMweb plugin are installed, else why not (for pytest.skip)."""
    if not os.path.exists(ORTHANC):
        return "Orthanc is not installed (run scripts/setup_system.sh: Debian package 'orthanc')"
    if not glob.glob(DICOMWEB_PLUGIN + "*"):
        return "Orthanc's DICOMweb plugin is not installed (run scripts/setup_system.sh: 'orthanc-dicomweb')"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, workdir: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        os.makedirs(workdir, exist_ok=True)
        config = {
            "Name": "sam2-3d-tests",
            "StorageDirectory": os.path.join(workdir, "storage"),
            "IndexDirectory": os.path.join(workdir, "index"),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            # No GDCM plugin: Orthanc never has to transcode (see apps/sam2_3d/lib/datastore/wado_proxy.py);
            # the Debian one (orthanc-gdcm 1.5) segfaulted after a dozen JPEG 2000 transcodes here.
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "StableAge": 1,
            "SaveJobs": False,
        }
        self.config_path = os.path.join(workdir, "orthanc.json")
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=1)
        self.log_path = os.path.join(workdir, "orthanc.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([ORTHANC, self.config_path], stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if requests.get(self.dicomweb + "/studies", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"Orthanc not ready after {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        with open(self.log_path) as f:
            return "".join(f.readlines()[-n:])

    def upload_folder(self, folder: str) -> list[tuple[str, int, str]]:
        """POST every file to Orthanc's REST /instances; returns (file, status, body excerpt) per file."""
        out = []
        for path in sorted(glob.glob(os.path.join(folder, "*"))):
            with open(path, "rb") as f:
                r = requests.post(self.url + "/instances", data=f.read(), timeout=30)
            out.append((os.path.basename(path), r.status_code, r.text[:300]))
        return out

    def upload_series_with_sop_class(self, folder: str) -> list[tuple[str, int, str]]:
        """Upload a series after copying each file's SOP Class UID from its file meta into the dataset.

        The TotalSegmentator series (``dicom_uids``) has an empty (0008,0016) SOP Class UID in every
        dataset; the real one is only in the file meta (0002,0002). Orthanc stores it as is, but OHIF picks
        a viewer for a series by (0008,0016): with it empty, OHIF makes no display set and the viewport
        stays black (the "warning icon" on the series). A PACS fed by a scanner has it filled.
        """
        import pydicom

        out = []
        for path in sorted(glob.glob(os.path.join(folder, "*"))):
            ds = pydicom.dcmread(path)
            if not str(getattr(ds, "SOPClassUID", "") or "").strip():
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
            import io

            buf = io.BytesIO()
            ds.save_as(buf, write_like_original=True)
            r = requests.post(self.url + "/instances", data=buf.getvalue(), timeout=30)
            out.append((os.path.basename(path), r.status_code, r.text[:300]))
        return out

    def series(self, modality: str | None = None) -> list[dict]:
        params = {"Modality": modality} if modality else {}
        r = requests.get(self.dicomweb + "/series", params=params, headers={"Accept": "application/dicom+json"}, timeout=10)
        r.raise_for_status()
        return r.json() if r.text.strip() else []

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
