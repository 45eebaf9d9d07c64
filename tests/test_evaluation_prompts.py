"""Prompt placement, datasets and metrics of the evaluation, without SAM 2 (fast)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import shared
from scipy.ndimage import distance_transform_edt
from scipy.ndimage import label as cc_label

from lib.evaluation import datasets, metrics
from lib.evaluation import prompts as P


def _label(folder: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(shared(folder, "label.nii.gz")))


def test_central_slice_is_middle_of_z_range_and_skips_gaps():
    gt = _label("spinalcord_t2") > 0
    ks = np.flatnonzero(gt.any(axis=(1, 2)))
    assert P.z_range(gt) == (ks[0], ks[-1])
    assert P.central_slice(gt) == (ks[0] + ks[-1]) // 2
    gapped = gt.copy()
    gapped[(ks[0] + ks[-1]) // 2] = False  # the middle slice is empty: the nearest non-empty one is used
    k = P.central_slice(gapped)
    assert gapped[k].any() and abs(k - (ks[0] + ks[-1]) // 2) == 1


def test_first_click_is_deepest_point_of_the_object():
    gt = _label("spinalcord_t2") > 0
    k = P.central_slice(gt)
    (x, y), lab, region = P.next_click(gt[k], np.zeros_like(gt[k]))
    dist = distance_transform_edt(np.pad(gt[k], 1))[1:-1, 1:-1]
    assert (lab, region) == (1, "false_negative")
    assert gt[k][y, x] and dist[y, x] == dist.max() > 1


def test_click_goes_to_the_larger_error_region():
    gt = _label("spinalcord_t2") > 0
    k = P.central_slice(gt)
    g = gt[k]
    ys, xs = np.nonzero(g)
    # a prediction that covers the object and a large block of background: FP region is the larger one
    pred = g.copy()
    pred[: g.shape[0] // 2, : g.shape[1] // 2] = True
    fn, fp = g & ~pred, pred & ~g
    assert fp.sum() > fn.sum()
    (x, y), lab, region = P.next_click(g, pred)
    assert (lab, region) == (0, "false_positive") and fp[y, x] and not g[y, x]
    assert distance_transform_edt(np.pad(fp, 1))[1:-1, 1:-1][y, x] == distance_transform_edt(np.pad(fp, 1)).max()
    # an under-segmentation (half the object missed): FN is larger, the click is positive inside it
    pred = g.copy()
    pred[:, : int(np.median(xs))] = False
    (x, y), lab, region = P.next_click(g, pred)
    assert (lab, region) == (1, "false_negative") and g[y, x] and not pred[y, x]
    assert P.next_click(g, g.copy()) is None  # a perfect slice gets no click


def test_box_is_the_ground_truth_bounding_box():
    gt = _label("spinalcord_t2") > 0
    k = P.central_slice(gt)
    ys, xs = np.nonzero(gt[k])
    assert P.bounding_box(gt[k]) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_slice2d_positives_inside_negative_at_bbox_centre():
    lab = _label("totalseg_mr_small")
    # pick a label value whose mask has two separate components on some slice: its bbox centre is background
    for value in np.unique(lab)[1:]:
        for k in range(lab.shape[0]):
            m = lab[k] == value
            if m.sum() > 20 and cc_label(m)[1] >= 2:
                x0, y0, x1, y1 = P.bounding_box(m)
                if not m[(y0 + y1) // 2, (x0 + x1) // 2]:
                    break
        else:
            continue
        break
    else:
        pytest.skip("no slice with a background bbox centre in totalseg_mr_small")
    points, labels = P.slice2d_points(m, 3, seed=1)
    assert labels == [1, 1, 1, 0]
    assert all(m[y, x] for (x, y), l in zip(points, labels) if l == 1)
    assert points[-1] == ((x0 + x1) // 2, (y0 + y1) // 2) and not m[points[-1][1], points[-1][0]]
    assert len(set(map(tuple, points))) == 4
    assert P.slice2d_points(m, 3, seed=1) == (points, labels)  # seeded: reproducible
    # a convex object: its bbox centre is inside, so no contradicting negative is placed
    cord = _label("spinalcord_t2") > 0
    points, labels = P.slice2d_points(cord[P.central_slice(cord)], 2, seed=0)
    assert labels == [1, 1]


def test_metrics_match_monai_on_known_masks():
    from monai.metrics import DiceMetric, MeanIoU, SurfaceDiceMetric

    gt = np.zeros((8, 30, 30), bool)
    gt[2:6, 5:25, 5:25] = True  # 4 slices x 400 px
    pred = np.zeros_like(gt)
    pred[2:6, 5:25, 10:30] = True  # shifted 5 px: 4 x 300 overlap
    m = metrics.evaluate(pred, gt, (3.0, 1.0, 1.0), 2.0)
    assert m["dice_pooled"] == pytest.approx(2 * 1200 / (1600 + 1600))
    assert m["iou_pooled"] == pytest.approx(1200 / 2000)
    t = lambda a: torch.from_numpy(a.astype(np.float32))[None, None]  # noqa: E731
    dm, im = DiceMetric(include_background=True), MeanIoU(include_background=True)
    sm = SurfaceDiceMetric(class_thresholds=[2.0], include_background=True)
    dm(t(pred), t(gt)), im(t(pred), t(gt)), sm(t(pred), t(gt), spacing=[3.0, 1.0, 1.0])
    assert m["dice_pooled"] == pytest.approx(float(dm.aggregate()))
    assert m["iou_pooled"] == pytest.approx(float(im.aggregate()))
    assert m["nsd_monai"] == pytest.approx(float(sm.aggregate()))
    assert 0 < m["nsd_monai"] < 1 and m["object_slices"] == 4 and m["dice_slice_mean"] == pytest.approx(0.75)
    # leakage outside the object's slices lowers the pooled score; the slice mean only counts object slices
    pred[7, 5:25, 5:25] = True
    m = metrics.evaluate(pred, gt, (3.0, 1.0, 1.0), 2.0)
    assert m["dice_pooled"] < 0.75 and m["dice_slice_mean"] == pytest.approx(0.75)
    assert metrics.evaluate(pred, gt, (3.0, 1.0, 1.0), 2.0, scored=(1, 6))["dice_pooled"] == pytest.approx(0.75)
    per = metrics.per_slice_dice(pred, gt)
    assert per[0] == 1.0 and per[3] == pytest.approx(0.75) and per[7] == 0.0
    same = metrics.evaluate(gt, gt, (1, 1, 1), 1.0)
    assert (same["dice_pooled"], same["iou_pooled"], same["nsd_monai"], same["nsd_surfel"]) == (1.0, 1.0, 1.0, 1.0)


def test_dataset_layouts(tmp_path):
    img, lab = shared("spinalcord_t2", "image.nii.gz"), shared("spinalcord_t2", "label.nii.gz")
    msd = tmp_path / "msd"
    (msd / "imagesTr").mkdir(parents=True), (msd / "labelsTr").mkdir()
    os.symlink(img, msd / "imagesTr" / "cord_001.nii.gz"), os.symlink(lab, msd / "labelsTr" / "cord_001.nii.gz")
    flat = tmp_path / "flat"
    flat.mkdir()
    os.symlink(img, flat / "cord.nii.gz"), os.symlink(lab, flat / "cord_seg.nii.gz")
    brats = shared("brats2013")
    assert [c.case_id for c in datasets.discover(str(msd))] == ["cord_001"]
    assert [(c.case_id, os.path.basename(c.label)) for c in datasets.discover(str(flat))] == [("cord", "cord_seg.nii.gz")]
    cases = datasets.discover(brats, "cases", modality="flair")
    assert [c.case_id for c in cases] == ["pat0001", "pat0002", "pat0003", "pat0004"]
    assert all(c.image.endswith("flair.nii.gz") and c.label.endswith("label.nii.gz") for c in cases)
    with pytest.raises(ValueError, match="--modality"):
        datasets.discover(brats, "cases")  # flair or t1c: ambiguous without --modality
    npz = datasets.discover(shared("ct_lesion_npz"))
    assert len(npz) == 4 and npz[0].kind == "npz"
    loaded = datasets.load(npz[0])
    data = np.load(npz[0].image)
    image = sitk.ReadImage(loaded.image_path)
    assert np.array_equal(sitk.GetArrayFromImage(image), data["imgs"])
    assert loaded.spacing_kji == pytest.approx(tuple(data["spacing"][::-1]))
    loaded.cleanup()
    assert not os.path.exists(loaded.image_path)


def test_z_crop_keeps_the_object_and_geometry():
    case = datasets.discover(shared("spinalcord_t2"), "cases")[0]
    spec = datasets.LabelSpec.parse("cord=1")
    full = datasets.load(case)
    lo, hi = P.z_range(spec.mask(full.label))
    crop = datasets.load(case, spec.mask, z_margin=2)
    assert crop.crop == (lo - 2, hi + 2)
    assert np.array_equal(crop.label, full.label[lo - 2 : hi + 3])
    img = sitk.ReadImage(crop.image_path)
    ref = sitk.ReadImage(case.image)
    assert np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref)[lo - 2 : hi + 3])
    assert img.GetOrigin() == pytest.approx(ref.TransformIndexToPhysicalPoint((0, 0, lo - 2)))
    short = datasets.load(case, spec.mask, z_margin=0, max_slices=5)
    assert short.crop[1] - short.crop[0] + 1 == 5 and lo <= short.crop[0] and short.crop[1] <= hi
    crop.cleanup(), short.cleanup()


def test_label_spec():
    assert datasets.LabelSpec.parse("wt=1,2,4") == datasets.LabelSpec("wt", (1, 2, 4))
    assert datasets.LabelSpec.parse("3") == datasets.LabelSpec("3", (3,))
    assert datasets.LabelSpec.parse("fg=any").values is None
    lungs = datasets.LabelSpec.parse("lungs=10+11,12+13+14")  # two lungs, each made of lobes
    assert lungs.values == (10, 11, 12, 13, 14) and lungs.groups == ((10, 11), (12, 13, 14))
    lab = np.array([[0, 10, 11, 12, 14, 3]])
    parts = lungs.parts(lab)
    assert parts[0, 1] == parts[0, 2] != parts[0, 3] == parts[0, 4] and parts[0, 0] == parts[0, 5] == 0
    assert list(datasets.LabelSpec.parse("lungs=1,2").parts(np.array([0, 1, 2, 5]))) == [0, 1, 2, 0]
    with pytest.raises(ValueError):
        datasets.LabelSpec.parse("wt=a,b")
