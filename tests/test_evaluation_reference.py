"""The papers' protocols follow their reference code where the rule decides, on hand-built cases.

Prompt rules and metrics are checked without SAM 2; the protocol runs that need a model use the
session engine (SAM 2.1 tiny, RANDOM WEIGHTS, 256 px) on a small synthetic volume, since what is
checked is where prompts go and which slices run and are scored, not the masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lib.engine.intensity import IntensityPreset
from lib.evaluation import metrics, protocols
from lib.evaluation import prompts as P

# -- SAM_2_Medical_3D (Shen et al. 2024) ---------------------------------------------------------

def test_click_goes_to_the_thicker_region_not_the_larger_one():
    """A thin 600 px false-negative strip vs a 144 px false-positive blob: the reference clicks the blob."""
    gt = np.zeros((64, 64), bool)
    for row in (2, 8, 14, 20, 26):
        gt[row : row + 2, 2:62] = True  # five 2 x 60 strips: 600 px, nowhere thicker than 2 px
    pred = np.zeros_like(gt)
    pred[40:52, 20:32] = True  # a 12 x 12 blob outside the object: 144 false-positive px
    fn, fp = gt & ~pred, pred & ~gt
    assert fn.sum() == 600 and fp.sum() == 144
    assert P.next_click(gt, pred)[1] == 1  # this project's legacy rule: the larger region, a positive click
    (x, y), label, region, dist = P.shen_click(gt, pred)
    assert (label, region) == (0, "false_positive")  # the reference: the thicker region, a negative click
    assert (x, y) == (25, 45) and dist == 6.0  # the blob's first deepest pixel in row-major order


def test_no_click_when_no_error_region_is_thicker_than_1_42_px():
    gt = np.zeros((32, 32), bool)
    gt[5:7, 3:30] = True  # 2 px thick: every distance is 1 (or sqrt 2 at most)
    pred = np.zeros_like(gt)
    assert P.largest_enclosed_point(gt)[1] is None
    assert P.shen_click(gt, pred) is None
    plus = np.zeros((32, 32), bool)
    plus[16, 12:21] = plus[12:21, 16] = True  # a 1-px plus: its centre is sqrt(2) = 1.414 from outside
    assert P.largest_enclosed_point(plus)[1] is None  # 1.414 < 1.42: no click (a start of 1.41 would click)
    assert P.shen_click(plus, np.zeros_like(plus)) is None
    block = np.zeros((32, 32), bool)
    block[10:13, 10:13] = True  # 3 x 3: its centre is 2 px from outside
    dist, xy = P.largest_enclosed_point(block)
    assert (dist, xy) == (2.0, (11, 11))
    # equal depth: the false negative wins (max_dis_1 >= max_dis_2)
    gt2 = block.copy()
    pred2 = np.zeros_like(block)
    pred2[20:23, 20:23] = True
    assert P.shen_click(gt2, pred2)[1:3] == (1, "false_negative")


def test_salient_video_drops_its_last_slice_and_centres_the_prompt():
    gt = np.zeros((8, 40, 40), bool)
    areas = [0, 300, 100, 300, 300, 50, 0, 0]  # salient (> 256): slices 1, 3, 4
    for k, a in enumerate(areas):
        gt[k].flat[:a] = True
    assert P.shen_video(gt) == (1, 3)  # range(1, 4): from the first salient slice, the last one excluded
    assert P.shen_central((1, 3)) == 2  # len(frames) // 2 = 1 -> slice 1 + 1
    assert P.shen_central((0, 95)) == 48 and P.shen_central((10, 13)) == 12
    one = np.zeros_like(gt)
    one[3].flat[:300] = True
    assert P.shen_video(one) is None  # one salient slice: an empty video, the reference skips it
    run = protocols.run(protocols.ProtocolSpec.parse("shen2024-1mask"), None, one)
    assert run.skipped and "video" in run.skipped and not run.mask.any()


def test_clicks_protocol_skips_a_central_slice_of_100_px():
    gt = np.zeros((6, 40, 40), bool)
    gt[1].flat[:300] = True
    gt[2].flat[:100] = True  # the central slice of the video (1, 2)... is slice 2: 100 px
    gt[3].flat[:300] = True
    assert P.shen_video(gt) == (1, 2) and P.shen_central((1, 2)) == 2
    run = protocols.run(protocols.ProtocolSpec.parse("shen2024-5clicks"), None, gt)
    assert run.skipped and "100 px <= 100" in run.skipped


def test_shen_reference_nsd_is_monai_at_one_voxel_without_spacing():
    import torch
    from monai.metrics import compute_surface_dice

    gt = np.zeros((6, 30, 30), bool)
    gt[1:5, 5:20, 5:20] = True
    pred = np.roll(gt, 2, axis=2)
    t = lambda a: torch.from_numpy(a.astype(np.float32))[None, None]  # noqa: E731
    want = float(compute_surface_dice(t(pred), t(gt), class_thresholds=[1]))
    m = metrics.evaluate(pred, gt, (5.0, 0.5, 0.5), 2.0, paper="shen_mask")
    assert m["paper"]["nsd"] == pytest.approx(want) and m["paper"]["dice"] == m["dice_pooled"]
    assert m["paper"]["nsd"] != pytest.approx(m["nsd_monai"])  # the mm-tolerance MONAI NSD differs


# -- MedSAM2 ----------------------------------------------------------------------------------------

def test_key_slice_defaults_to_the_largest_area():
    gt = np.zeros((5, 20, 20), bool)
    gt[1, 2:6, 2:6] = True
    gt[3, 2:12, 2:12] = True
    gt[4, 2:12, 2:12] = True
    assert P.largest_slice(gt) == 3


def test_largest_component_is_26_connected():
    m = np.zeros((4, 10, 10), np.uint8)
    m[0, 0:3, 0:3] = 1
    m[1, 3, 3] = 1  # touches the first block by a corner only: still one component (26-connectivity)
    m[3, 6:10, 6:10] = 1  # 16 voxels, alone
    out = protocols.largest_component(m)
    assert out.sum() == 16 and out[3].sum() == 16
    m[2, 4:9, 4:9] = 1  # bridges the corner group (slice 1, 3,3) to the 16 voxels (slice 3, 6..)
    assert protocols.largest_component(m).sum() == m.sum()


# -- Gutiérrez et al. 2023 -----------------------------------------------------------------------

def test_both_lungs_get_a_positive_each_and_the_image_centre_a_negative():
    parts = np.zeros((40, 60), np.int32)
    parts[10:30, 5:20] = 1  # "right lung"
    parts[10:30, 40:55] = 2  # "left lung"
    points, labels = P.gutierrez_points(parts)
    assert labels == [1, 1, 0]
    # centre of mass (row 19.5 -> 19, column 12), then __center_point_in_mask: the column's run (9 above,
    # 10 below) is longer than the row's (7 + 7), so the point moves to row 19 + (10 - 9 + 1) // 2 = 20
    assert points[0] == (12, 20) and parts[20, 12] == 1
    assert points[1] == (47, 20) and parts[20, 47] == 2
    assert points[2] == (30, 20)  # the image centre, always, even when it is inside an object
    crescent = np.zeros((40, 40), np.int32)
    yy, xx = np.mgrid[:40, :40]
    crescent[((yy - 20) ** 2 + (xx - 20) ** 2 < 15**2) & ((yy - 20) ** 2 + (xx - 23) ** 2 >= 14**2)] = 1
    cy, cx = np.argwhere(crescent).mean(axis=0)
    assert crescent[int(cy), int(cx)] == 0  # its centre of mass is in the hollow
    (x, y) = P.gutierrez_points(crescent)[0][0]
    assert crescent[y, x] == 1  # a centroid outside its crescent moves inside


def test_gutierrez_centring_and_moving_inside_follow_the_reference_rules():
    # a bar with a notch left of its centre of mass (6, 26): the row's run wins (16 left, 23 right)
    # and the point moves right by (23 - 16 + 1) // 2 = 4
    bar = np.zeros((20, 60), bool)
    bar[5:9, 3:50] = True
    assert P.gutierrez_point(bar) == (26, 6)  # symmetric runs: it stays
    bar[6, 3:10] = False
    assert P.gutierrez_point(bar) == (30, 6)
    # a "C": the centre of mass (20, 17) is in the hollow; left, up and down each meet 3 mask pixels,
    # left wins the tie (first in the reference's order), the new point is their mean column 11, and
    # centring keeps it (column run 10 + 10 beats row run 1 + 1; (10 - 10 + 1) // 2 = 0)
    c = np.zeros((40, 40), bool)
    c[10:13, 10:31] = c[28:31, 10:31] = c[10:31, 10:13] = True
    assert not c[20, 17]
    assert P.gutierrez_point(c) == (11, 20)
    # by contour: two pieces of one value each get a positive, centred on the value's whole mask
    two = np.zeros((40, 60), np.int32)
    two[10:30, 5:20] = two[10:30, 40:55] = 1
    assert P.gutierrez_points(two, by_contour=True) == ([(12, 20), (47, 20), (30, 20)], [1, 1, 0])
    # by value: one positive for both pieces; their centre of mass (19, 29) lies between them, left and
    # right meet 15 pixels each, left wins, mean column 12, centred to row 20
    assert P.gutierrez_points(two) == ([(12, 20), (30, 20)], [1, 0])


def test_slice_mean_dice_and_jaccard_over_object_slices():
    gt = np.zeros((4, 10, 10), bool)
    pred = np.zeros_like(gt)
    gt[1, :5, :5] = True
    pred[1, :5, :5] = True  # slice 1 perfect
    gt[2, :4, :4] = True
    pred[2, :2, :4] = True  # slice 2: Dice 2*8/(16+8) = 2/3, Jaccard 0.5
    m = metrics.evaluate(pred, gt, (1, 1, 1), 1.0, paper="gutierrez_lung")
    assert m["dice_slice_mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["iou_slice_mean"] == pytest.approx((1 + 0.5) / 2)
    assert m["paper"]["dice"] == m["dice_slice_mean"] and m["paper"]["nsd"] is None
    assert m["dice_pooled"] == pytest.approx(2 * 33 / (41 + 33))


# -- surfel-weighted NSD -----------------------------------------------------------------------------

def _ball(shape, centre, r, spacing):
    zz, yy, xx = np.indices(shape)
    d = ((zz - centre[0]) * spacing[0]) ** 2 + ((yy - centre[1]) * spacing[1]) ** 2 + ((xx - centre[2]) * spacing[2]) ** 2
    return d <= r * r


def test_surfel_nsd_on_known_shapes():
    import surface_distance

    sp = (2.0, 1.0, 1.0)
    gt = _ball((24, 48, 48), (12, 24, 24), 16.0, sp)
    pred = _ball((24, 48, 48), (12, 24, 24), 19.0, sp)  # every surface point is ~3 mm from the other surface
    assert metrics.nsd_surfel(pred, gt, sp, 1.0) < 0.05
    assert metrics.nsd_surfel(pred, gt, sp, 5.0) == pytest.approx(1.0)
    assert metrics.nsd_surfel(gt, gt, sp, 0.5) == 1.0
    d = surface_distance.compute_surface_distances(gt, pred, sp)
    mid = metrics.nsd_surfel(pred, gt, sp, 3.0)
    assert mid == pytest.approx(surface_distance.compute_surface_dice_at_tolerance(d, 3.0))
    # a thin plate on an anisotropic grid: surfel weighting and MONAI's voxel counting disagree
    plate = np.zeros((10, 40, 40), bool)
    plate[4:6, 5:35, 5:35] = True
    shifted = np.roll(plate, 1, axis=0)
    a, b = metrics.nsd_surfel(shifted, plate, (3.0, 0.8, 0.8), 2.0), metrics.nsd(shifted, plate, (3.0, 0.8, 0.8), 2.0)
    assert 0 < a < 1 and 0 < b < 1 and abs(a - b) > 0.01


# -- protocol runs through the real engine ---------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 9-slice 64 x 64 volume: a disc whose radius grows then shrinks, on a noisy background."""
    rng = np.random.default_rng(0)
    radii = [0, 5, 10, 11, 12, 11, 10, 5, 0]
    yy, xx = np.mgrid[:64, :64]
    gt = np.stack([((yy - 30) ** 2 + (xx - 34) ** 2) < r * r for r in radii])
    img = (gt * 400 + rng.normal(0, 40, gt.shape)).astype(np.int16)
    image = sitk.GetImageFromArray(img)
    image.SetSpacing((1.0, 1.0, 2.5))
    path = str(tmp_path_factory.mktemp("synthetic") / "image.nii.gz")
    sitk.WriteImage(image, path)
    return path, gt


