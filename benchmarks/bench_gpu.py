#!/usr/bin/env python
"""The first propagation of a volume on a GPU: ours vs SAM 2's stock JPEG-folder pipeline, same weights.

    python benchmarks/bench_gpu.py --model tiny,large --out benchmarks/results/gpu-<device>.md

Runs where only torch, numpy and pillow are installed, given sam2, hydra-core, omegaconf,
antlr4-python3-runtime, iopath and nibabel (docs/benchmark.md: how to carry them to a GPU machine): it
imports the engine's propagation core (frames, model, sessions) and nothing of SimpleITK or monailabel.
The volume is read with nibabel. Weights are RANDOM (the SAM 2.1 config built without a checkpoint, seed
0): only time, memory and agreement between code paths are measured, never accuracy.

For each model it measures, after one warm-up request on another volume:

* the first propagation of the volume after one positive click (all slices, both directions,
  ``auto_stop 0``, through ``Session.propagate``: what the server runs), and again on the same volume
  in a new session (image features cached);
* SAM 2's bare ``propagate_in_video`` loop on those cached features (both directions, nothing else);
* making frames on the CPU (``SliceFrames``: PIL resize + float normalisation, one slice at a time) and the
  batched path (uint8 to the device, normalised there); the image encoder at the feature batch size;
* a correction click (incremental re-propagation) and a 2D click (one slice, features cached);
* SAM 2's stock pipeline as MONAI Label's built-in SAM 2 task runs it: each slice written as a JPEG
  (``Image.fromarray(slice).convert("RGB").save``), ``init_state(video_path=folder)``, the click,
  ``propagate_in_video`` forward and (unlike the built-in, which stops there) in reverse, so that it covers
  the same slices; its ``init_state`` alone;
* agreement: Dice of our masks vs stock SAM 2 given our in-memory frames and the same prompt;
* a long volume (512 x 512 x N, synthetic): seconds, peak GPU memory, process peak RSS (first model only).

On a CPU (``--device cpu``) it runs the same code at any size, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "apps", "sam2_3d"))

from lib.engine import intensity  # noqa: E402
from lib.engine.build import engine_from_conf  # noqa: E402
from lib.engine.frames import SliceFrames  # noqa: E402
from lib.engine.model import VolumeFeatures, init_state_from_frames  # noqa: E402
from lib.engine.prompts import SlicePrompt  # noqa: E402

DEFAULT_VOLUME = os.path.join(REPO, "..", "shared", "data", "brats2013", "pat0001", "flair.nii.gz")
CARRIED_VOLUME = os.path.join(REPO, ".gpu-data", "flair.nii.gz")  # where docs/benchmark.md carries it
PRESET = intensity.IntensityPreset("volume_minmax")


def load_kji(path: str) -> np.ndarray:
    """A NIfTI volume as a ``[k, j, i]`` array (nibabel gives ``[i, j, k]``), as the engine indexes it."""
    import nibabel as nib

    return np.ascontiguousarray(np.asanyarray(nib.load(path).dataobj).transpose(2, 1, 0))


def synthetic_kji(n: int, size: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    vol = rng.normal(0, 20, (n, size, size)).astype(np.int16)
    for k in range(n):
        cy, cx = size / 2 + 40 * np.sin(k / 40), size / 2 + 40 * np.cos(k / 40)
        vol[k][(yy - cy) ** 2 + (xx - cx) ** 2 < (size / 8) ** 2] += 400
    return vol


class Clock:
    """Wall time of a block, with the device drained at both ends (so it is the work's, not the queue's)."""

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * (a & b).sum() / s)


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def click_of(array_kji: np.ndarray, k: int) -> tuple[float, float]:
    """A positive click at the brightest blob's centre of slice k (a deterministic, in-object choice)."""
    s = array_kji[k].astype(np.float32)
    ys, xs = np.nonzero(s >= np.percentile(s, 99))
    return float(np.median(xs)), float(np.median(ys))


def stock_predictor(engine, model: str, device: str):
    """SAM 2's own SAM2VideoPredictor with our engine's weights (same config, same state dict)."""
    from sam2.build_sam import build_sam2_video_predictor

    from lib.engine.checkpoints import resolve_checkpoint

    cfg = resolve_checkpoint(f"sam2.1_hiera_{model}", random_weights=True).config
    stock = build_sam2_video_predictor(cfg, ckpt_path=None, device=device,
                                       hydra_overrides_extra=[f"++model.image_size={engine.image_size}"])
    stock.load_state_dict(engine.predictor.state_dict())
    stock.fill_hole_area = 0  # as the engine (no CUDA extension is built for these runs)
    return stock.eval()


