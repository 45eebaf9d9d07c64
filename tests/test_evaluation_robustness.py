"""Bad cases do not stop an evaluation: failed rows with reasons, checked grids, labels found by pattern,
stable CSV columns, clean temp folders, one-line errors, figures that show prompts (RANDOM WEIGHTS, 256 px).

The dataset is built here: small synthetic volumes (a disc on noise), one case per kind of trouble.
"""

from __future__ import annotations

import csv
import json
import os

import evaluate
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TEST_IMAGE_SIZE
from PIL import Image

from lib.evaluation import datasets, outputs


def _volume(radii, spacing=(1.0, 1.0, 2.0)):
    rng = np.random.default_rng(len(radii))
    yy, xx = np.mgrid[:64, :64]
    gt = np.stack([((yy - 32) ** 2 + (xx - 30) ** 2) < r * r for r in radii]).astype(np.uint8)
    image = sitk.GetImageFromArray((gt * 300 + rng.normal(0, 30, gt.shape)).astype(np.int16))
    image.SetSpacing(spacing)
    label = sitk.GetImageFromArray(gt)
    label.CopyInformation(image)
    return image, label


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    radii = [0, 10, 11, 12, 11, 0]
    for name in ("a_absent", "b_aorta", "c_badgrid", "d_unreadable"):
        (root / name).mkdir()
    image, label = _volume(radii)
    sitk.WriteImage(image, str(root / "a_absent" / "image.nii.gz"))
    sitk.WriteImage(sitk.Image(label.GetSize(), sitk.sitkUInt8) * 0 + 0, str(root / "a_absent" / "label.nii.gz"))
    empty = sitk.ReadImage(str(root / "a_absent" / "label.nii.gz"))
    empty.CopyInformation(image)
    sitk.WriteImage(empty, str(root / "a_absent" / "label.nii.gz"))  # on the grid, but no object
    sitk.WriteImage(image, str(root / "b_aorta" / "image.nii.gz"))
    sitk.WriteImage(label, str(root / "b_aorta" / "aorta.nii.gz"))  # named after its structure
    sitk.WriteImage(image, str(root / "c_badgrid" / "image.nii.gz"))
    moved = sitk.Image(label)
    moved.SetSpacing((1.0, 1.0, 3.0))  # same shape, another spacing: must not be scored silently
    sitk.WriteImage(moved, str(root / "c_badgrid" / "label.nii.gz"))
    sitk.WriteImage(image, str(root / "d_unreadable" / "image.nii.gz"))
    (root / "d_unreadable" / "label.nii.gz").write_bytes(b"not a nifti file")
    return str(root)


def test_label_named_after_its_structure_needs_a_pattern_and_the_error_says_so(tmp_path):
    image, label = _volume([0, 10, 0])
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    sitk.WriteImage(label, str(tmp_path / "aorta.nii.gz"))
    with pytest.raises(ValueError, match="--label-file"):
        datasets.discover(str(tmp_path), "cases")
    cases = datasets.discover(str(tmp_path), "cases", label_pattern="aorta*")
    assert [os.path.basename(c.label) for c in cases] == ["aorta.nii.gz"]


@pytest.mark.parametrize("change, word", [
    (lambda im: im.SetSpacing((1.0, 1.0, 2.5)), "spacing"),
    (lambda im: im.SetOrigin((0.0, 4.0, 0.0)), "origin"),
    (lambda im: im.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)), "direction"),
])
def test_grid_check_names_what_differs(change, word):
    image, label = _volume([0, 10, 0])
    datasets.check_grid(image, label, "ok")
    change(label)
    with pytest.raises(datasets.GridMismatch, match=f"case7: label is not on the image grid: {word}"):
        datasets.check_grid(image, label, "case7")
    small = sitk.Image([10, 10, 3], sitk.sitkUInt8)
    with pytest.raises(datasets.GridMismatch, match="size"):
        datasets.check_grid(image, small, "case7")


