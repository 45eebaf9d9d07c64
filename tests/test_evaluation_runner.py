"""The evaluation command end to end (RANDOM WEIGHTS, 256 px, 2 tiny cases): outputs, resume, Ray.

The two cases are real volumes (spinalcord_t2, totalseg_mr_small) linked into a temporary flat
folder, cropped to 4 slices each so a case run takes seconds.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import tempfile

import evaluate
import pytest
from conftest import TEST_IMAGE_SIZE, shared

from lib.evaluation import case_task, runner


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    for name, folder in (("cord", "spinalcord_t2"), ("mr", "totalseg_mr_small")):
        os.symlink(shared(folder, "image.nii.gz"), root / f"{name}.nii.gz")
        os.symlink(shared(folder, "label.nii.gz"), root / f"{name}_label.nii.gz")
    return str(root)


def argv(data, out, *extra):
    return ["--data", data, "--label", "fg=any", "--protocol", "mask", "box", "clicks2", "slice2d", "--random-weights",
            "--image-size", str(TEST_IMAGE_SIZE), "--device", "cpu", "--z-margin", "0", "--max-slices", "4",
            "--out", str(out), "--no-progress", *extra]


def without_timings(obj):
    """Results without what depends on the machine or the process (timings, threads)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in ("seconds", "hardware", "encode")}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def records(out) -> list[dict]:
    with open(os.path.join(out, "results.json")) as f:
        return without_timings(json.load(f)["cases"])


@pytest.fixture(scope="module")
def baseline(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    assert evaluate.main(argv(dataset, out, "--workers", "1")) == 0
    return str(out)


def test_cli_writes_csv_json_and_labelled_report(baseline):
    with open(os.path.join(baseline, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["protocol"]) for r in rows] == [
        (c, p) for c in ("cord", "mr") for p in ("mask", "box", "clicks2", "slice2d")]
    for r in rows:
        assert r["status"] == "ok" and 0.0 <= float(r["dice_pooled"]) <= 1.0 and float(r["protocol_seconds"]) > 0
        assert int(r["crop_to"]) - int(r["crop_from"]) == 3
        assert r["device"] == "cpu" and int(r["torch_threads"]) >= 1 and int(r["encode_frames"]) == 4
    report = open(os.path.join(baseline, "report.md")).read()
    assert "RANDOM WEIGHTS: plumbing only, not accuracy" in report
    assert "python " in report and "--random-weights" in report  # the command that made it
    figures = os.listdir(os.path.join(baseline, "figures"))
    assert {"per_case_fg.png", "dice_along_z_fg.png"} <= set(figures)
    assert any(f.startswith("worst_") for f in figures)
    for rec in records(baseline):  # prompts recorded for replay; the mask prompt's slice scores 1.0
        mask = next(r for r in rec["results"] if r["protocol"] == "mask")
        assert mask["steps"][0]["kind"] == "mask" and mask["per_slice_dice"][mask["anchor"]] == 1.0


def test_resume_runs_only_the_remaining_cases(dataset, baseline, tmp_path, monkeypatch, capsys):
    real = case_task.evaluate_case
    calls = []

    def interrupted_after_first(case_d, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt("simulated Ctrl-C during the second case")
        calls.append(case_d["case_id"])
        return real(case_d, *args, **kwargs)

    monkeypatch.setattr(case_task, "evaluate_case", interrupted_after_first)
    temp = tmp_path / "tmp"  # this run's own temp root: other processes on the machine use /tmp too
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(argv(dataset, tmp_path / "out", "--workers", "1"))
    assert not glob.glob(str(temp / "*"))  # the run's crops were written there and are gone
    out = tmp_path / "out"
    assert calls == ["cord"] and os.path.exists(out / "cases" / "default" / "cord.json")
    assert not os.path.exists(out / "cases" / "default" / "mr.json")

    ran = []
    monkeypatch.setattr(case_task, "evaluate_case", lambda case_d, *a, **k: ran.append(case_d["case_id"]) or real(case_d, *a, **k))
    assert evaluate.main(argv(dataset, out, "--workers", "1")) == 0
    assert ran == ["mr"]
    assert records(out) == records(baseline)
    # a rerun with other result-changing options is refused rather than mixed in, in one line
    assert evaluate.main(argv(dataset, out, "--workers", "1", "--range", "object")) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--overwrite" in errors[0] and "Traceback" not in err


def test_ray_two_workers_equal_single_process(dataset, baseline, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (requirements-eval.txt)")
    assert evaluate.main(argv(dataset, tmp_path, "--workers", "2")) == 0
    assert records(tmp_path) == records(baseline)


def test_two_settings_side_by_side(dataset, tmp_path):
    args = argv(dataset, tmp_path, "--workers", "1", "--cases", "cord", "--setting", "minmax:preset=slice_minmax",
                "--setting", "mr:preset=mr")
    args[args.index("--protocol") + 1 : args.index("--random-weights")] = ["box"]
    assert evaluate.main(args) == 0
    with open(os.path.join(tmp_path, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], r["protocol"]) for r in rows] == [("minmax", "box"), ("mr", "box")]
    report = open(os.path.join(tmp_path, "report.md")).read()
    assert "| minmax | fg | box | 1 |" in report and "| mr | fg | box | 1 |" in report
    assert [r["preset"] for rec in records(tmp_path) for r in rec["results"]] == ["slice_minmax", "mr"]


def test_setting_syntax():
    base = {"checkpoint": "sam2.1_hiera_tiny", "random_weights": "true"}
    s = runner.parse_setting("t512:image_size=512,preset=mr", base)
    assert s == {"name": "t512", "conf": {**base, "image_size": "512", "preset": "mr"}}
    with pytest.raises(ValueError):
        runner.parse_setting("bad:image_size", base)
