"""Start-up errors: one clear message and no traceback for a missing, misnamed or corrupt checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import APP_DIR


def start(tmp_path, studies, *conf, ckpt_dir=None):
    args = [os.path.join(os.path.dirname(sys.executable), "monailabel"), "start_server", "--app", APP_DIR,
            "--studies", studies, "--host", "127.0.0.1", "--port", "1"]
    for i in range(0, len(conf), 2):
        args += ["--conf", conf[i], conf[i + 1]]
    env = dict(os.environ, SAM2_3D_CHECKPOINT_DIR=str(ckpt_dir or tmp_path / "empty"))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    return proc.returncode, proc.stdout + proc.stderr


def _cases(tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    (ckpts / "sam2.1_hiera_tiny.pt").write_bytes(os.urandom(4096))  # a truncated download
    with open(ckpts / "sam2.1_hiera_small.pt", "wb") as f:  # right size, wrong bytes (sparse file)
        f.truncate(184416285)
    corrupt = tmp_path / "sam2.1_hiera_base_plus.pt"  # a user's file named like a registry file, garbage inside
    corrupt.write_bytes(b"PK\x03\x04 not a checkpoint")
    return [
        ("missing path", ("checkpoint", "/nonexistent/sam2.1_hiera_tiny.pt"), None, "checkpoint file not found: /nonexistent"),
        ("missing registry file", ("checkpoint", "sam2.1_hiera_large"), None, "download_ckpts.py sam2.1_hiera_large"),
        ("misnamed file", ("checkpoint", str(ckpts / "sam2.1_hiera_tiny.pt").replace("tiny.pt", "mine.pt")), None,
         "not found"),
        ("unknown name", ("checkpoint", "sam3_huge"), None, "unknown checkpoint 'sam3_huge'"),
        ("wrong size", ("checkpoint", "sam2.1_hiera_tiny"), ckpts, "is 4,096 bytes, but sam2.1_hiera_tiny is 156,008,466"),
        ("checksum with verify", ("checkpoint", "sam2.1_hiera_small", "verify", "true"), ckpts, "SHA-256"),
        ("corrupt file", ("checkpoint", str(corrupt)), None, "does not load as configs/sam2.1/sam2.1_hiera_b+.yaml"),
    ]


def test_bad_checkpoints_stop_start_up_with_one_clear_message(tmp_path, studies):
    for what, conf, ckpt_dir, message in _cases(tmp_path):
        rc, log = start(tmp_path, studies, *conf, ckpt_dir=ckpt_dir)
        assert rc != 0, (what, log[-2000:])
        assert "sam2-3d cannot start: " in log and message in log, (what, log[-2000:])
        assert "Traceback" not in log, (what, log[-3000:])