def stock_run(stock, state, k: int, xy, n: int, autocast) -> tuple[np.ndarray, int]:
    out = np.zeros((n, state["video_height"], state["video_width"]), np.uint8)
    with torch.inference_mode(), autocast():
        stock.add_new_points_or_box(state, frame_idx=k, obj_id=1, points=np.array([xy], np.float32),
                                    labels=np.array([1], np.int32))
        tracked = 0
        for reverse in (False, True):
            for f, _, m in stock.propagate_in_video(state, start_frame_idx=k, reverse=reverse):
                out[f] = (m[0, 0] > 0).cpu().numpy()
                tracked += 1
    return out, tracked


def builtin_pipeline(stock, slices_u8: np.ndarray, k: int, xy, device: str, autocast) -> dict:
    """The built-in task's way: a JPEG per slice, SAM 2's init_state on the folder, then propagation."""
    folder = tempfile.mkdtemp(prefix="bench-gpu-jpeg-")
    try:
        with Clock(device) as total:
            for idx, s in enumerate(slices_u8):
                Image.fromarray(s).convert("RGB").save(os.path.join(folder, f"{idx:05d}.jpg"))
            with Clock(device) as init:
                state = stock.init_state(video_path=folder)
            _, tracked = stock_run(stock, state, k, xy, len(slices_u8), autocast)
        stock.reset_state(state)
        return {"total_s": total.seconds, "init_state_s": init.seconds, "tracked": tracked}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bare_loop(engine, session, k: int, xy, device: str) -> float:
    """SAM 2's propagate_in_video both ways on our cached features: no result bookkeeping at all."""
    geo, vol = session.geometry, session.volume
    features = VolumeFeatures(engine.predictor, vol.frames, vol.key, engine.feature_cache, engine.feature_batch_size)
    state = init_state_from_frames(engine.predictor, vol.frames, features, geo.frame_height, geo.frame_width)
    p = engine.predictor
    with torch.inference_mode(), engine.autocast(), Clock(device) as c:
        p.add_new_points_or_box(state, frame_idx=k, obj_id=1, points=np.array([xy], np.float32),
                                labels=np.array([1], np.int32))
        for reverse in (False, True):
            for _ in p.propagate_in_video(state, start_frame_idx=k, reverse=reverse):
                pass
    return c.seconds


def frame_timings(engine, frames: SliceFrames, device: str, n: int = 32) -> dict:
    ks = list(range(min(n, len(frames))))
    with Clock("cpu") as cpu:
        for k in ks:
            frames[k]
    bs = engine.feature_batch_size
    batches = [ks[i:i + bs] for i in range(0, len(ks), bs)]
    frames.batch(batches[0], device)  # warm-up (pinned memory, kernels)
    with Clock(device) as dev:
        for b in batches:
            frames.batch(b, device)
    by_batch = {}  # the image encoder at each batch size: what choosing feature_batch_size needs
    for size in sorted({1, 2, 4, 8, 16, bs} & set(range(1, len(ks) + 1))):
        batch = frames.batch(ks[:size], device)
        with torch.inference_mode(), engine.autocast():
            engine.predictor.forward_image(batch)
            with Clock(device) as enc:
                for _ in range(3):
                    engine.predictor.forward_image(batch)
        by_batch[size] = 1000 * enc.seconds / (3 * size)
    return {"frames_cpu_ms_per_slice": 1000 * cpu.seconds / len(ks),
            "frames_batched_ms_per_slice": 1000 * dev.seconds / len(ks),
            "encoder_ms_per_slice": by_batch[len(batches[0])], "encoder_batch": len(batches[0]),
            "encoder_ms_per_slice_by_batch": by_batch}


def feature_figures(engine) -> dict:
    """What one slice's cached image features hold (their dtype is the encoder's output under autocast)."""
    cache = engine.feature_cache
    item = cache.any_item()
    if item is None:
        return {}
    return {"dtype": str(item[0].dtype).replace("torch.", ""), "levels": [list(f.shape) for f in item],
            "mb_per_slice": cache.nbytes / len(cache) / 2**20}


CACHED_START = """
import json, sys, time
sys.path.insert(0, {app!r})
t0 = time.perf_counter()
from lib.engine.build import engine_from_conf
from lib.engine.compiled import compile_engine
engine = engine_from_conf(json.loads({conf!r}))
built = time.perf_counter() - t0
figures = compile_engine(engine, {mode!r}, {cache!r}).figures
print(json.dumps({{"build_s": built, "ready_s": time.perf_counter() - t0, **figures}}))
"""


