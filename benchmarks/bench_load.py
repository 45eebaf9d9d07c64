"""Bounded loopback load test: N clients x M mixed requests against a real server; prints latency and RSS.

    python benchmarks/bench_load.py --clients 8 --requests 50          # starts its own server (RANDOM WEIGHTS, 256 px)
    python benchmarks/bench_load.py --url http://127.0.0.1:8000 ...    # or drives a running one (needs images load0..2)

Mixed requests per client, each on its own slice of one of three synthetic 64x64x24 volumes: 2D clicks,
propagations over 3 slices, corrections (a second click in the same session), and final label saves.
Checks: no 5xx; every answer's ``prompted_slices`` is the client's own slice (no other client's prompts);
meanwhile a probe asks ``/info/`` every 0.2 s. Prints p50/p95 latency per kind, /info/ latency, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import defaultdict

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

IMAGES = ["load0", "load1", "load2"]
SHAPE = (24, 64, 64)


def make_studies(folder: str) -> None:
    from hostile_support import write_volume

    for n, name in enumerate(IMAGES):
        write_volume(os.path.join(folder, f"{name}.nii.gz"), shape_kji=SHAPE, seed=n)


def _percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def client_run(url, c, n_requests, label_file, results, errors, shared_client_id=None, seed=0):
    rng = random.Random(seed + c)
    image = IMAGES[c % len(IMAGES)]
    k = 2 + c  # the client's own slice: another client's prompt would show up in prompted_slices
    client_id = shared_client_id or f"load-{c}"
    for r in range(n_requests):
        kind = rng.choice(["click2d", "propagate", "correction", "save"])
        t0 = time.perf_counter()
        try:
            if kind == "save":
                with open(label_file, "rb") as f:
                    resp = requests.put(f"{url}/datastore/label", params={"image": image, "tag": f"c{c}"},
                                        files={"label": ("l.nii.gz", f)}, timeout=600)
                expect = None
            else:
                fg = [[32, 32, k]] + ([[30 + rng.randint(0, 4), 34, k]] if kind == "correction" else [])
                model = "sam2_2d" if kind == "click2d" else "sam2_point"
                params = {"foreground": fg, "client_id": client_id, "start_slice": k - 1, "end_slice": k + 1,
                          "auto_stop": 0, "label": f"object-{c}" if shared_client_id is None else "object"}
                if kind == "click2d":
                    params["slice"] = k
                resp = requests.post(f"{url}/infer/{model}", params={"image": image, "output": "json"},
                                     data={"params": json.dumps(params)}, timeout=600)
                expect = [k]
            elapsed = time.perf_counter() - t0
            results[kind].append(elapsed)
            if resp.status_code >= 500:
                errors.append(f"client {c} {kind}: {resp.status_code} {resp.text[:200]}")
            elif resp.status_code != 200:
                errors.append(f"client {c} {kind}: unexpected {resp.status_code} {resp.text[:200]}")
            elif expect is not None and resp.json().get("prompted_slices") != expect:
                errors.append(f"client {c} {kind}: prompted_slices {resp.json().get('prompted_slices')} != {expect}")
        except requests.RequestException as e:
            errors.append(f"client {c} {kind}: {e}")


def run_load(url, clients, n_requests, pid=None, shared_client_id=None, label_file=None):
    import psutil

    results, errors, info_times = defaultdict(list), [], []
    peak = [0]
    done = threading.Event()

    def probe():
        proc = psutil.Process(pid) if pid else None
        while not done.is_set():
            t0 = time.perf_counter()
            try:
                requests.get(url + "/info/", timeout=30)
                info_times.append(time.perf_counter() - t0)
            except requests.RequestException:
                info_times.append(30.0)
            if proc is not None:
                rss = proc.memory_info().rss + sum(ch.memory_info().rss for ch in proc.children(recursive=True))
                peak[0] = max(peak[0], rss)
            time.sleep(0.2)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_run, args=(url, c, n_requests, label_file, results, errors, shared_client_id))
               for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    prober.join()
    every = [v for vs in results.values() for v in vs]
    return {
        "clients": clients, "requests": len(every), "wall_s": wall, "errors": errors,
        "p50_s": _percentile(every, 0.5), "p95_s": _percentile(every, 0.95),
        "per_kind": {k: (len(v), _percentile(v, 0.5), _percentile(v, 0.95)) for k, v in sorted(results.items())},
        "info_p50_s": _percentile(info_times, 0.5), "info_p95_s": _percentile(info_times, 0.95),
        "info_max_s": max(info_times) if info_times else float("nan"), "info_n": len(info_times),
        "peak_rss_mb": peak[0] / 2**20,
    }


def label_for_load(studies: str, out_folder: str) -> str:
    """A label on the load images' grid (all three share it)."""
    import SimpleITK as sitk
    from hostile_support import write_label_like

    image = sitk.ReadImage(os.path.join(studies, f"{IMAGES[0]}.nii.gz"))
    return write_label_like(image, os.path.join(out_folder, "load_label.nii.gz"))


def report(stats) -> str:
    lines = [f"{stats['clients']} clients, {stats['requests']} requests in {stats['wall_s']:.1f} s; "
             f"errors (5xx or wrong answers): {len(stats['errors'])}",
             f"latency all: p50 {stats['p50_s']:.2f} s, p95 {stats['p95_s']:.2f} s"]
    for kind, (n, p50, p95) in stats["per_kind"].items():
        lines.append(f"  {kind:11s} n={n:3d}  p50 {p50:.2f} s  p95 {p95:.2f} s")
    lines.append(f"/info/ during load ({stats['info_n']} probes): p50 {stats['info_p50_s'] * 1000:.0f} ms, "
                 f"p95 {stats['info_p95_s'] * 1000:.0f} ms, max {stats['info_max_s'] * 1000:.0f} ms")
    lines.append(f"server peak RSS: {stats['peak_rss_mb']:.0f} MB")
    return "\n".join(lines + [f"  ! {e}" for e in stats["errors"][:10]])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--url", default=None)
    ap.add_argument("--image-size", default="256")
    ap.add_argument("--shared-client-id", action="store_true", help="all clients share one client_id")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench_load_")
    studies = os.path.join(work, "studies")
    os.makedirs(studies)
    make_studies(studies)
    label = label_for_load(studies, work)
    server = None
    if args.url is None:
        from conftest import Server

        server = Server(studies, work, conf={"image_size": args.image_size})
        url, pid = server.url, server.proc.pid
    else:
        url, pid = args.url, None
    try:
        stats = run_load(url, args.clients, args.requests, pid=pid, label_file=label,
                         shared_client_id="shared" if args.shared_client_id else None)
    finally:
        if server:
            server.stop()
    print(f"bench_load: SAM 2.1 tiny, RANDOM WEIGHTS, {args.image_size} px, CPU, loopback")
    print(report(stats))
    return 1 if stats["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
