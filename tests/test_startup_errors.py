"""Start-up errors: one clear message and no traceback for a missing, misnamed or corrupt checkpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import APP_DIR, free_port


def start(tmp_path, studies, *conf, ckpt_dir=None, port=None):
    args = [os.path.join(os.path.dirname(sys.executable), "monailabel"), "start_server", "--app", APP_DIR,
            "--studies", studies, "--host", "127.0.0.1", "--port", str(port or free_port())]
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


BAD_CONF = [
    (("imagesize", "128"), "unknown option --conf imagesize 128; known options: ", "image_size"),
    (("image_size", "abc"), "--conf image_size 'abc' is not accepted", "a multiple of 32"),
    (("image_size", "100"), "--conf image_size '100' is not accepted", "a multiple of 32"),
    (("random_weights", "maybe"), "--conf random_weights 'maybe' is not accepted", "true or false"),
    (("max_volumes", "0"), "--conf max_volumes '0' is not accepted", "an integer >= 1"),
    (("max_session_gb", "nan"), "--conf max_session_gb 'nan' is not accepted", "a number of GB > 0"),
    (("compile_mode", "fast"), "--conf compile_mode 'fast' is not accepted", "reduce-overhead"),
]


def test_every_bad_conf_key_or_value_is_named_with_what_is_accepted():
    from lib.engine.errors import UnknownOption
    from lib.engine.options import check_conf

    for (key, value), message, accepted in BAD_CONF:
        with pytest.raises(UnknownOption) as e:
            check_conf({"random_weights": "true", key: value})
        assert message in str(e.value) and accepted in str(e.value) and "\n" not in str(e.value), (key, str(e.value))
    assert check_conf({"image_size": "256", "random_weights": "on", "device": "cpu"}) == {
        "image_size": 256, "random_weights": True, "device": "cpu"}


def test_bad_conf_stops_the_server_with_one_line_and_exit_2(tmp_path, studies):
    """Through the real start-up: before SAM 2 is built, exit 2 and one line (monailabel alone drops
    unknown keys, and bad values failed deep inside the model build with a long traceback)."""
    import torch

    cases = [BAD_CONF[0]]
    if not torch.cuda.is_available():
        cases.append((("device", "cuda"), "--conf device 'cuda' is not accepted", "sees no CUDA device"))
    for conf, message, accepted in cases:
        rc, log = start(tmp_path, studies, "random_weights", "true", *conf)
        assert rc == 2, (conf, log[-2000:])
        line = next((x for x in log.splitlines() if "sam2-3d cannot start: " in x), "")
        assert message in line and accepted in line, (conf, log[-2000:])
        assert "Traceback" not in log and "SAM 2 engine:" not in log, (conf, log[-3000:])


def test_a_port_in_use_is_reported_before_the_model_loads(tmp_path, studies):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        rc, log = start(tmp_path, studies, "random_weights", "true", port=port)
    assert rc == 2, log[-2000:]
    assert f"sam2-3d cannot start: port {port} on 127.0.0.1 is already in use" in log, log[-2000:]
    assert "SAM 2 engine:" not in log and "Traceback" not in log, log[-3000:]


def test_another_sam2_or_monailabel_version_is_named_at_start_up(monkeypatch):
    import importlib.metadata

    import main

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda p: "1.0" if p == "sam2" else real(p))
    with pytest.raises(SystemExit, match=r"sam2 1.0 is installed, but sam2-3d is written against sam2 1.1.0"):
        main._check_versions()
    monkeypatch.setattr(importlib.metadata, "version", real)
    main._check_versions()  # the installed ones pass
