"""An OHIF annotator's loop, step by step, in Debian's headless Chromium against a real Orthanc.

Real parts: Orthanc + DICOMweb on loopback holding the real CT series (20 slices), the real server on
that PACS, the OHIF bundle monailabel 0.8.5 serves (unchanged) with the app's app-config.js, Chromium
with SwiftShader WebGL. SAM 2.1 tiny with RANDOM WEIGHTS: masks are noise; the test proves the path.

Steps (screenshots: test-artifacts/ohif-loop/, the ones in docs/images come from a run of this test):
 1. MONAI Label mode, connect: the panel names the served weights (RANDOM WEIGHTS here);
 2. Next Sample (active learning) proposes the series;
 3. the models OHIF can drive: sam2_point, sam2_box, sam2_2d (not sam2_propagate);
 4. a box: two clicks as the box's corners, Run: the request carries both clicks, is answered 200 and
    the mask is drawn (the answer equals the roi's: tests/test_ohif_server.py);
 5. a bad request (a third click: no box) is answered 400 with the reason, and OHIF shows its fixed
    failure text (the bundle never reads the answer's body: the reason is in the server log line);
 6. correction and save in OHIF's Segmentation mode: brush, "Download DICOM SEG" (its "Export DICOM SEG"
    throws a TypeError in this build), then the study list's Upload, which stores it through the app:
    Orthanc holds the SEG, and /datastore/ counts the series labelled and lists the final label.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time

import pydicom
import pytest
import requests
from conftest import REPO
from support.ohif import CHROMIUM, FLAGS, SERIES_UID, STUDY_UID, orthanc_and_server

ARTIFACTS = os.path.join(REPO, "test-artifacts", "ohif-loop")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    yield from orthanc_and_server(tmp_path_factory, "loop")


class Steps:
    """Screenshots numbered in the order the steps happen."""

    def __init__(self, page):
        self.page, self.n = page, 0

    def shot(self, name: str) -> None:
        self.n += 1
        self.page.screenshot(path=os.path.join(ARTIFACTS, f"{self.n}-{name}.png"))


def _page(ctx, logs):
    # loopback only: the bundle links Google Fonts; nothing may leave the machine
    ctx.route(lambda url: not url.startswith(("http://127.0.0.1", "data:", "blob:")), lambda r: r.abort())
    page = ctx.new_page()
    page.on("console", lambda m: logs.append(f"[{m.type}] {m.text[:400]}"))
    page.on("pageerror", lambda e: logs.append(f"[pageerror] {str(e)[:400]}"))
    return page


def _viewports(page):
    big = [c for c in page.locator("canvas").all() if (c.bounding_box() or {}).get("width", 0) > 200]
    return sorted(big, key=lambda c: c.bounding_box()["x"])


def _click(page, view, fx: float, fy: float) -> None:
    box = view.bounding_box()
    page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)


def _changed(a: bytes, b: bytes) -> int:
    """Pixels that differ clearly between two screenshots of one element."""
    import io

    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.int16)
    return int((np.abs(x - y).sum(axis=2) > 30).sum()) if x.shape == y.shape else x.size


def _params(request) -> dict:
    return json.loads(request.post_data.split("\r\n\r\n", 1)[1].split("\r\n--", 1)[0])


def _wait_text(page, text: str, timeout_ms: int = 60_000) -> None:
    page.wait_for_function(f"document.body.innerText.includes({json.dumps(text)})", timeout=timeout_ms)


@pytest.mark.timeout(1200)
def test_ohif_loop_next_sample_box_error_progress_correct_save(stack):
    from playwright.sync_api import sync_playwright

    pacs, srv = stack
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    os.makedirs(ARTIFACTS)
    logs: list[str] = []
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as p:
            # Downloads only where the SEG is downloaded: with them accepted, the MONAI Label panel's result
            # (an XHR answered with Content-Disposition: attachment) never reached its code here.
            ctx = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1400, "height": 900},
            )
            page = _page(ctx, logs)
            steps = Steps(page)

            # 1. MONAI Label mode, connected: the app's name says which weights answer
            page.goto(f"{srv.url}/ohif/monai-label?StudyInstanceUIDs={STUDY_UID}")
            page.wait_for_selector("#monailabelServerURL", timeout=90_000)
            page.get_by_text("Confirm and Hide").click()
            _wait_text(page, "/20)", 120_000)
            page.fill("#monailabelServerURL", srv.url + "/")
            with page.expect_response(lambda r: r.url.endswith("/info/")) as info:
                page.locator("#monailabelServerURL").locator("xpath=../../td/button").click()
            assert "sam2_propagate" not in info.value.json()["models"]
            _wait_text(page, "RANDOM WEIGHTS")
            steps.shot("connected-weights-named")

            # 2. Next Sample: the active-learning strategy proposes the unlabelled series
            page.get_by_text("Active Learning").click()
            with page.expect_response(lambda r: "/activelearning/" in r.url) as nxt:
                page.get_by_role("button", name="Next Sample").click()
            assert nxt.value.status == 200 and nxt.value.json()["id"] == SERIES_UID
            _wait_text(page, SERIES_UID)
            steps.shot("next-sample")
            page.keyboard.press("Escape")  # the form closes on Esc (its OK button only opens the series)
            page.wait_for_selector(".ReactModal__Overlay", state="detached", timeout=10_000)

            # 3. the models OHIF can drive
            page.get_by_text("Point Prompts").click()
            select = page.locator("select").filter(has=page.locator("option[value='sam2_point']")).first
            assert [o.strip() for o in select.locator("option").all_inner_texts()] == ["sam2_point", "sam2_box", "sam2_2d"]
            run = select.locator("xpath=ancestor::table[1]").locator("button", has_text="Run")
            views = _viewports(page)[:3]
            assert len(views) == 3, "the MONAI Label mode shows three viewports"

            # 4. a box: two clicks are the box's corners; Run shows OHIF's progress toast, then the mask
            select.select_option("sam2_box")
            page.locator("tr.clickable-row", has_text="object").click()
            _click(page, views[0], 0.37, 0.47)  # on the liver; OHIF registers a probe point asynchronously
            time.sleep(1)
            _click(page, views[0], 0.47, 0.57)
            time.sleep(1)
            before = views[0].screenshot()
            with page.expect_response(lambda r: "/infer/sam2_box" in r.url, timeout=600_000) as good:
                run.click()
            response = good.value
            params = _params(response.request)
            assert response.status == 200, (response.text(), json.dumps(params))
            assert len(params["foreground"]) == 2 and "roi" not in params, params
            # Drawn: the axial view changes (the console line tests/test_ohif_browser.py waits for did not
            # reach Playwright in this flow, though the mask is on screen; so the pixels are compared).
            t0 = time.time()
            while time.time() - t0 < 120 and _changed(before, views[0].screenshot()) < 2000:
                time.sleep(1)
            assert _changed(before, views[0].screenshot()) >= 2000, "the box's answer is drawn on the axial view"
            steps.shot("box-answered")

            # 5. a bad request: a third click is no box; the 400 names the problem, OHIF shows its fixed text
            _click(page, views[0], 0.42, 0.52)
            time.sleep(1)
            with page.expect_response(lambda r: "/infer/sam2_box" in r.url, timeout=120_000) as bad:
                run.click()
            assert bad.value.status == 400 and "two foreground clicks" in bad.value.text()
            assert len(_params(bad.value.request)["foreground"]) == 3
            _wait_text(page, "Failed to Run Inference for Point Prompts")
            time.sleep(0.5)  # the toast slides in
            steps.shot("error-shown")
            assert _server_line(srv, "/infer/sam2_box", "400"), "the server log has the refused request's line"

            # 6. correct and save in the Segmentation mode: brush, download the SEG, upload it
            ctx.close()
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            ctx = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            page = steps.page = _page(ctx, logs)
            page.goto(f"{srv.url}/ohif/segmentation?StudyInstanceUIDs={STUDY_UID}")
            page.get_by_text("Confirm and Hide").click()
            _wait_text(page, "/20)", 120_000)
            page.get_by_text("Add Segmentation").click()
            page.locator("[data-cy=Brush]").click()
            pane = page.locator("[data-cy=viewport-pane]").first.bounding_box()
            x, y = pane["x"] + pane["width"] * 0.42, pane["y"] + pane["height"] * 0.5
            page.mouse.move(x, y)
            page.mouse.down()
            for d in range(0, 60, 3):
                page.mouse.move(x + d, y + d / 2)
            page.mouse.up()
            time.sleep(1)
            steps.shot("brush-correction")
            page.get_by_text("Segmentation 1", exact=True).first.locator("xpath=preceding::*[name()='svg'][1]").click()
            page.get_by_text("Export & Download").hover()
            steps.shot("segmentation-menu")
            with page.expect_download() as download:
                page.get_by_text("Download DICOM SEG").click()
            seg_path = os.path.join(ARTIFACTS, "ohif-seg.dcm")
            download.value.save_as(seg_path)
            seg = pydicom.dcmread(seg_path)
            assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID

            page.goto(f"{srv.url}/ohif/")
            page.get_by_text("Upload", exact=True).click()
            with page.expect_response(lambda r: r.request.method == "POST" and "/studies" in r.url, timeout=120_000) as stow:
                page.locator("input[type=file]").first.set_input_files(seg_path)
            assert stow.value.status == 200, stow.value.text()
            time.sleep(2)
            steps.shot("uploaded")
            ctx.close()
            browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        with open(os.path.join(ARTIFACTS, "console.log"), "w") as f:
            f.write("\n".join(logs))

    # the PACS holds the SEG; the app counts the series labelled and lists the final label
    segs = pacs.series("SEG")
    assert [s["0020000E"]["Value"][0] for s in segs] == [str(seg.SeriesInstanceUID)]
    stats = requests.get(f"{srv.url}/datastore/", params={"output": "stats"}, timeout=60).json()
    assert stats["completed"] == 1 and stats["total"] == 1, stats
    final = requests.get(f"{srv.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"][SERIES_UID]["labels"]["final"]
    assert final["info"]["SeriesInstanceUID"] == str(seg.SeriesInstanceUID)
    assert requests.post(f"{srv.url}/activelearning/first", json={"client_id": "x"}, timeout=60).json() == {}


def _server_line(srv, path: str, status: str) -> str:
    t0 = time.time()
    while time.time() - t0 < 10:
        text = open(srv.log_path).read()
        found = [m.group(0) for m in re.finditer(r"request POST (\S+) .*status=(\d+)", text)
                 if m.group(1) == path and m.group(2) == status]
        if found:
            return found[-1]
        time.sleep(0.3)
    return ""