def test_bad_cases_become_failed_rows_and_the_run_goes_on(messy, tmp_path, capsys):
    out = tmp_path / "out"
    keys = tmp_path / "keys.csv"
    keys.write_text("case,key_slice\nb_aorta,2\n")
    argv = ["--data", messy, "--key-slices", str(keys), "--format", "cases", "--label-file", "label*|aorta*", "--label", "vessel=1",
            "--protocol", "shen2024-1mask", "medsam2-box", "--random-weights", "--image-size", str(TEST_IMAGE_SIZE),
            "--device", "cpu", "--workers", "1", "--out", str(out), "--no-progress"]
    assert evaluate.main(argv) == 0
    assert "FAILED" in capsys.readouterr().out
    with open(out / "results.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == outputs.COLUMNS  # the first case has no label: columns are the same
    by_case = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    assert [r["status"] for r in by_case["a_absent"]] == ["absent"]
    assert [(r["protocol"], r["status"]) for r in by_case["b_aorta"]] == [("shen2024-1mask", "ok"), ("medsam2-box", "ok")]
    bad = by_case["c_badgrid"][0]
    assert bad["status"] == "failed" and "not on the image grid" in bad["reason"] and "spacing" in bad["reason"]
    assert by_case["d_unreadable"][0]["status"] == "failed" and by_case["d_unreadable"][0]["reason"]
    shen, box = by_case["b_aorta"]
    # the paper metric, both Dice and both NSD conventions, labelled; the video 1..3 (slice 4 dropped)
    assert (shen["scored_from"], shen["scored_to"], shen["prompt_slice"]) == ("1", "3", "2")
    assert "MONAI NSD (tolerance 1 voxel" in shen["paper_metric"] and "surfel" in box["paper_metric"]
    for col in ("paper_dice", "paper_nsd", "dice_pooled", "dice_slice_mean", "nsd_monai", "nsd_surfel"):
        assert 0.0 <= float(shen[col]) <= 1.0 and 0.0 <= float(box[col]) <= 1.0
    assert shen["dice_pooled_no_prompt_slice"] != "" and box["dice_pooled_no_prompt_slice"] == ""
    assert (box["prompt_slice"], box["prompt_slice_source"]) == ("2", "given")  # the dataset's key slice
    assert float(shen["encode_seconds"]) > 0 and shen["encode_frames"] == "6" and shen["device"] == "cpu"
    # per-slice Dice: none where the protocol never ran (outside the video)
    rec = json.load(open(out / "results.json"))["cases"]
    shen_rec = next(r for c in rec if c["case"] == "b_aorta" for r in c["results"] if r["protocol"] == "shen2024-1mask")
    assert shen_rec["per_slice_dice"][0] is None and shen_rec["per_slice_dice"][4] is None
    assert shen_rec["per_slice_dice"][2] == 1.0 and shen_rec["per_slice_iou"][2] == 1.0  # the ground-truth prompt
    assert shen_rec["per_slice_iou"][0] is None
    report = open(out / "report.md").read()
    assert "RANDOM WEIGHTS" in report and "## Skipped and failed" in report and "not on the image grid" in report
    assert "![prompts shen2024-1mask]" in report and "![prompts medsam2-box]" in report
    for png in os.listdir(out / "figures"):
        with Image.open(out / "figures" / png) as im:
            assert round(im.info["dpi"][0]) >= 150, png
    assert "Traceback" in open(out / "evaluate.log").read()  # the details are in the log, not on the console


def test_a_bad_command_line_gives_one_line(tmp_path, capsys):
    rc = evaluate.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--random-weights"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: dataset not found")
    assert "Traceback" not in err


def test_key_slices_file(tmp_path):
    good = tmp_path / "k.csv"
    good.write_text("case,key_slice\nA,7\nB,0\n")
    assert evaluate.read_key_slices(str(good)) == {"A": 7, "B": 0}
    (tmp_path / "k.json").write_text('{"A": 3}')
    assert evaluate.read_key_slices(str(tmp_path / "k.json")) == {"A": 3}
    bad = tmp_path / "bad.csv"
    bad.write_text("name,slice\nA,7\n")
    with pytest.raises(ValueError, match="case,key_slice"):
        evaluate.read_key_slices(str(bad))
