"""Learning demonstration of the fine-tuning (issue 10): can SAM 2 learn whole-tumour tracking here?

From RANDOM weights (the only SAM 2 weights on these machines), SAM 2.1 tiny is trained at 128 px with
the image encoder frozen on BraTS 2013 pat0001-0003 (FLAIR, whole tumour = label > 0) and validated on
pat0004 with the evaluation's mask protocol (ground-truth mask on the central slice, propagated both
ways; volume Dice), before and after. It runs the very code ``POST /train/sam2_finetune`` runs
(``lib/training/run.py``), only with the image/label pairs given directly instead of a datastore.

    python benchmarks/finetune_demo.py --out reports/finetune_demo [--steps 80 --epochs 3 ...]

Writes OUT/finetuned/v0001/ (weights, config, params, labels, metrics.json, curve.png) and OUT/summary.json.
It can fail: the script exits 1 when the trained network does not beat the untrained one by --margin.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "apps", "sam2_3d"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "brats2013"))
    ap.add_argument("--out", default=os.path.join(REPO, "reports", "finetune_demo"))
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=75, help="steps per epoch")
    ap.add_argument("--clip-length", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--val-z-margin", type=int, default=0)
    ap.add_argument("--margin", type=float, default=0.2, help="Dice gain required to call it learning")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lib.engine.build import engine_from_conf
    from lib.engine import weights
    from lib.training.params import parse
    from lib.training.run import train

    train_ids, val_ids = ["pat0001", "pat0002", "pat0003"], ["pat0004"]
    pairs = [{"image_id": p, "image": os.path.join(args.data, p, "flair.nii.gz"),
              "label": os.path.join(args.data, p, "label.nii.gz"), "split": "validation" if p in val_ids else "train"}
             for p in train_ids + val_ids]
    model_dir = os.path.abspath(args.out)
    shutil.rmtree(os.path.join(model_dir, "finetuned"), ignore_errors=True)
    engine = engine_from_conf({"checkpoint": "sam2.1_hiera_tiny", "random_weights": "true",
                               "image_size": str(args.image_size), "device": "cuda" if torch.cuda.is_available() else "cpu"})
    weights.attach(engine, model_dir, pin="none")
    params = parse({
        "epochs": args.epochs, "steps_per_epoch": args.steps, "clip_length": args.clip_length,
        "learning_rate": args.lr, "objects": "any", "val_z_margin": args.val_z_margin,
        "checkpoint_every": 20, "seed": 0,
    })
    t0 = time.time()
    result = train(engine, None, params, model_dir, pairs=pairs)
    v = result["validation"]
    gain = (v["dice_after"] or 0) - (v["dice_before"] or 0)
    learned = gain >= args.margin
    summary = {
        "command": "python " + " ".join(sys.argv), "weights": "RANDOM (SAM 2.1 tiny config, seed 0)",
        "image_size": args.image_size, "train": train_ids, "validation": val_ids, "object": "whole tumour (label > 0)",
        "val_dice_before": v["dice_before"], "val_dice_after": v["dice_after"], "gain": round(gain, 4),
        "required_gain": args.margin, "learned": learned, "steps": result["steps"],
        "train_loss_first20_mean": result["first_train_loss_mean20"],
        "train_loss_last20_mean": result["final_train_loss_mean20"],
        "seconds": round(time.time() - t0, 1), "cpu_threads": torch.get_num_threads(), "version": result["version"],
    }
    with open(os.path.join(model_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    return 0 if learned else 1


if __name__ == "__main__":
    sys.exit(main())
