"""An OHIF annotator's loop, step by step, in Debian's headless Chromium against a real Orthanc.

Real parts: Orthanc + DICOMweb on loopback holding the real CT series (20 slices), the real server on
that PACS, the OHIF bundle monailabel 0.8.5 serves (unchanged) with the app's app-config.js and the app's
runtime-loaded OHIF extension (apps/sam2_3d/lib/web/ohif/sam2-3d-extension.mjs), Chromium with SwiftShader
WebGL. SAM 2.1 tiny with RANDOM WEIGHTS: masks are noise; the test proves the path.

Steps, all in the MONAI Label mode (screenshots: test-artifacts/ohif-loop/, the ones in docs/images come
from a run of this test):
 1. connect: the panel names the served weights (RANDOM WEIGHTS here);
 2. Next Sample (active learning) proposes the series;
 3. the models OHIF can drive: sam2_point, sam2_box, sam2_2d (not sam2_propagate); Save label with
    nothing drawn yet is refused (422) with the server's reason on screen, and nothing is stored;
 4. a box: two clicks as the box's corners, Run: the extension's "SAM 2 running" toast counts the seconds,
    then "done in N s"; the request carries both clicks, is answered 200 and the mask is drawn;
 5. a bad request (a third click: no box) is answered 400 and the server's reason is on screen;
 6. Save label (the extension's toolbar button): Orthanc holds a DICOM SEG referencing the series, segment
    named "object", voxel-equal to the /infer answer of step 4; /datastore/ lists it as the final label;
 7. correction with the extension's Brush and Eraser, Save label again: a second SEG, which is now the
    final label (the first kept as `replaces`), with the brushed voxels added and the erased ones gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time

import numpy as np
import pydicom
import pytest
import requests
from conftest import REPO, shared
from support.ohif import CHROMIUM, FLAGS, SERIES_UID, STUDY_UID, nrrd_mask, orthanc_and_server

ARTIFACTS = os.path.join(REPO, "test-artifacts", "ohif-loop")
TOAST_RECORDER = """
window.__toasts = [];
new MutationObserver(() => {
  for (const t of document.querySelectorAll('[data-sonner-toast]')) {
    const text = [...t.querySelectorAll('[data-title], [data-description]')].map(n => n.textContent).join(' ');
    if (text && window.__toasts[window.__toasts.length - 1] !== text && !window.__toasts.includes(text)) window.__toasts.push(text);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


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
    # every toast text the page shows, in order (the running one changes while it is up)
    ctx.add_init_script(TOAST_RECORDER)
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
            # Save before any mask: the server refuses an empty final label (422) and says why, on screen
            with page.expect_response(lambda r: "/datastore/label" in r.url, timeout=60_000) as empty:
                page.locator("[data-cy=Sam2SaveLabel]").click()
            assert empty.value.status == 422 and "empty" in empty.value.json()["detail"], empty.value.text()
            _wait_text(page, "refused (HTTP 422)")
            _wait_text(page, empty.value.json()["detail"])

            # 4. a box: two clicks are the box's corners; Run shows the extension's running toast, then the mask
            select.select_option("sam2_box")
            page.locator("tr.clickable-row", has_text="object").click()
            _click(page, views[0], 0.37, 0.47)  # on the liver; OHIF registers a probe point asynchronously
            time.sleep(1)
            _click(page, views[0], 0.47, 0.57)
            time.sleep(1)
            before = views[0].screenshot()
            t0 = time.time()
            with page.expect_response(lambda r: "/infer/sam2_box" in r.url, timeout=600_000) as good:
                run.click()
                _wait_text(page, "SAM 2 running", 10_000)
                try:  # for the screenshot: the counter past 0 s, unless the answer comes first
                    page.wait_for_function(r"/running[\s\S]*: [1-9][0-9]* s|done in/.test(document.body.innerText)", timeout=5_000)
                except Exception:  # noqa: BLE001 - playwright's TimeoutError: the toast still says 0 s
                    pass
                steps.shot("box-running")
            seconds = time.time() - t0
            response = good.value
            params = _params(response.request)
            assert response.status == 200, (response.text(), json.dumps(params))
            assert len(params["foreground"]) == 2 and "roi" not in params, params
            _, box_mask = nrrd_mask(response.body())
            _wait_text(page, "done in")
            toasts = page.evaluate("window.__toasts")
            running = [s for s in toasts if s.startswith("SAM 2 running")]
            assert running and running[0].endswith(": 0 s"), toasts
            if seconds > 3:  # the counter moved while the server worked
                assert any(re.search(r": [1-9][0-9]* s$", s) for s in running), toasts
            # Drawn: the axial view changes (the console line tests/test_ohif_browser.py waits for did not
            # reach Playwright in this flow, though the mask is on screen; so the pixels are compared).
            t0 = time.time()
            while time.time() - t0 < 120 and _changed(before, views[0].screenshot()) < 2000:
                time.sleep(1)
            assert _changed(before, views[0].screenshot()) >= 2000, "the box's answer is drawn on the axial view"
            steps.shot("box-answered")

            # 5. a bad request: a third click is no box; the server's reason is shown, not only OHIF's fixed text
            _click(page, views[0], 0.42, 0.52)
            time.sleep(1)
            with page.expect_response(lambda r: "/infer/sam2_box" in r.url, timeout=120_000) as bad:
                run.click()
            detail = bad.value.json()["detail"]
            assert bad.value.status == 400 and "two foreground clicks" in detail
            assert len(_params(bad.value.request)["foreground"]) == 3
            _wait_text(page, "refused (HTTP 400)")
            _wait_text(page, detail)
            time.sleep(0.5)  # the toast slides in
            steps.shot("error-shown")
            assert _server_line(srv, "/infer/sam2_box", "400"), "the server log has the refused request's line"

            assert not pacs.series("SEG"), "the refused empty save stored nothing"
            # 6. save: the SAM 2 mask the panel drew goes to the PACS as a SEG and becomes the final label
            with page.expect_response(lambda r: "/datastore/label" in r.url, timeout=120_000) as saved:
                page.locator("[data-cy=Sam2SaveLabel]").click()
            assert saved.value.status == 200, saved.value.text()
            assert saved.value.request.method == "PUT" and f"image={SERIES_UID}" in saved.value.url
            assert "tag=final" in saved.value.url
            _wait_text(page, "Label saved")
            # the error notice (20 s, to be read) went away with the user's next action
            page.wait_for_function("!document.body.innerText.includes('refused (HTTP 400)')", timeout=5_000)
            time.sleep(1)  # the "saving" toast slides out
            steps.shot("saved")
            first = _final_seg(pacs, srv)
            pushed, names = _seg_on_series(pacs, first)
            assert names == {1: "object"}, names
            assert np.array_equal(pushed > 0, box_mask > 0), (int((pushed > 0).sum()), int((box_mask > 0).sum()))

            # 7. correct with the brush and the eraser, save again: the new SEG replaces the first as the final label
            for tool, fx, fy in (("Sam2Brush", 0.25, 0.47), ("Sam2Eraser", 0.50, 0.44)):
                page.locator(f"[data-cy={tool}]").click()
                before = views[0].screenshot()
                _stroke(page, views[0], fx, fy)
                changed = _changed(before, views[0].screenshot())
                assert changed >= 500, f"the {tool} stroke is drawn ({changed} pixels changed)"
            steps.shot("brush-correction")
            with page.expect_response(lambda r: "/datastore/label" in r.url, timeout=120_000) as saved:
                page.locator("[data-cy=Sam2SaveLabel]").click()
            assert saved.value.status == 200, saved.value.text()
            _wait_text(page, "Label saved")
            time.sleep(1)
            steps.shot("saved-again")
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        with open(os.path.join(ARTIFACTS, "console.log"), "w") as f:
            f.write("\n".join(logs))

    second = _final_seg(pacs, srv)
    assert second != first
    assert sorted(s["0020000E"]["Value"][0] for s in pacs.series("SEG")) == sorted([first, second])
    corrected, names = _seg_on_series(pacs, second)
    assert names == {1: "object"}, names
    added, removed = int(((corrected > 0) & (pushed == 0)).sum()), int(((pushed > 0) & (corrected == 0)).sum())
    assert added and removed, "the brush added voxels, the eraser removed some"
    print(f"box answered in {seconds:.1f} s; first SEG {int((pushed > 0).sum())} voxels; the correction added "
          f"{added}, removed {removed}")
    stats = requests.get(f"{srv.url}/datastore/", params={"output": "stats"}, timeout=60).json()
    assert stats["completed"] == 1 and stats["total"] == 1, stats
    final = requests.get(f"{srv.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"][SERIES_UID]["labels"]["final"]
    assert final["info"]["SeriesInstanceUID"] == second and final["info"]["replaces"], final["info"]
    assert requests.post(f"{srv.url}/activelearning/first", json={"client_id": "x"}, timeout=60).json() == {}


def _stroke(page, view, fx: float, fy: float) -> None:
    """A 100-pixel drag to the right starting at (fx, fy) of the view."""
    box = view.bounding_box()
    x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
    page.mouse.move(x, y)
    page.mouse.down()
    for d in range(0, 100, 4):
        page.mouse.move(x + d, y + d / 4)
    page.mouse.up()
    time.sleep(1)


def _final_seg(pacs, srv) -> str:
    """The SEG series the datastore lists as the series' final label, after checking Orthanc holds it."""
    final = requests.get(f"{srv.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"][SERIES_UID]
    uid = final["labels"]["final"]["info"]["SeriesInstanceUID"]
    assert uid in [s["0020000E"]["Value"][0] for s in pacs.series("SEG")], "Orthanc holds the saved SEG"
    return uid


def _seg_on_series(pacs, seg_series: str):
    """The SEG as Orthanc holds it, read onto the CT's grid ([k, j, i]), and its segment names."""
    from lib.datastore.seg import read_seg_on_series

    found = requests.post(f"{pacs.url}/tools/find", json={"Level": "Instance", "Query": {"SeriesInstanceUID": seg_series}},
                          timeout=30).json()
    assert len(found) == 1, found
    seg = requests.get(f"{pacs.url}/instances/{found[0]}/file", timeout=60).content
    path = os.path.join(ARTIFACTS, f"{seg_series}.dcm")
    with open(path, "wb") as f:
        f.write(seg)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    return read_seg_on_series(path, shared("totalseg_ct_dicom", "dicom_uids"))


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
