#!/usr/bin/env python
"""Why the server runs every torch call on one thread (lib/engine/torch_thread.py): the same propagation
timed on the thread that built the model, in another thread, and in a thread that built its own model.

    python benchmarks/bench_torch_thread.py            # SAM 2.1 tiny, RANDOM weights, 256 px, CPU

Each mode runs in a fresh process (libgomp's thread teams are per process): five propagations of one
click through all 30 slices of ../shared/data/totalseg_ct_small (features cached after the first).
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
VOLUME = os.path.join(REPO, "..", "shared", "data", "totalseg_ct_small", "image.nii.gz")

CHILD = r"""
import sys, time
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, "apps/sam2_3d")
from lib.engine import intensity
from lib.engine.build import engine_from_conf
from lib.engine.prompts import SlicePrompt

mode, path = sys.argv[1], sys.argv[2]
conf = {"checkpoint": "sam2.1_hiera_tiny", "random_weights": "true", "image_size": "256", "device": "cpu"}
pool = ThreadPoolExecutor(1)
engine = pool.submit(engine_from_conf, conf).result() if mode == "built-in-the-thread" else engine_from_conf(conf)
n = [0]

def once():
    n[0] += 1
    s = engine.open(path, f"c{n[0]}", intensity.IntensityPreset("auto"))
    s.set_prompts({15: SlicePrompt(points=((61.0, 50.0),), labels=(1,))})
    t = time.perf_counter()
    s.propagate(0, 29, auto_stop=0)
    return time.perf_counter() - t

times = [once() if mode == "building-thread" else pool.submit(once).result() for _ in range(5)]
print(mode, " ".join(f"{t:.2f}" for t in times))
"""


def main():
    print("mode: seconds of 5 propagations (30 slices each; the first encodes the features)")
    for mode in ("building-thread", "other-thread", "built-in-the-thread"):
        out = subprocess.run([sys.executable, "-c", CHILD, mode, VOLUME], cwd=REPO, capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith(mode)]
        print(line[0] if line else f"{mode}: failed\n{out.stderr[-2000:]}", flush=True)


if __name__ == "__main__":
    main()
