#!/usr/bin/env python
"""How time and memory grow with the number of slices: one click, a full propagation, 512 x 512 x N.

Each N runs in a fresh process (so peak RSS is that run's own), through the engine the server uses:
frames are made one slice at a time from the uint8 volume, image features sit in a byte-bounded LRU
cache, and on a GPU SAM 2's per-slice state moves to CPU memory above ``offload_state_above`` slices.
The volume is synthetic (a bright disk drifting through noise), the weights RANDOM (SAM 2.1 config
built without a checkpoint): only work and memory are measured, not masks.

    python benchmarks/bench_long_volume.py --slices 75,150,300,600 --image-size 256 \
        --out benchmarks/results/long-volume-cpu-256.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "apps", "sam2_3d"))


def synthetic_volume(n: int, path: str, size: int = 512) -> None:
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    vol = rng.normal(0, 20, (n, size, size)).astype(np.int16)
    for k in range(n):
        cy, cx = size / 2 + 40 * np.sin(k / 40), size / 2 + 40 * np.cos(k / 40)
        vol[k][(yy - cy) ** 2 + (xx - cx) ** 2 < 60**2] += 400
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing((0.8, 0.8, 1.5))
    sitk.WriteImage(image, path)


def _status_mb(field: str) -> float:
    # VmHWM/VmRSS of this process; unlike ru_maxrss, VmHWM starts afresh at exec, so the parent's
    # memory (it synthesised the volume) is not counted.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_run(path: str, image_size: int, device: str, model: str, cache_gb: float) -> dict:
    """Runs in its own process (the volume file is made by the parent, so its synthesis is not counted):
    build the engine, open, click, propagate, report."""
    import torch

    from lib.engine import intensity
    from lib.engine.build import engine_from_conf
    from lib.engine.engine import SlicePrompt

    torch.set_num_threads(os.cpu_count() or 1)
    engine = engine_from_conf({
        "checkpoint": f"sam2.1_hiera_{model}", "random_weights": "true", "image_size": str(image_size),
        "device": device, "feature_cache_gb": str(cache_gb),
    })
    rss_before = _status_mb("VmRSS")
    session = engine.open(path, "bench", intensity.IntensityPreset("volume_minmax"))
    n = session.geometry.num_frames
    k = n // 2
    t0 = time.perf_counter()
    session.set_prompts({k: SlicePrompt(points=((256.0 + 40, 256.0),), labels=(1,))})
    result = session.propagate(0, n - 1, auto_stop=0)
    seconds = time.perf_counter() - t0
    out = {
        "slices": n, "seconds": seconds, "s_per_slice": seconds / n,
        "frames_encoded": result.frames_encoded,
        "peak_rss_mb": _status_mb("VmHWM"),
        "rss_after_model_mb": rss_before,
        "feature_cache_mb": engine.feature_cache.nbytes / 2**20,
        "state_offloaded": str(session.state["storage_device"]) == "cpu" and device.startswith("cuda"),
    }
    if device.startswith("cuda"):
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", default="75,150,300,600")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--model", default="tiny", choices=["tiny", "small", "base_plus", "large"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--feature-cache-gb", type=float, default=2.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args._one:
        print(json.dumps(one_run(args._one, args.image_size, device, args.model, args.feature_cache_gb)))
        return 0
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench-long-")
    for n in [int(s) for s in args.slices.split(",")]:
        path = os.path.join(tmp, f"synthetic_{n}.nii")
        synthetic_volume(n, path)
        cmd = [sys.executable, __file__, "--_one", path, "--image-size", str(args.image_size), "--model",
               args.model, "--device", device, "--feature-cache-gb", str(args.feature_cache_gb)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        os.unlink(path)
        print(rows[-1], flush=True)
    gpu = rows[0].get("gpu")
    lines = [
        f"# Time and memory vs number of slices (512 x 512 x N), {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `python benchmarks/bench_long_volume.py {' '.join(argv or sys.argv[1:])}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, device {device}{' (' + gpu + ')' if gpu else ''}; "
        f"torch {torch.__version__}",
        f"Model: SAM 2.1 {args.model}, RANDOM weights, image size {args.image_size}; feature cache "
        f"{args.feature_cache_gb} GB; one click on the middle slice, full propagation both ways, auto_stop off.",
        "",
        "| slices N | total s | s per slice | peak RSS MB | RSS after model load MB | feature cache MB |"
        + (" GPU peak MB | state offloaded |" if gpu else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if gpu else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['slices']} | {r['seconds']:.1f} | {r['s_per_slice']:.3f} | {r['peak_rss_mb']:.0f} | "
            f"{r['rss_after_model_mb']:.0f} | {r['feature_cache_mb']:.0f} |"
            + (f" {r['gpu_peak_mb']:.0f} | {r['state_offloaded']} |" if gpu else "")
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
