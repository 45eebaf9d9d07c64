"""The engine's propagation core (frames, model, sessions) must run where only torch, numpy and pillow are
installed, with the sam2 package: the GPU benchmark machine (docs/benchmark.md) has no SimpleITK and no
monailabel. Each check runs a child Python in which importing either raises ImportError.

SAM 2.1 tiny with RANDOM weights (see conftest): masks are meaningless, equality between paths is exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from conftest import APP_DIR, REPO, TEST_IMAGE_SIZE, shared

from lib.engine import intensity
from lib.engine.engine import SlicePrompt

BLOCK = "import sys\nfor name in ('SimpleITK', 'monailabel'):\n    sys.modules[name] = None  # import -> ImportError\n"


def _child(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=APP_DIR)
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def test_a_volume_read_with_nibabel_propagates_as_the_file_does(engine, tmp_path):
    path = shared("spinalcord_t2", "image.nii.gz")
    out = tmp_path / "mask.npy"
    code = f"""
import numpy as np, nibabel as nib
from lib.engine import intensity
from lib.engine.build import engine_from_conf
from lib.engine.prompts import SlicePrompt
array = np.ascontiguousarray(np.asanyarray(nib.load({path!r}).dataobj).transpose(2, 1, 0))
engine = engine_from_conf({{"checkpoint": "sam2.1_hiera_tiny", "random_weights": "true",
                           "image_size": "{TEST_IMAGE_SIZE}", "device": "cpu"}})
s = engine.open_array("cord", array, "child", intensity.IntensityPreset("mr"))
s.set_prompts({{25: SlicePrompt(points=((27.0, 30.0),), labels=(1,))}})
np.save({str(out)!r}, s.propagate(22, 28, auto_stop=0).mask)
assert "SimpleITK" not in sys.modules or sys.modules["SimpleITK"] is None
"""
    child = _child(code)
    assert child.returncode == 0, child.stderr[-3000:]
    s = engine.open(path, "core-file", intensity.IntensityPreset("mr"))
    s.set_prompts({25: SlicePrompt(points=((27.0, 30.0),), labels=(1,))})
    expected = s.propagate(22, 28, auto_stop=0).mask
    assert expected[22:29].any()
    np.testing.assert_array_equal(np.load(out), expected)


def test_the_gpu_benchmark_runs_its_whole_course_on_a_cpu(tmp_path):
    """benchmarks/bench_gpu.py end to end at toy size on the CPU, SimpleITK and monailabel absent, with
    --compile: every figure of its table is produced (the GPU run is the same code with --device cuda)."""
    report = tmp_path / "gpu.md"
    volume = shared("brats2013", "pat0001", "flair.nii.gz")
    code = f"""
import runpy
sys.argv = ["bench_gpu.py", "--device", "cpu", "--model", "tiny", "--image-size", "128", "--runs", "1",
            "--volume", {volume!r}, "--slices", "6", "--click-slice", "65", "--long-slices", "6",
            "--long-size", "64", "--feature-batch-size", "1", "--compile", "reduce-overhead",
            "--compile-cache", {str(tmp_path / "cache")!r}, "--out", {str(report)!r}]
runpy.run_path("benchmarks/bench_gpu.py", run_name="__main__")
"""
    child = _child(code, timeout=900)
    assert child.returncode == 0, child.stderr[-3000:]
    text = report.read_text()
    raw = json.loads(text.split("```json", 1)[1].split("```", 1)[0])
    r = raw["results"][0]
    assert r["slices"] == 6 and r["click_slice"] == 3
    for key in ("first_s", "cached_s", "bare_loop_s", "correction_s", "click2d_s"):
        assert len(r[key]) >= 1 and all(v > 0 for v in r[key]), key
    assert r["correction"]["how"] == "incremental"
    assert set(r["encoder_ms_per_slice_by_batch"]) == {"1", "2", "4"} and r["features"]["dtype"] == "float32"
    assert r["builtin"][0]["tracked"] >= 6 and r["builtin"][0]["init_state_s"] > 0
    # on the CPU in fp32 our masks are stock SAM 2's on the same frames, exactly
    assert r["dice_vs_stock_same_frames"] == 1.0 and r["voxels_equal_vs_stock"] == 1.0
    assert r["long"]["shape"] == [6, 64, 64] and r["long"]["peak_gpu_gb"] is None
    assert "first propagation (new volume)" in text and "stock JPEG-folder pipeline" in text
    # --compile: the server's start-up compile, a second start from its disk cache, agreement with eager
    assert r["compile"]["cold"]["fxgraph_cache_miss"] > 0
    assert r["compile"]["cached"]["fxgraph_cache_miss"] == 0 and r["compile"]["cached"]["fxgraph_cache_hit"] > 0
    assert r["dice_vs_eager"] >= 0.999 and r["compiled_calls"]["memory_attention/compiled"] > 0
    assert "next start from the disk cache" in text
