"""OHIF (the build bundled with monailabel, served at /ohif/) in Debian's headless Chromium, driven by Playwright.

Real parts: Orthanc + DICOMweb on loopback holding the real CT series, the real server on that PACS, the
real OHIF bundle and its MONAI Label extension, Chromium with SwiftShader WebGL. SAM 2.1 tiny has RANDOM
WEIGHTS (256 px), so the drawn mask is meaningless; the test proves the path: the panel lists the SAM 2
models, a click on the image sends a real infer request (voxel [i, j, k] of the series), the returned
NRRD is the series' size, and it is drawn on the slice that was clicked. Screenshots: test-artifacts/ohif/.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import numpy as np
import pytest
from conftest import REPO
from support.ohif import CHROMIUM, FLAGS, SERIES_UID, STUDY_UID, nrrd_mask, orthanc_and_server

ARTIFACTS = os.path.join(REPO, "test-artifacts", "ohif")


@pytest.fixture(scope="module")
def ohif_stack(tmp_path_factory):
    yield from orthanc_and_server(tmp_path_factory, "ohif")


@pytest.mark.timeout(900)
def test_ohif_lists_models_click_sends_infer_and_mask_is_drawn(ohif_stack):
    from playwright.sync_api import sync_playwright

    _, srv = ohif_stack
    os.makedirs(ARTIFACTS, exist_ok=True)
    logs: list[str] = []
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1400, "height": 900}
            )
            page = ctx.new_page()
            page.on("console", lambda m: logs.append(f"[{m.type}] {m.text[:400]}"))
            page.on("pageerror", lambda e: logs.append(f"[pageerror] {str(e)[:400]}"))
            # Loopback only: the OHIF bundle links Google Fonts; those requests are aborted here (the page
            # falls back to local fonts), and nothing else may leave the machine.
            outside = []

            def block(route):
                outside.append(route.request.url)
                route.abort()

            ctx.route(lambda url: not url.startswith(("http://127.0.0.1", "data:", "blob:")), block)

            page.goto(f"{srv.url}/ohif/monai-label?StudyInstanceUIDs={STUDY_UID}")
            page.wait_for_selector("#monailabelServerURL", timeout=90_000)
            page.get_by_text("Confirm and Hide").click()
            # The image is on screen when the viewport overlay shows the slice counter.
            page.wait_for_function("document.body.innerText.includes('/20)')", timeout=120_000)
            assert "Cannot transcode" not in "\n".join(logs)

            # The panel points at :8000 by default; point it at this server, as a user does.
            page.fill("#monailabelServerURL", srv.url + "/")
            page.locator("#monailabelServerURL").locator("xpath=../../td/button").click()
            page.get_by_text("Point Prompts").click()
            select = page.locator("select").filter(has=page.locator("option[value='sam2_point']")).first
            options = select.locator("option").all_inner_texts()
            # sam2_propagate needs a mask file, which OHIF cannot send: /info/ leaves it out for OHIF
            assert [o.strip() for o in options] == ["sam2_point", "sam2_box", "sam2_2d"]
            select.select_option("sam2_point")
            page.locator("tr.clickable-row", has_text="object").click()

            # The three viewports (axial, sagittal, coronal), left to right; thumbnails are canvases too.
            views = sorted((c for c in page.locator("canvas").all() if (c.bounding_box() or {}).get("width", 0) > 200),
                           key=lambda c: c.bounding_box()["x"])[:3]
            assert len(views) == 3, "the MONAI Label mode shows three viewports"
            box = views[0].bounding_box()  # click on the axial viewport, a little left of centre (liver)
            page.mouse.click(box["x"] + box["width"] * 0.40, box["y"] + box["height"] * 0.48)
            time.sleep(1)
            page.screenshot(path=os.path.join(ARTIFACTS, "1-click.png"))
            before = [v.screenshot() for v in views]

            run = select.locator("xpath=ancestor::table[1]").locator("button", has_text="Run")
            with page.expect_response(lambda r: "/infer/sam2_point" in r.url, timeout=400_000) as response_info:
                run.click()
            response = response_info.value
            assert response.status == 200, response.text()
            request = response.request
            assert f"image={SERIES_UID}" in request.url and "output=image" in request.url
            params = json.loads(request.post_data.split("\r\n\r\n", 1)[1].split("\r\n--", 1)[0])
            assert params["result_extension"] == ".nrrd" and params["result_dtype"] == "uint8"
            (i, j, k), = params["foreground"]
            assert 0 <= i < 512 and 0 <= j < 512 and 0 <= k < 20, params

            with open(os.path.join(ARTIFACTS, "result.nrrd"), "wb") as f:
                f.write(response.body())
            fields, mask = nrrd_mask(response.body())
            assert fields["type"] in ("unsigned char", "uint8") and fields["encoding"] == "raw"
            assert mask.shape == (20, 512, 512)
            # OHIF has no hook for "labelmap updated"; its extension logs this line when it is.
            t0 = time.time()
            while time.time() - t0 < 60 and not any("updated the segmentation's scalar data" in m for m in logs):
                time.sleep(0.5)
            assert any("updated the segmentation's scalar data" in m for m in logs), "\n".join(logs[-30:])
            time.sleep(2)
            page.screenshot(path=os.path.join(ARTIFACTS, "2-result.png"))
            after = [v.screenshot() for v in views]
            unexpected = [u for u in outside if not u.startswith("https://fonts.googleapis.com/")]
            assert not unexpected, f"the page tried to leave loopback: {unexpected[:5]}"
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        with open(os.path.join(ARTIFACTS, "console.log"), "w") as f:
            f.write("\n".join(logs))

    # Drawn: every viewport whose plane holds voxels of the returned mask must have changed. The planes
    # shown: axial = the clicked slice k, sagittal/coronal = the middle column/row ("257/512").
    import io

    from PIL import Image

    planes = {"axial": mask[k], "sagittal": mask[:, :, 256], "coronal": mask[:, 256, :]}
    expected = [name for name, plane in planes.items() if plane.any()]
    if not expected:
        pytest.skip("the random-weight SAM 2 returned no voxel on any displayed plane: nothing to see drawn")
    for (name, plane), a, b in zip(planes.items(), before, after):
        a = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.int16)
        changed = int((np.abs(a - b).sum(axis=2) > 30).sum())
        if name in expected:
            assert changed > 20, f"the returned mask ({int(plane.sum())} voxels on the {name} plane) is not drawn there"