def _open(engine, path, name, mode="3d"):
    return engine.open(path, client_id=f"test-ref/{name}", preset=IntensityPreset("slice_minmax"), mode=mode)


def test_shen_mask_prompts_the_video_centre_and_scores_only_the_video(engine, synthetic):
    path, gt = synthetic
    areas = gt.reshape(9, -1).sum(1)
    video = P.shen_video(gt)
    assert video == (2, 5) and list(areas[2:7] > 256) == [True, True, True, True, True]  # slice 6 salient, dropped
    run = protocols.run(protocols.ProtocolSpec.parse("shen2024-1mask"), _open(engine, path, "1mask"), gt)
    assert run.anchor == 4 and run.propagate == (2, 5) and run.scored == (2, 5)
    assert not run.mask[[0, 1, 6, 7, 8]].any()  # nothing outside the video ran
    m = metrics.evaluate(run.mask, gt, (2.5, 1, 1), 2.0, run.scored, run.anchor, "shen_mask")
    assert m["scored_slices"] == 4 and m["no_prompt_slice"]["dice_pooled"] is not None
    assert metrics.per_slice_dice(run.mask, gt)[4] == 1.0  # the prompted slice is the ground truth


def test_shen_whole_video_is_the_object_and_a_random_margin_each_side(engine, synthetic):
    gt = np.zeros((40, 8, 8), bool)
    gt[15:25, 2:5, 2:5] = True  # slices 15..24, 9 px each: no slice is salient, all belong to "whole"
    assert P.shen_video(gt) is None
    seen = set()
    for seed in range(30):
        (lo, hi), (below, above) = P.shen_whole_video(gt, seed)
        assert 5 <= below <= 9 and 5 <= above <= 9
        assert (lo, hi) == (15 - below, 24 + above - 1)  # range(min_slice, max_slice): the end excluded
        seen.add((below, above))
    assert len(seen) > 5 and P.shen_whole_video(gt, 3) == P.shen_whole_video(gt, 3)
    edge = np.zeros((12, 8, 8), bool)
    edge[1:11] = True
    assert P.shen_whole_video(edge, 0)[0] == (0, 11)  # clipped to the volume: min(D, last + m) - 1 = 11
    # the protocol on the 9-slice disc (object on 1..7): the video is the whole volume, prompted on 4
    path, disc = synthetic
    run = protocols.run(protocols.ProtocolSpec.parse("shen2024-whole"), _open(engine, path, "whole"), disc)
    assert run.propagate == (0, 8) and run.scored == (0, 8) and run.anchor == 4 and run.steps[0]["kind"] == "mask"
    assert run.info["video"] == [0, 8] and len(run.info["margins"]) == 2


