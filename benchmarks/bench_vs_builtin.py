"""Side-by-side benchmark: this app (sam2_3d) vs MONAI Label's built-in SAM 2 task (radiology app).

Both run as real `monailabel start_server` processes on loopback, load ONE checkpoint file of random
weights written here for the chosen SAM 2.1 config, and get the same requests over HTTP:

  1. first propagation after one click on the central slice (time total and per slice processed);
  2. a session: that propagation, then three corrections on other slices, each re-propagated (ours also
     with ``incremental: false``, to show what the incremental path saves; each correction's effect on
     our answer is checked, untimed, so a correction that changed nothing cannot look fast);
  3. a 2D click on an image already loaded (second and later clicks).

It prints medians over --runs, the ratio ours/theirs per scenario, what each system processed, and
each server's peak RSS (VmHWM; and GPU memory is not read: run on a GPU machine and add nvidia-smi).
Random weights: masks are meaningless; only the work and its timing are compared.

    python benchmarks/bench_vs_builtin.py --image-size 256 --runs 3 --out benchmarks/results/cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import requests
import SimpleITK as sitk
import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "tests"))
from conftest import Server, free_port  # noqa: E402  (the tests' real-server launcher)

SHARED = os.path.abspath(os.path.join(REPO, "..", "shared", "data"))
CONFIGS = {"tiny": ("sam2.1_hiera_tiny.pt", "sam2.1_hiera_t.yaml"), "small": ("sam2.1_hiera_small.pt", "sam2.1_hiera_s.yaml"),
           "base_plus": ("sam2.1_hiera_base_plus.pt", "sam2.1_hiera_b+.yaml"), "large": ("sam2.1_hiera_large.pt", "sam2.1_hiera_l.yaml")}


def write_checkpoint(folder, model, image_size):
    """One random-weight checkpoint (+ the config, at the benchmark's image size) for both systems."""
    import sam2
    from sam2.build_sam import build_sam2_video_predictor

    pt_name, cfg_name = CONFIGS[model]
    torch.manual_seed(0)
    pred = build_sam2_video_predictor(f"configs/sam2.1/{cfg_name}", ckpt_path=None, device="cpu")
    pt = os.path.join(folder, pt_name)
    torch.save({"model": pred.state_dict()}, pt)
    text = open(os.path.join(os.path.dirname(sam2.__file__), "configs", "sam2.1", cfg_name)).read()
    cfg = os.path.join(folder, cfg_name)
    # the built-in task reads only this file: its image size is how both run at the same size
    open(cfg, "w").write(text.replace("image_size: 1024", f"image_size: {image_size}"))
    return pt, cfg


BUILTIN_APP = """
import os
import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferType


class MyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.model_dir = os.path.join(app_dir, "model")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="built-in SAM 2",
                         description="monailabel.sam2.infer.Sam2InferTask as the radiology app registers it",
                         version=monailabel.__version__)

    def init_infers(self):
        from monailabel.sam2.infer import Sam2InferTask  # exactly radiology/main.py's two lines

        return {
            "sam_2d": Sam2InferTask(model_dir=self.model_dir, type=InferType.DEEPGROW, dimension=2),
            "sam_3d": Sam2InferTask(model_dir=self.model_dir, type=InferType.DEEPGROW, dimension=3),
        }
"""


class Builtin(Server):
    """The built-in SAM 2 task (monailabel/sam2/infer.py), registered as sam_3d / sam_2d.

    The radiology sample app registers it with the two lines in BUILTIN_APP, but its other modules
    import torchvision, which this CPU environment deliberately lacks (see install.md); so the app
    served here holds those two registrations only. The task itself is monailabel's, unmodified.
    """

    def __init__(self, studies, workdir, pt, cfg, device):
        app = os.path.join(workdir, "builtin_app")
        os.makedirs(os.path.join(app, "model"), exist_ok=True)
        open(os.path.join(app, "main.py"), "w").write(BUILTIN_APP)
        shutil.copy(pt, os.path.join(app, "model"))  # present, so its start-up download is skipped
        shutil.copy(cfg, os.path.join(app, "model"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, "builtin.log")
        env = dict(os.environ, MONAI_SAM_MODEL_PT="file://" + pt, MONAI_SAM_MODEL_CFG="file://" + cfg,
                   MONAI_LABEL_DATASTORE_CACHE_PATH=os.path.join(workdir, "cache"))
        if not _has_torchvision():
            shim = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchvision_shim")
            env["PYTHONPATH"] = os.pathsep.join(p for p in (shim, env.get("PYTHONPATH", "")) if p)
        args = [os.path.join(os.path.dirname(sys.executable), "monailabel"), "start_server", "--app", app,
                "--studies", studies, "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        self.wait_ready()
        self.device = device


def _has_torchvision():
    try:
        import torchvision  # noqa: F401
        return True
    except Exception:
        return False


def peak_rss_mb(pid):
    """Largest VmHWM over the server process and its children."""
    pids, best = [pid], 0
    while pids:
        p = pids.pop()
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM"):
                    best = max(best, int(line.split()[1]) // 1024)
            pids += [int(c) for c in open(f"/proc/{p}/task/{p}/children").read().split()]
        except OSError:
            pass
    return best


def infer(url, model, image, params):
    t0 = time.perf_counter()
    r = requests.post(f"{url}/infer/{model}", params={"image": image, "output": "json"},
                      data={"params": json.dumps(params)}, timeout=3600)
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"{model} on {image}: HTTP {r.status_code}: {r.text[:500]}")
    return dt, r.json()


def fetch_mask(url, model, image, params):
    """The label a request answers (output=image), as a [k, j, i] array: untimed, to check corrections."""
    r = requests.post(f"{url}/infer/{model}", params={"image": image, "output": "image"},
                      data={"params": json.dumps(params)}, timeout=3600)
    if r.status_code != 200:
        raise RuntimeError(f"{model} on {image}: HTTP {r.status_code}: {r.text[:500]}")
    with tempfile.NamedTemporaryFile(suffix=".nii.gz") as f:
        f.write(r.content)
        f.flush()
        return sitk.GetArrayFromImage(sitk.ReadImage(f.name))


def synthetic(path, n):
    """A 512x512xN CT-like volume: a sphere-ish blob in noise, int16 HU, 1x1x2 mm."""
    rng = np.random.default_rng(n)
    z, y, x = np.mgrid[0:n, 0:512, 0:512]
    r = np.sqrt(((x - 256) / 120.0) ** 2 + ((y - 256) / 100.0) ** 2 + ((z - n / 2) / (n / 2.5)) ** 2)
    arr = np.where(r < 1, 60, -100) + rng.normal(0, 20, (n, 512, 512))
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(img, path)


def scenario_points(size):
    """Voxel clicks [i, j, k]: one on the central slice, then corrections on other slices."""
    nx, ny, nz = size
    c = nz // 2
    first = [nx // 2, ny // 2, c]
    corrections = [[nx // 2 + nx // 16, ny // 2, round(nz * 0.75)], [nx // 2, ny // 2 - ny // 16, round(nz * 0.25)],
                   [nx // 2 - nx // 16, ny // 2, round(nz * 0.625)]]
    return first, corrections


def run_volume(ours, theirs, image, size, runs, device, scenarios=("1", "2", "3")):
    first, corrections = scenario_points(size)
    nz = size[2]
    out = {"image": image, "size": size, "s1": {}, "s2": {}, "s3": {}, "processed": {}}
    systems = {"ours": (ours.url, "sam2_point", "sam2_2d"), "theirs": (theirs.url, "sam_3d", "sam_2d")}
    for name, (url, m3, m2) in systems.items():
        base = {"device": device} if name == "theirs" else {"auto_stop": 0, "client_id": "bench", "axis": "k"}
        s1, s2, s2_full = [], [], []
        for run in range(runs if {"1", "2"} & set(scenarios) else 0):
            # 1 + 2: a fresh session each run; reset_state makes both systems drop prompts and state
            fg = [first]
            dt, res = infer(url, m3, image, {**base, "foreground": fg, "background": [], "reset_state": True})
            if name == "ours":
                lo_hi = res["processed_range"]
                n = lo_hi[1] - lo_hi[0] + 1
                proc = f"slices {lo_hi[0]}..{lo_hi[1]} (both directions from {first[2]})"
            else:
                n = nz - first[2]
                proc = f"slices {first[2]}..{nz - 1} (forward only from {first[2]})"
            s1.append((dt, dt / n))
            total, steps = dt, []
            for corr in corrections:
                fg = fg + [corr]
                dt, res = infer(url, m3, image, {**base, "foreground": fg, "background": []})
                total += dt
                if name == "ours":
                    steps.append(f"{corr[2]}: {res.get('propagated_spans')}")
                else:
                    k0 = min(p[2] for p in fg)
                    steps.append(f"{corr[2]}: [{k0}, {nz - 1}]")
            s2.append(total)
            out["processed"][name] = {"first": proc, "corrections": steps}
            if name == "ours":
                s2_full.append(_session_full(url, m3, image, base, first, corrections))
        if name == "ours" and {"1", "2"} & set(scenarios):
            out["changed"] = _corrections_change_the_result(url, m3, image, base, first, corrections)
        # 3: 2D clicks on one slice; the first loads the image, later ones are what is timed
        k = first[2]
        clicks = [[size[0] // 2 + d, size[1] // 2, k] for d in (0, 4, 8, 12, 16)]
        try:
            if "3" not in scenarios:
                raise RuntimeError("scenario 3 not asked for (--scenarios)")
            infer(url, m2, image, {**base, "foreground": [clicks[0]], "background": [], "slice": k})
            s3 = [infer(url, m2, image, {**base, "foreground": [c], "background": [], "slice": k})[0] for c in clicks[1:]]
        except RuntimeError as e:  # the built-in 2D task hard-codes 1024 px feature sizes (SAM2ImagePredictor)
            print(f"scenario 3 failed for {name}: {e}", flush=True)
            s3 = [float("nan")]
        nan = float("nan")
        out["s1"][name] = {"total": statistics.median(t for t, _ in s1) if s1 else nan,
                           "per_slice": statistics.median(p for _, p in s1) if s1 else nan,
                           "cold_total": s1[0][0] if s1 else nan}
        out["s2"][name] = {"total": statistics.median(s2) if s2 else nan}
        if name == "ours":
            out["s2"]["ours_full"] = {"total": statistics.median(s2_full) if s2_full else nan}
        out["s3"][name] = {"click": statistics.median(s3)}
    return out


def _session_full(url, model, image, base, first, corrections):
    """Scenario 2 on our server with every correction re-propagated in full (``incremental: false``):
    what the incremental path saves, on the same server, in the same run."""
    params = {**base, "client_id": "bench-full", "incremental": False}
    fg = [first]
    total, _ = infer(url, model, image, {**params, "foreground": fg, "background": [], "reset_state": True})
    for corr in corrections:
        fg = fg + [corr]
        total += infer(url, model, image, {**params, "foreground": fg, "background": []})[0]
    return total


def _corrections_change_the_result(url, model, image, base, first, corrections):
    """Voxels each correction changed in our answer, and whether the incremental answer equals the full
    re-propagation's (untimed: a correction that changes nothing would make its saving meaningless)."""
    params = {**base, "client_id": "bench-check"}
    fg = [first]
    before = fetch_mask(url, model, image, {**params, "foreground": fg, "background": [], "reset_state": True})
    rows = []
    for corr in corrections:
        fg = fg + [corr]
        after = fetch_mask(url, model, image, {**params, "foreground": fg, "background": []})
        full = fetch_mask(url, model, image, {**params, "client_id": "bench-check-full", "incremental": False,
                                              "reset_state": True, "foreground": fg, "background": []})
        inter, union = np.count_nonzero((after > 0) & (full > 0)), np.count_nonzero((after > 0) | (full > 0))
        rows.append({"slice": corr[2], "voxels_changed": int(np.count_nonzero(after != before)),
                     "slices_changed": int(np.count_nonzero((after != before).reshape(len(after), -1).any(1))),
                     "iou_vs_full": round(inter / union, 4) if union else 1.0})
        before = after
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=list(CONFIGS))
    ap.add_argument("--image-size", type=int, default=1024, help="SAM 2 input size for BOTH systems")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--synthetic-slices", default="8,16,32", help="N of the synthetic 512x512xN volumes")
    ap.add_argument("--real", default="totalseg_ct_small/image.nii.gz", help="a volume under ../shared/data ('' = none)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="")
    ap.add_argument("--scenarios", default="1,2,3", help="which scenarios to run, e.g. 3 for a 1024 px 2D-only run")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench-sam2-")
    studies = os.path.join(work, "studies")
    os.makedirs(studies)
    images = []
    if a.real:
        shutil.copy(os.path.join(SHARED, a.real), os.path.join(studies, "real.nii.gz"))  # temp dir, not the repo
        images.append("real")
    for n in [int(x) for x in a.synthetic_slices.split(",") if x]:
        synthetic(os.path.join(studies, f"synthetic_{n}.nii.gz"), n)
        images.append(f"synthetic_{n}")
    pt, cfg = write_checkpoint(work, a.model, a.image_size)
    conf = {"checkpoint": pt, "image_size": str(a.image_size), "device": a.device, "random_weights": "false"}
    ours = Server(studies, work, conf=conf)
    theirs = Builtin(studies, work, pt, cfg, a.device)
    results = []
    try:
        for image in images:
            size = list(sitk.ReadImage(os.path.join(studies, image + ".nii.gz")).GetSize())
            print(f"== {image} {size}", flush=True)
            results.append(run_volume(ours, theirs, image, size, a.runs, a.device, a.scenarios.split(",")))
            print(json.dumps(results[-1], indent=1), flush=True)
        rss = {"ours": peak_rss_mb(ours.proc.pid), "theirs": peak_rss_mb(theirs.proc.pid)}
    finally:
        ours.stop()
        theirs.stop()
    report = render(a, results, rss)
    print(report)
    if a.out:
        open(a.out, "w").write(report)


def render(a, results, rss):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [f"# sam2_3d vs MONAI Label built-in SAM 2 ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Command: `python benchmarks/bench_vs_builtin.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} cores ({cpu}), device {a.device}; torch {torch.__version__}",
             f"Model: SAM 2.1 {a.model}, RANDOM weights (one checkpoint file loaded by both), image size {a.image_size} for both",
             f"Medians over {a.runs} runs; ratio = ours / theirs (lower is better for ours).", "",
             "| volume (x,y,z) | 1: total s ours / theirs | 1: s per slice processed ours / theirs | ratio/slice | "
             "2: session s ours / theirs | ratio | 2: ours incremental / ours full | "
             "3: 2D click s ours / theirs | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        o1, t1 = r["s1"]["ours"], r["s1"]["theirs"]
        o2, t2 = r["s2"]["ours"]["total"], r["s2"]["theirs"]["total"]
        f2 = r["s2"].get("ours_full", {}).get("total", float("nan"))
        o3, t3 = r["s3"]["ours"]["click"], r["s3"]["theirs"]["click"]
        lines.append(f"| {r['image']} {tuple(r['size'])} | {o1['total']:.2f} / {t1['total']:.2f} | "
                     f"{o1['per_slice']:.3f} / {t1['per_slice']:.3f} | {o1['per_slice'] / t1['per_slice']:.2f} | "
                     f"{o2:.2f} / {t2:.2f} | {o2 / t2:.2f} | {o2:.2f} / {f2:.2f} = {o2 / f2:.2f} | "
                     f"{o3:.3f} / {t3:.3f} | {o3 / t3:.2f} |")
    lines += ["", f"Peak RSS (VmHWM of each server's process tree, whole run): ours {rss['ours']} MB, theirs {rss['theirs']} MB", "",
              "What each system processed (last run):", ""]
    for r in results:
        for name in ("ours", "theirs"):
            p = r["processed"].get(name)
            if p is None:
                continue
            lines.append(f"- {r['image']} {name}: first propagation {p['first']}; corrections (slice: spans) {p['corrections']}")
    lines += ["", "What each of our corrections changed (voxels and slices that differ from the answer before it) and "
              "how the incremental answer compares with a full re-propagation of the same prompts (IoU):", ""]
    for r in results:
        for row in r.get("changed", []):
            lines.append(f"- {r['image']} correction on slice {row['slice']}: {row['voxels_changed']} voxels on "
                         f"{row['slices_changed']} slices changed; IoU vs full {row['iou_vs_full']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
