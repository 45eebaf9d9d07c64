#!/usr/bin/env python
"""Evaluate SAM 2 3D propagation on labelled volumes with the papers' protocols; write a report.

    python apps/sam2_3d/evaluate.py --data DATASET --label wt=1,2,3,4 --protocol mask clicks box slice2d \
        --checkpoint sam2.1_hiera_tiny --out runs/eval

See docs/evaluation.md for dataset layouts, protocols, metrics, outputs, Ray and resume.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

APP_DIR = os.path.dirname(os.path.abspath(__file__))
if APP_DIR not in sys.path:
    sys.path.insert(0, APP_DIR)  # the app's `lib` package, as monailabel imports it


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, help="dataset folder (or one .npz file)")
    d.add_argument("--format", default="auto", choices=["auto", "msd", "pairs", "cases", "npz"])
    d.add_argument("--modality", help="cases format: part of the image file name to use (e.g. flair)")
    d.add_argument("--channel", type=int, default=0, help="channel of 4D images (MSD multi-modal tasks)")
    d.add_argument("--cases", nargs="+", help="only these case ids")
    d.add_argument("--label-file", help="glob(s) naming the label file in a case folder, '|'-separated "
                   "(default '*seg*|*label*'; e.g. 'aorta*' for aorta.nii.gz)")
    d.add_argument("--key-slices", help="CSV (case,key_slice) or JSON {case: k}: the dataset's key slice per case "
                   "for medsam2-box (original slice index; default: the largest-area slice)")
    d.add_argument("--label", dest="labels", action="append",
                   help="label to evaluate: VALUE, NAME=V1,V2,... or NAME=any (label>0); repeatable [default: fg=any]")
    d.add_argument("--z-margin", type=int, help="crop each volume to the labels' z-range ± this many slices")
    d.add_argument("--max-slices", type=int, help="then keep at most this many slices around the labels' middle")
    e = p.add_argument_group("protocols and metrics")
    e.add_argument("--protocol", dest="protocols", nargs="+", default=["mask", "clicks", "box", "slice2d"],
                   help="the papers' recipes: shen2024-1mask, shen2024-salient, shen2024-Nclicks (N=1..5), medsam2-box, "
                   "medsam2-recist, gutierrez2023-lung, cvpr25-interactive; or this project's: mask, clicks, clicksN, box, slice2d (docs/evaluation.md)")
    e.add_argument("--clicks", type=int, default=5, help="rounds of the 'clicks' protocol")
    e.add_argument("--range", default="volume", choices=["volume", "object"],
                   help="mask/clicks propagation range: whole (cropped) volume or the object's z-range")
    e.add_argument("--slice2d-positives", type=int, default=3, help="positive points per slice in slice2d")
    e.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    e.add_argument("--exact", action="store_true",
                   help="paper-exact mode of the papers' recipes: their reference code's frames, state handling "
                   "and released prompt rules (docs/evaluation.md, per protocol)")
    e.add_argument("--seed", type=int, default=0, help="seeds slice2d's extra points and random weights")
    e.add_argument("--worst-slices", type=int, default=2, help="worst slices kept per case for overlays")
    m = p.add_argument_group("model (one setting; or several with --setting)")
    m.add_argument("--checkpoint", default="sam2.1_hiera_tiny", help="registry name or .pt path")
    m.add_argument("--config", help="SAM 2 hydra config for a .pt path")
    m.add_argument("--random-weights", action="store_true", help="random weights: plumbing tests only")
    m.add_argument("--image-size", type=int, help="SAM 2 input size (default: the config's, 1024)")
    m.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    m.add_argument("--dtype", help="bfloat16, float16 or float32 (default: bfloat16 on CUDA)")
    m.add_argument("--preset", help="intensity preset (default: slice_minmax; 'none' for npz, already uint8)")
    m.add_argument("--window", help="custom intensity window CENTER,WIDTH in the image's units (e.g. -650,1500); "
                   "overrides --preset")
    m.add_argument("--setting", dest="settings", action="append",
                   help="NAME:key=value,... over the options above (e.g. t512:image_size=512); repeatable")
    r = p.add_argument_group("execution")
    r.add_argument("--out", required=True, help="output folder (a rerun resumes there)")
    r.add_argument("--workers", type=int, help="1: in this process; N>1: local Ray with N workers "
                   "[default: one per GPU, else 1]")
    r.add_argument("--address", help="Ray cluster address to join (e.g. ray://head:10001 or auto)")
    r.add_argument("--threads", type=int, help="torch threads per Ray worker (default 1)")
    r.add_argument("--overwrite", action="store_true", help="discard results of a previous run in --out")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--debug", action="store_true", help="print full tracebacks (they are always in OUT/evaluate.log)")
    return p


def config_from_args(args, argv=None) -> dict:
    from lib.evaluation.runner import parse_setting

    base = {"checkpoint": args.checkpoint}
    for key in ("config", "image_size", "device", "dtype", "preset", "window"):
        if getattr(args, key) is not None:
            base[key] = str(getattr(args, key))
    if args.random_weights:
        base["random_weights"] = "true"
    settings = [parse_setting(s, base) for s in args.settings] if args.settings else [{"name": "default", "conf": base}]
    if len({s["name"] for s in settings}) != len(settings):
        raise SystemExit("--setting names must be unique")
    workers = args.workers
    if workers is None:
        import torch

        workers = max(1, torch.cuda.device_count())
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + list(argv if argv is not None else sys.argv[1:]))),
        "dataset": os.path.abspath(args.data), "format": args.format, "modality": args.modality,
        "channel": args.channel, "cases": args.cases, "labels": args.labels or ["fg=any"],
        "protocols": args.protocols, "clicks": args.clicks, "range": args.range, "exact": args.exact,
        "nsd_tolerance": args.nsd_tolerance, "z_margin": args.z_margin, "max_slices": args.max_slices,
        "slice2d_positives": args.slice2d_positives, "seed": args.seed, "worst_slices": args.worst_slices,
        "settings": settings, "out": os.path.abspath(args.out), "workers": workers, "address": args.address,
        "threads": args.threads, "label_file": args.label_file,
        "key_slices": read_key_slices(args.key_slices) if args.key_slices else None,
    }


def read_key_slices(path: str) -> dict[str, int]:
    """``case -> key slice`` from a CSV (columns case, key_slice) or a JSON object."""
    import csv
    import json

    if not os.path.exists(path):
        raise FileNotFoundError(f"--key-slices file not found: {path}")
    if path.endswith(".json"):
        with open(path) as f:
            return {str(k): int(v) for k, v in json.load(f).items()}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"case", "key_slice"} <= set(rows[0]):
        raise ValueError(f"--key-slices {path}: needs a header with the columns case,key_slice")
    return {r["case"]: int(r["key_slice"]) for r in rows}


def _log_to(out: str, debug: bool) -> None:
    """INFO on the console; everything, tracebacks included, in OUT/evaluate.log."""
    os.makedirs(out, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = logging.StreamHandler()
    console.setLevel(logging.DEBUG if debug else logging.INFO)

    class NoTracebacks(logging.Formatter):  # the console gets one line per problem unless --debug
        def formatException(self, ei):
            return ""

        def format(self, record):
            record.exc_text = None
            return super().format(record).rstrip()

    console.setFormatter(fmt if debug else NoTracebacks("%(levelname)s %(name)s: %(message)s"))
    logfile = logging.FileHandler(os.path.join(out, "evaluate.log"))
    logfile.setLevel(logging.DEBUG)
    logfile.setFormatter(fmt)
    for h in list(root.handlers):
        if getattr(h, "_sam2eval", False):
            root.removeHandler(h)
            h.close()
    for h in (console, logfile):
        h._sam2eval = True
        root.addHandler(h)


def window_as_one_argument(argv: list[str]) -> list[str]:
    """``--window -650,1500`` -> ``--window=-650,1500``: argparse takes a value starting with '-' for an option."""
    out = []
    for a in argv:
        if out and out[-1] == "--window" and a.startswith("-"):
            out[-1] = f"--window={a}"
        else:
            out.append(a)
    return out


def main(argv=None) -> int:
    """The command; an error ends it with one line naming the problem (the traceback: --debug or the log)."""
    argv = window_as_one_argument(list(sys.argv[1:] if argv is None else argv))
    args = parser().parse_args(argv)
    try:
        _log_to(args.out, args.debug)
        return _main(args, argv)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        logging.getLogger("evaluate").debug("error", exc_info=True)
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args, argv) -> int:
    from lib.evaluation import datasets, protocols, runner

    for text in args.labels or []:
        datasets.LabelSpec.parse(text)  # fail on a typo before any model is built
    for text in args.protocols:
        protocols.ProtocolSpec.parse(text, args.clicks)
    if args.window is not None:
        from lib.evaluation.case_task import parse_window

        parse_window(args.window)
    config = config_from_args(args, argv)
    result = runner.run(config, overwrite=args.overwrite, progress=not args.no_progress)
    failed = sum(r.get("status") == "failed" for rec in result["records"] for r in rec["results"])
    print(f"ran {len(result['ran'])} case run(s), {result['skipped']} already done"
          + (f"; {failed} label/protocol run(s) FAILED (reasons in the report and results.csv)" if failed else ""))
    print(f"CSV: {result['csv']}\nJSON: {result['json']}\nreport: {result['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