def cached_start(conf: dict, mode: str, cache: str) -> dict:
    """A second process starting like the server with ``--conf compile true``: what it costs with the
    first start's compiled code on disk."""
    import subprocess

    code = CACHED_START.format(app=os.path.join(REPO, "apps", "sam2_3d"), conf=json.dumps(conf), mode=mode, cache=cache)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if child.returncode != 0:
        raise RuntimeError(f"cached compile start failed: {child.stderr[-2000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def bench_model(model: str, a, volume: np.ndarray, warmup: np.ndarray) -> dict:
    conf = {"checkpoint": f"sam2.1_hiera_{model}", "random_weights": "true", "device": a.device,
            "image_size": str(a.image_size), "feature_batch_size": str(a.feature_batch_size)}
    device = a.device
    with Clock(device) as start:
        engine = engine_from_conf(conf)
        if a.compile:  # what --conf compile true runs at start-up (called directly so a CPU check runs it too)
            from lib.engine.compiled import compile_engine

            cache = a.compile_cache or tempfile.mkdtemp(prefix="bench-gpu-compile-")
            compiled = compile_engine(engine, a.compile, cache).figures
    n = volume.shape[0]
    k = a.click_slice if a.click_slice >= 0 else n // 2
    xy = click_of(volume, k)
    prompt = SlicePrompt(points=(xy,), labels=(1,))
    out: dict = {"model": model, "slices": n, "click_slice": k, "click_xy": list(xy), "start_s": start.seconds}
    if a.compile:
        out["compile"] = {"cold": compiled, "cached": cached_start(conf, a.compile, cache)}

    # warm-up: one whole request on another volume (kernels, allocator, cuDNN autotune)
    w = engine.open_array("warmup", warmup, "warmup", PRESET)
    wk = warmup.shape[0] // 2
    w.set_prompts({wk: SlicePrompt(points=(click_of(warmup, wk),), labels=(1,))})
    w.propagate(0, warmup.shape[0] - 1, auto_stop=0)

    runs = []
    for r in range(a.runs):
        engine.clear()  # a new volume: windowing to 8 bit, frames, every feature
        with Clock(device) as c:
            s = engine.open_array("volume", volume, f"first-{r}", PRESET)
            s.set_prompts({k: prompt})
            first = s.propagate(0, n - 1, auto_stop=0)
        runs.append(c.seconds)
    out["first_s"] = runs
    ours_mask = first.mask.copy()

    cached = []
    for r in range(a.runs):
        s2 = engine.open_array("volume", volume, f"cached-{r}", PRESET)
        with Clock(device) as c:
            s2.set_prompts({k: prompt})
            again = s2.propagate(0, n - 1, auto_stop=0)
        cached.append(c.seconds)
        assert again.frames_encoded == 0, "features were not cached"
    out["cached_s"] = cached
    out["features"] = feature_figures(engine)
    out["bare_loop_s"] = [bare_loop(engine, s2, k, xy, device) for _ in range(a.runs)]
    out.update(frame_timings(engine, s2.volume.frames, device))

    # a correction that takes effect (a click 5 slices on, incremental) and a 2D click
    kc = min(n - 1, k + 5)
    corr = []
    for r in range(a.runs):
        s3 = engine.open_array("volume", volume, f"correction-{r}", PRESET)
        s3.set_prompts({k: prompt})
        base = s3.propagate(0, n - 1, auto_stop=0).mask.copy()
        s3.update_prompts(points={k: [(*xy, 1)], kc: [(*click_of(volume, kc), 1), (xy[0] + 20, xy[1], 0)]})
        with Clock(device) as c:
            res = s3.propagate(0, n - 1, auto_stop=0)
        corr.append(c.seconds)
    out["correction_s"] = corr
    out["correction"] = {"how": res.how, "spans": [list(x) for x in res.propagated_spans],
                         "voxels_changed": int((res.mask != base).sum())}
    s4 = engine.open_array("volume", volume, "2d", PRESET, mode="2d")
    s4.segment_slice(k, prompt)
    clicks = []
    for d in range(1, a.runs + 2):
        p2 = SlicePrompt(points=((xy[0] + d, xy[1]),), labels=(1,))
        with Clock(device) as c:
            s4.segment_slice(k, p2)
        clicks.append(c.seconds)
    out["click2d_s"] = clicks

    # SAM 2's stock pipelines with the same weights
    stock = stock_predictor(engine, model, device)
    slices_u8 = s2.volume.slices_u8
    out["builtin"] = [builtin_pipeline(stock, slices_u8, k, xy, device, engine.autocast) for _ in range(a.runs)]
    state = init_state_from_frames(stock, s2.volume.frames, None, *slices_u8.shape[1:])  # stock features, our frames
    stock_mask, _ = stock_run(stock, state, k, xy, n, engine.autocast)
    out["dice_vs_stock_same_frames"] = dice(ours_mask, stock_mask)
    out["voxels_equal_vs_stock"] = float((ours_mask == stock_mask).mean())
    del stock, state
    if a.compile:  # the eager engine (same weights) on the same GPU: what compiling changed in the masks
        eager = engine_from_conf(conf)
        s6 = eager.open_array("volume", volume, "eager", PRESET)
        s6.set_prompts({k: prompt})
        eager_mask = s6.propagate(0, n - 1, auto_stop=0).mask
        out["dice_vs_eager"] = dice(ours_mask, eager_mask)
        out["voxels_equal_vs_eager"] = float((ours_mask == eager_mask).mean())
        out["compiled_calls"] = {f"{m}/{how}": c for (m, how), c in engine.compiled.calls.items()}
        del eager, s6

    if a.long_slices and model == a.models[0]:
        long_vol = synthetic_kji(a.long_slices, a.long_size)
        engine.clear()
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        s5 = engine.open_array("long", long_vol, "long", PRESET)
        lk = a.long_slices // 2
        with Clock(device) as c:
            s5.set_prompts({lk: SlicePrompt(points=((a.long_size / 2 + 40, a.long_size / 2),), labels=(1,))})
            s5.propagate(0, a.long_slices - 1, auto_stop=0)
        out["long"] = {"shape": [a.long_slices, a.long_size, a.long_size], "s": c.seconds,
                       "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if str(device).startswith("cuda") else None,
                       "peak_rss_gb": peak_rss_mb() / 1024}
        engine.close()
    del engine
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def render(a, results: list[dict], meta: dict) -> str:
    med = statistics.median
    lines = [f"# GPU benchmark: sam2_3d vs SAM 2's stock pipeline ({meta['date']})", "",
             f"Command: `python benchmarks/bench_gpu.py {' '.join(sys.argv[1:])}`", "",
             f"Device: {meta['device_name']}; torch {meta['torch']}; Python {meta['python']}; "
             f"{meta['cpus']} CPUs; autocast {meta['autocast']}",
             f"Volume: {meta['volume']} ({meta['shape']}), SAM 2.1 RANDOM weights at {a.image_size} px, "
             f"feature batch {a.feature_batch_size}; medians of {a.runs} runs after one warm-up request; "
             f"{'torch.compile ' + a.compile if a.compile else 'eager (no torch.compile)'}.", "",
             "| | " + " | ".join(r["model"] for r in results) + " |", "|---|" + "---|" * len(results)]

    def row(name, fn):
        lines.append(f"| {name} | " + " | ".join(fn(r) for r in results) + " |")

    def rate(s, r):
        return f"{s:.2f} s ({r['slices'] / s:.0f} slices/s)"

    row("first propagation (new volume)", lambda r: rate(med(r["first_s"]), r))
    row("same volume, new session (features cached)", lambda r: rate(med(r["cached_s"]), r))
    row("SAM 2's bare propagate_in_video on cached features", lambda r: f"{med(r['bare_loop_s']):.2f} s")
    row("frames on the CPU, one at a time (ms/slice)", lambda r: f"{r['frames_cpu_ms_per_slice']:.1f}")
    row("frames batched, normalised on the device (ms/slice)", lambda r: f"{r['frames_batched_ms_per_slice']:.1f}")
    row("image encoder (ms/slice)", lambda r: f"{r['encoder_ms_per_slice']:.1f} at batch {r['encoder_batch']}")
    row("image encoder by batch size (ms/slice)", lambda r: ", ".join(
        f"{b}: {ms:.1f}" for b, ms in r["encoder_ms_per_slice_by_batch"].items()))
    row("cached features per slice", lambda r: f"{r['features']['mb_per_slice']:.1f} MB {r['features']['dtype']}"
        if r.get("features") else "-")
    row("correction click, incremental (s)", lambda r: f"{med(r['correction_s']):.3f} ({r['correction']['how']}, "
        f"{r['correction']['voxels_changed']} voxels changed)")
    row("2D click (s)", lambda r: f"{med(r['click2d_s']):.4f}")
    row("stock JPEG-folder pipeline, both ways (s)", lambda r: f"{med(b['total_s'] for b in r['builtin']):.2f}")
    row("its init_state alone (s)", lambda r: f"{med(b['init_state_s'] for b in r['builtin']):.2f}")
    row("ours / stock pipeline, first propagation",
        lambda r: f"{med(r['first_s']) / med(b['total_s'] for b in r['builtin']):.2f}")
    row("Dice vs stock SAM 2 on the same frames", lambda r: f"{r['dice_vs_stock_same_frames']:.4f} "
        f"({100 * r['voxels_equal_vs_stock']:.2f} % voxels equal)")
    row("engine start (build + compile warm-up), s", lambda r: f"{r['start_s']:.1f}")
    if a.compile:
        row(f"torch.compile ({a.compile}) warm-up: cold / next start from the disk cache, s",
            lambda r: f"{r['compile']['cold']['warm_up_s']:.1f} / {r['compile']['cached']['warm_up_s']:.1f} "
            f"({r['compile']['cached']['fxgraph_cache_hit']} graphs from disk, "
            f"{r['compile']['cached']['fxgraph_cache_miss']} compiled)")
        row("next start until ready (build + warm-up), s", lambda r: f"{r['compile']['cached']['ready_s']:.1f}")
        row("Dice vs the eager engine on the same device", lambda r: f"{r['dice_vs_eager']:.4f} "
            f"({100 * r['voxels_equal_vs_eager']:.2f} % voxels equal)")
    for r in results:
        if "long" in r:
            lg = r["long"]
            gpu = f"{lg['peak_gpu_gb']:.2f} GB peak GPU memory" if lg["peak_gpu_gb"] is not None else "no GPU"
            lines += ["", f"Long volume {tuple(lg['shape'])} ({r['model']}): {lg['s']:.1f} s "
                      f"({lg['shape'][0] / lg['s']:.0f} slices/s), {gpu}, process peak RSS {lg['peak_rss_gb']:.2f} GB"]
    lines += ["", "The stock pipeline is what MONAI Label's built-in SAM 2 task does (a JPEG per slice, "
              "`init_state` on the folder, `propagate_in_video`), run here with a reverse pass too so both cover "
              "every slice. Random weights: masks are meaningless; times and agreement are what is measured.",
              "", "Raw figures:", "", "```json", json.dumps({"meta": meta, "results": results}, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny,large", help="SAM 2.1 configs, comma-separated: tiny, small, base_plus, large")
    ap.add_argument("--volume", default="", help="a NIfTI volume (default: BraTS pat0001 FLAIR, carried or ../shared)")
    ap.add_argument("--click-slice", type=int, default=65, help="the clicked slice (-1: the middle)")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--feature-batch-size", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--long-slices", type=int, default=600, help="N of the 512x512xN long volume (0: skip)")
    ap.add_argument("--long-size", type=int, default=512)
    ap.add_argument("--slices", type=int, default=0, help="use only this many slices around the click (0: all)")
    ap.add_argument("--compile", default="", metavar="MODE",
                    help="compile as --conf compile true does, in this torch.compile mode (reduce-overhead, "
                         "default, max-autotune-no-cudagraphs); compares with the eager engine and times a cached start")
    ap.add_argument("--compile-cache", default="", help="compile cache folder (default: a new, empty one)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    a.models = [m.strip() for m in a.model.split(",") if m.strip()]

    path = a.volume or (CARRIED_VOLUME if os.path.exists(CARRIED_VOLUME) else DEFAULT_VOLUME)
    volume = load_kji(path)
    if a.slices:
        c = a.click_slice if a.click_slice >= 0 else volume.shape[0] // 2
        lo = max(0, min(c - a.slices // 2, volume.shape[0] - a.slices))
        volume = np.ascontiguousarray(volume[lo:lo + a.slices])
        a.click_slice = c - lo
    warmup = synthetic_kji(min(16, volume.shape[0]), size=volume.shape[1], seed=1)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "python": platform.python_version(),
            "device_name": torch.cuda.get_device_name(0) if str(a.device).startswith("cuda") else f"CPU ({platform.processor() or platform.machine()})",
            "cpus": os.cpu_count(), "autocast": "bf16" if str(a.device).startswith("cuda") else "none (fp32)",
            "volume": os.path.relpath(path, REPO), "shape": list(volume.shape)}
    results = []
    for model in a.models:
        print(f"== {model}", flush=True)
        results.append(bench_model(model, a, volume, warmup))
        print(json.dumps(results[-1], indent=1), flush=True)
    report = render(a, results, meta)
    print(report)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
