"""Training speed and peak GPU memory of the fine-tuning step (issue 10): steps/s per model and setting.

Each setting builds SAM 2 from its config (RANDOM WEIGHTS: speed and memory do not depend on the values),
then times ``--steps`` training steps of the real module (``lib/training/module.py``: clip features,
SAM 2's video forward with memory, SAM 2's loss, backward, AdamW) on BraTS pat0001 clips, under bf16
autocast on a GPU (what Lightning's ``bf16-mixed`` does) and fp32 on a CPU.

    python benchmarks/bench_finetune.py                       # GPU: tiny and large, encoder frozen/unfrozen, 1024 px
    python benchmarks/bench_finetune.py --models sam2.1_hiera_tiny --image-size 128 --steps 3   # CPU smoke run

Prints one line per setting and writes --out (JSON). The first steps (warm-up, feature encoding of new
slices) are excluded from the timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "apps", "sam2_3d"))


def bench(model: str, image_size: int, train_encoder: bool, steps: int, warmup: int, clip_length: int, data: str) -> dict:
    import torch

    from lib.engine.build import engine_from_conf
    from lib.engine.intensity import IntensityPreset
    from lib.training import data as D
    from lib.training.module import Sam2Finetune
    from lib.training.params import parse

    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = engine_from_conf({"checkpoint": model, "random_weights": "true", "image_size": str(image_size),
                               "device": device})
    pair = {"image_id": "pat0001", "image": os.path.join(data, "pat0001", "flair.nii.gz"),
            "label": os.path.join(data, "pat0001", "label.nii.gz")}
    sampler = D.ClipSampler([D.load_volume(pair, IntensityPreset("auto"), "any")], clip_length, ("mask", "click", "box"), 0)
    module = Sam2Finetune(engine, sampler, parse({"train_image_encoder": train_encoder, "clip_length": clip_length}), [])
    module.to(device).set_train_modes()
    opt = module.configure_optimizers()["optimizer"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    step = 0

    def one(clip):
        nonlocal step
        with autocast:
            loss = module.training_step(clip, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1

    clips = [sampler.clip(n) for n in range(warmup + steps)]
    for n in range(warmup):
        one(clips[n])
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for n in range(warmup, warmup + steps):
        one(clips[n])
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "model": model, "image_size": image_size, "train_image_encoder": train_encoder, "clip_length": clip_length,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": "bf16 autocast" if device == "cuda" else "fp32", "steps": steps,
        "steps_per_s": round(steps / seconds, 3),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "trained_tensors": len(module.trainable),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="sam2.1_hiera_tiny,sam2.1_hiera_large")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--clip-length", type=int, default=8)
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "brats2013"))
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "finetune_speed.json"))
    args = ap.parse_args()
    rows = []
    for model in args.models.split(","):
        for train_encoder in (False, True):
            row = bench(model, args.image_size, train_encoder, args.steps, args.warmup, args.clip_length, args.data)
            print(json.dumps(row), flush=True)
            rows.append(row)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"command": "python " + " ".join(sys.argv), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