def test_shen_clicks_follow_the_reference_rule_on_the_central_slice(engine, synthetic):
    path, gt = synthetic
    session = _open(engine, path, "clicks")
    answers = []
    segment = session.segment_slice

    def spy(k, prompt):
        mask, score = segment(k, prompt)
        answers.append(mask.astype(bool).copy())
        return mask, score

    session.segment_slice = spy
    try:
        run = protocols.run(protocols.ProtocolSpec.parse("shen2024-3clicks"), session, gt)
    finally:
        del session.segment_slice
    assert run.anchor == 4 and 1 <= len(run.steps) <= 3 and run.propagate == (2, 5)
    before = np.zeros_like(gt[4])
    for step, after in zip(run.steps, answers):
        want = P.shen_click(gt[4], before)
        assert step["click"]["xy"] == list(want[0]) and step["click"]["label"] == want[1]
        before = after


def test_medsam2_box_uses_the_given_key_slice_and_the_whole_volume(engine, synthetic):
    path, gt = synthetic
    spec = protocols.ProtocolSpec.parse("medsam2-box")
    run = protocols.run(spec, _open(engine, path, "box"), gt, key_slice=2)
    ys, xs = np.nonzero(gt[2])
    assert run.anchor == 2 and run.steps[0]["box"] == [xs.min(), ys.min(), xs.max(), ys.max()]
    assert run.propagate == (0, 8) and run.scored == (0, 8)
    assert run.slices_processed == 7 + 3  # forward 2..8, reverse 2..0: the key slice in both passes
    assert run.info["key_slice_source"] == "given"
    # two passes on fresh states (the reference's reset_state between them): forward from the key slice,
    # then the box again and reverse; the answer is their union, the same on a replay of the steps
    assert [s["verb"] for s in run.steps] == ["set_prompts", "propagate", "set_prompts", "propagate"]
    assert run.steps[1]["range"] == [2, 8] and run.steps[2]["reset"] and run.steps[3]["range"] == [0, 2]
    again, _ = protocols.execute(_open(engine, path, "box-replay"), gt, run.steps, run.propagate)
    np.testing.assert_array_equal(protocols.largest_component(again), run.mask)
    # each pass alone, in a session of its own: the reverse pass is what a state that never tracked
    # slices 3..8 gives
    fresh = _open(engine, path, "box-reverse")
    fresh.set_prompts({2: protocols._prompt(run.steps[0], gt)})
    np.testing.assert_array_equal(again[:2], fresh.propagate(0, 2).mask[:2])
    default = protocols.run(spec, _open(engine, path, "box2"), gt)
    assert default.anchor == 4 and "largest" in default.info["key_slice_source"]
    with pytest.raises(ValueError, match="no ground truth"):
        protocols.run(spec, _open(engine, path, "box3"), gt, key_slice=0)


def test_gutierrez_runs_each_object_slice_alone(engine, synthetic):
    path, gt = synthetic
    parts = gt.astype(np.int32)
    run = protocols.run(protocols.ProtocolSpec.parse("gutierrez2023-lung"), _open(engine, path, "lung", "2d"), gt,
                        parts=parts)
    assert run.propagate is None and [s["k"] for s in run.steps] == [1, 2, 3, 4, 5, 6, 7]
    assert all(s["labels"] == [1, 0] and s["points"][1] == [32, 32] for s in run.steps)
    assert not run.mask[[0, 8]].any()
