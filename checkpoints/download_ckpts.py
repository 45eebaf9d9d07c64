#!/usr/bin/env python
"""Download SAM 2 / SAM 2.1 checkpoints (Meta's public URLs) and MedSAM2's (bowang-lab's Hugging Face files)
into this folder, and verify them.

    python checkpoints/download_ckpts.py                      # the default (sam2.1_hiera_tiny)
    python checkpoints/download_ckpts.py sam2.1_hiera_large   # any names from --list
    python checkpoints/download_ckpts.py --all
    python checkpoints/download_ckpts.py --list
    python checkpoints/download_ckpts.py --verify             # check the files already here

The same URLs as SAM 2's own checkpoints/download_ckpts.sh and MedSAM2's download.sh. Each SAM 2 file is
checked against its size and SHA-256 (see apps/sam2_3d/lib/engine/checkpoints.py) before it is moved into
place; MedSAM2 publishes neither, so its files are checked by the server loading them strictly.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "apps", "sam2_3d"))

from lib.engine.checkpoints import DEFAULT_CHECKPOINT, REGISTRY, sha256_of  # noqa: E402


def verify(spec, path: str) -> str | None:
    """None if the file is the published one, else what is wrong with it."""
    size = os.path.getsize(path)
    if spec.size is not None and size != spec.size:
        return f"size {size} != expected {spec.size}"
    if spec.sha256 is None:
        return None  # nobody pins MedSAM2's checksums: the server checks such a file by loading it strictly
    digest = sha256_of(path)
    if digest != spec.sha256:
        return f"sha256 {digest} != expected {spec.sha256}"
    return None


def download(spec, force: bool = False) -> str:
    if os.path.isfile(spec.path) and not force:
        problem = verify(spec, spec.path)
        if problem is None:
            print(f"{spec.name}: already here and verified ({spec.path})")
            return spec.path
        print(f"{spec.name}: existing file is bad ({problem}); downloading again")
    os.makedirs(os.path.dirname(spec.path), exist_ok=True)
    from tqdm import tqdm

    with tempfile.NamedTemporaryFile(dir=os.path.dirname(spec.path), suffix=".part", delete=False) as tmp:
        try:
            response = urllib.request.urlopen(spec.url)
        except OSError as e:
            os.unlink(tmp.name)
            raise SystemExit(f"{spec.name}: cannot download {spec.url}: {e}")
        with response, tqdm(
            total=int(response.headers.get("Content-Length") or spec.size or 0), unit="B", unit_scale=True, desc=spec.name
        ) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                tmp.write(block)
                bar.update(len(block))
    problem = verify(spec, tmp.name)
    if problem:
        os.unlink(tmp.name)
        raise SystemExit(f"{spec.name}: downloaded file is bad ({problem}); not kept")
    shutil.move(tmp.name, spec.path)
    print(f"{spec.name}: saved and verified: {spec.path}")
    return spec.path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"checkpoint names (default: {DEFAULT_CHECKPOINT})")
    parser.add_argument("--all", action="store_true", help="download every checkpoint in the registry")
    parser.add_argument("--list", action="store_true", help="list names, files, URLs and sizes")
    parser.add_argument("--verify", action="store_true", help="verify files already present, download nothing")
    parser.add_argument("--force", action="store_true", help="download even if a verified file is present")
    args = parser.parse_args(argv)

    if args.list:
        for spec in REGISTRY.values():
            size = f"{spec.size / 1e6:7.1f} MB" if spec.size else "   size ?  "
            print(f"{spec.name:24s} {spec.family:8s} {spec.config:36s} {size}  {spec.url}")
        return 0
    names = list(REGISTRY) if args.all else (args.names or [DEFAULT_CHECKPOINT])
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown checkpoint(s) {unknown}; known: {', '.join(REGISTRY)}")
    if args.verify:
        bad = 0
        for name in names:
            spec = REGISTRY[name]
            problem = verify(spec, spec.path) if os.path.isfile(spec.path) else "missing"
            print(f"{name}: {'ok' if problem is None else problem}")
            bad += problem is not None
        return 1 if bad else 0
    for name in names:
        download(REGISTRY[name], force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
