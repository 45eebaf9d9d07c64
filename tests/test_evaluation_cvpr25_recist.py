"""cvpr25-interactive and medsam2-recist: where their prompts go (from the challenge's and MedSAM2's public
scripts) and the sequence of calls, on small synthetic volumes with SAM 2.1 tiny, RANDOM WEIGHTS, 128 px.

References (read, not copied): JunMa11/CVPR-MedSegFMCompetition get_boxes.py (mask3D_to_bbox,
mask2D_to_bbox) and CVPR25_iter_eval.py (compute_edt, sample_coord, the click loop, the AUC);
bowang-lab/MedSAM2 medsam2_infer_CT_lesion_npz_recist.py (get_diameter_bbox, infer_3d).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import trapezoid

from lib.engine.intensity import IntensityPreset
from lib.evaluation import metrics, protocols
from lib.evaluation import prompts as P


def _blob(k=6, h=40, w=36):
    zz, yy, xx = np.mgrid[:k, :h, :w]
    gt = ((zz - 2.5) ** 2 / 4 + (yy - 20) ** 2 / 120 + (xx - 17) ** 2 / 60) < 1
    img = (gt * 80.0 + np.random.default_rng(4).normal(0, 12, gt.shape)).astype(np.float32)
    return img, gt


# --- CVPR 2025: the initial 3D box -----------------------------------------------------------------------


class _Fixed:
    def __init__(self, v):
        self.v = v

    def integers(self, lo, hi):
        assert (lo, hi) == (0, 6)  # np.random.randint(0, 6, 1)
        return self.v


def test_box_mid_slice_is_the_middle_of_the_slices_holding_the_object_and_the_shift_scales_with_size():
    gt = np.zeros((12, 512, 256), bool)
    for k in (3, 4, 6, 7, 8):  # slice 5 empty: z_indices = [3, 4, 6, 7, 8], z_indices[5 // 2] = 6
        gt[k, 100:200, 50:90] = True
    b = P.cvpr25_box(gt, _Fixed(3))
    assert (b["z_min"], b["z_max"], b["z_mid"]) == (3, 8, 6)
    # bbox_shift 3: x by int(3 * 256 / 256) = 3, y by int(3 * 512 / 256) = 6
    assert b["box"] == [50 - 3, 100 - 6, 89 + 3, 199 + 6]
    gt[6, 0:10, 0:5] = True
    assert P.cvpr25_box(gt, _Fixed(5))["box"][:2] == [0, 0]  # clipped to the slice
    assert P.cvpr25_box(gt)["shift"] == 0


# --- CVPR 2025: the refinement click --------------------------------------------------------------------


def test_click_goes_to_the_largest_26_connected_error_component_by_voxel_count():
    gt = np.zeros((6, 30, 30), bool)
    pred = np.zeros_like(gt)
    gt[1:5, 2:26, 2:4] = True  # missed: a thin wall, 4 x 24 x 2 = 192 voxels
    pred[1:5, 12:18, 12:18] = True  # false positive: a 4 x 6 x 6 = 144-voxel block, thicker
    click, label, size = P.cvpr25_click(gt, pred)
    assert label == 1 and size == 192 and gt[click] and not pred[click]
    # Shen's rule (thickest 2D region) would pick the block on that slice
    assert P.shen_click(gt[2], pred[2])[1] == 0


def test_diagonal_neighbours_are_one_error_component():
    gt = np.zeros((4, 10, 10), bool)
    pred = np.zeros_like(gt)
    gt[1, 2, 2] = gt[2, 3, 3] = True  # touch by a corner only: one 26-connected component of 2
    pred[1, 7:9, 7] = True  # 2 voxels elsewhere, a separate component
    (k, j, i), label, size = P.cvpr25_click(gt, pred)
    assert size == 2 and label == 1 and (k, j, i) in ((1, 2, 2), (2, 3, 3))


def test_click_is_the_edt_maximum_with_the_volume_edge_counting_as_outside_ties_drawn_with_seed_42():
    gt = np.zeros((1, 9, 40), bool)
    gt[0, :, :] = True  # the whole slice is missed; the crop padding makes the edges outside
    pred = np.zeros_like(gt)
    click, label, _ = P.cvpr25_click(gt, pred)
    edt = P._cvpr25_edt(gt) * gt
    assert edt[click] == edt.max() == 1.0  # one voxel from the padded edge of a 1-slice volume
    ties = np.argwhere(edt == edt.max())
    assert tuple(ties[np.random.RandomState(42).choice(len(ties))]) == click
    assert P.cvpr25_click(gt, gt) is None


def test_background_click_on_over_segmentation():
    gt = np.zeros((3, 20, 20), bool)
    gt[1, 5:8, 5:8] = True
    pred = gt.copy()
    pred[:, 10:19, 10:19] = True
    (k, j, i), label, _ = P.cvpr25_click(gt, pred)
    # 3 slices thick: the EDT peaks at 2 on the middle slice, over its 5 x 5 centre (a tie drawn with seed 42)
    assert label == 0 and pred[k, j, i] and not gt[k, j, i] and k == 1 and 12 <= j <= 16 and 12 <= i <= 16


# --- CVPR 2025: the rounds through the session's verbs --------------------------------------------------


def test_cvpr25_rounds_go_through_the_session_verbs_incrementally_and_give_the_challenge_metrics(engine128):
    img, gt = _blob()
    session = engine128.open_array("cvpr25", img, client_id="t/cvpr25", preset=IntensityPreset("slice_minmax"))
    calls = []
    propagate = session.propagate

    def spy(lo, hi, *a, **kw):
        prop = propagate(lo, hi, *a, **kw)
        calls.append((lo, hi, prop.how))
        return prop

    session.propagate = spy
    try:
        run = protocols.run(protocols.ProtocolSpec.parse("cvpr25-interactive"), session, gt, seed=0,
                            spacing=(2.0, 1.0, 1.0), nsd_tolerance=2.0)
    finally:
        del session.propagate
    b = P.cvpr25_box(gt, np.random.default_rng(0))
    assert run.steps[0] == {"k": b["z_mid"], "verb": "set_prompts", "kind": "box", "box": b["box"], "round": 0,
                            "box_3d": {"z_min": b["z_min"], "z_max": b["z_max"], "z_mid": b["z_mid"], "shift": b["shift"]}}
    rounds = run.info["rounds"]
    assert len(rounds) == 6 and len(calls) == 6
    assert all(c[:2] == (b["z_min"], b["z_max"]) for c in calls)  # every round: the box's z-range
    assert calls[0][2] == "full" and all(c[2] in ("incremental", "cached") for c in calls[1:])
    clicked = [s for s in run.steps[1:] if s.get("click")]
    assert clicked and all(s["verb"] == "update_prompts" for s in clicked)
    first = clicked[0]
    assert [first["click"]["kji"][2], first["click"]["kji"][1]] == first["points"][-1]
    dscs = [r["dsc"] for r in rounds]
    nsds = [r["nsd"] for r in rounds]
    c = run.info["cvpr25"]
    assert c["dsc_auc"] == pytest.approx(trapezoid(dscs[1:])) and c["nsd_auc"] == pytest.approx(trapezoid(nsds[1:]))
    assert c["dsc_final"] == dscs[-1] == pytest.approx(metrics.overlap(run.mask, gt)["dice"])
    for r in rounds:  # NSD only where DSC > 0.2, else 0 (CVPR25_iter_eval.py)
        assert r["nsd"] == 0.0 if r["dsc"] <= 0.2 else r["nsd"] >= 0.0
    assert not run.mask[: b["z_min"]].any() and not run.mask[b["z_max"] + 1:].any()
    assert c["seconds_per_interaction"] == pytest.approx(np.mean([r["seconds"] for r in rounds]))


# --- MedSAM2 RECIST ---------------------------------------------------------------------------------------


def test_recist_box_is_the_square_on_the_long_axis():
    m = np.zeros((64, 64), np.uint8)
    m[20, 10:31] = 1  # horizontal, 20 px long
    assert P.recist_box(m) == (10, 10, 30, 30)
    from skimage.draw import line

    m = np.zeros((64, 64), np.uint8)
    m[line(10, 40, 40, 10)] = 1  # (x=40, y=10) to (x=10, y=40): row-major first and last pixels are the ends
    half = int(np.hypot(30, 30) / 2)  # 21
    assert P.recist_box(m) == (25 - half, 25 - half, 25 + half, 25 + half)
    m = np.zeros((64, 64), np.uint8)
    m[2, 0:20] = 1
    assert P.recist_box(m) == (0, 0, 18, 11)  # centre int(9.5) = 9, half int(19 / 2) = 9; y clipped at 0


def test_long_axis_stand_in_is_the_longest_diameter_of_the_mask():
    yy, xx = np.mgrid[:50, :60]
    mask = ((yy - 25) ** 2 / 64 + (xx - 30) ** 2 / 400) <= 1  # semi-axes 20 (x) and 8 (y)
    marker = P.long_axis_marker(mask)
    ys, xs = np.nonzero(marker)
    assert xs.min() == 10 and xs.max() == 50 and set(ys) == {25}


def test_recist_pipeline_box_then_mask_forward_reset_mask_reverse(engine128):
    img, gt = _blob()
    session = engine128.open_array("recist", img, client_id="t/recist", preset=IntensityPreset("slice_minmax"))
    predictor = session.engine.predictor
    calls = []
    names = ("add_new_points_or_box", "add_new_mask", "propagate_in_video", "reset_state")
    originals = {n: getattr(predictor, n) for n in names}

    def wrap(name):
        def f(*a, **kw):
            if name == "propagate_in_video":
                calls.append((name, kw.get("start_frame_idx"), kw.get("reverse")))
                return originals[name](*a, **kw)
            out = originals[name](*a, **kw)
            if name == "add_new_mask":  # what was sent
                calls.append((name, kw.get("frame_idx"), None, np.asarray(kw["mask"], bool)))
            elif name == "add_new_points_or_box":  # what came back
                calls.append((name, kw.get("frame_idx"), kw["box"].tolist(), (out[2][0, 0] > 0).cpu().numpy()))
            else:
                calls.append((name,))
            return out
        return f

    for n in names:
        setattr(predictor, n, wrap(n))
    try:
        run = protocols.run(protocols.ProtocolSpec.parse("medsam2-recist"), session, gt)
    finally:
        for n in names:
            delattr(predictor, n)
    k = P.largest_slice(gt)
    box = list(P.recist_box(P.long_axis_marker(gt[k])))
    seq = [c[0] for c in calls]
    start = seq.index("add_new_points_or_box")
    assert seq[start:start + 7] == ["add_new_points_or_box", "add_new_mask", "propagate_in_video", "reset_state",
                                    "add_new_mask", "propagate_in_video", "reset_state"]
    assert set(seq[start + 7:]) <= {"reset_state"}
    box_call, mask1, fwd, _, mask2, rev = calls[start:start + 6]
    assert box_call[1] == k and box_call[2] == box
    # the 2D answer to the box is what is re-added as a mask, before each pass (same state, then after a reset)
    assert mask1[1] == mask2[1] == k
    assert np.array_equal(mask1[3], box_call[3]) and np.array_equal(mask2[3], box_call[3])
    assert fwd == ("propagate_in_video", k, False) and rev == ("propagate_in_video", k, True)
    assert run.anchor == k and run.info["marker"]["source"].startswith("stand-in")
    assert run.propagate == (0, gt.shape[0] - 1)


def test_the_datas_recist_marker_is_used_when_there_is_one_and_must_lie_on_one_slice():
    from lib.evaluation import protocols

    gt = np.zeros((5, 30, 30), bool)
    gt[1:4, 8:20, 6:26] = True
    gt[3, 5:25, 5:28] = True  # slice 3 is the largest
    marker = np.zeros_like(gt)
    marker[2, 14, 8:24] = True  # the radiologist's line on slice 2
    k, line, source, _ = protocols.recist_marker(gt, marker, None)
    assert k == 2 and np.array_equal(line, marker[2]) and "RECIST marker" in source
    k, line, source, key_source = protocols.recist_marker(gt, None, None)
    assert k == 3 and source.startswith("stand-in") and "largest" in key_source
    marker[1, 10, 8:12] = True
    with pytest.raises(ValueError, match="exactly one"):
        protocols.recist_marker(gt, marker, None)


def test_npz_recist_key_is_read_on_the_evaluated_slices(tmp_path):
    from lib.evaluation import datasets

    recist = np.zeros((6, 8, 8), np.uint8)
    recist[4, 3, 1:6] = 1
    path = tmp_path / "c.npz"
    np.savez(path, imgs=np.zeros((6, 8, 8), np.uint8), gts=recist, spacing=np.ones(3), recist=recist)
    case = datasets.Case("c", str(path), kind="npz")
    got = datasets.recist_array(case, (2, 5))
    assert got.shape == (4, 8, 8) and np.array_equal(np.flatnonzero(got.reshape(4, -1).any(axis=1)), [2])
    np.savez(path, imgs=np.zeros((6, 8, 8), np.uint8), gts=recist, spacing=np.ones(3))
    assert datasets.recist_array(case, (0, 5)) is None
