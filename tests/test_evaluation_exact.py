"""Paper-exact mode (--exact): one test per step where the papers' reference code differs from this
project's run of its recipe (issue 18), on small synthetic cases. The engine is SAM 2.1 tiny with
RANDOM WEIGHTS at 128 px: masks mean nothing; what is checked is the sequence of calls, the frames, the
prompts and the arithmetic the references use.

References (read, not copied): Chuyun-Shen/SAM_2_Medical_3D nii_2_video.py (process_slice),
segment_any_image.py, segment_any_image_with_clicks.py (perform_iteration); i3uex/sam v1.1.4
tools/image_slice.py (ImageSlice) and join_results.py.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lib.engine.intensity import CT_WINDOWS, IntensityPreset, to_uint8
from lib.evaluation import case_task, datasets, metrics, protocols, reference_frames, reference_runs, report
from lib.evaluation import prompts as P


def _ellipsoid(k=9, h=48, w=44):
    zz, yy, xx = np.mgrid[:k, :h, :w]
    gt = ((zz - k // 2) ** 2 / 9 + (yy - 22) ** 2 / 180 + (xx - 20) ** 2 / 120) < 1
    img = (gt * 90.0 + np.random.default_rng(1).normal(0, 15, gt.shape)).astype(np.float32)
    return img, gt


# --- Shen: the stack the NSD is computed on ----------------------------------------------------------


def test_shen_stack_is_the_forward_pass_then_the_reverse_pass():
    # segment_any_image.py: video_segments filled by propagate_in_video(state) (prompt .. end), then
    # propagate_in_video(state, start_frame_idx=frame_idx - 1, reverse=True) (prompt - 1 .. 0)
    assert reference_runs.shen_stack_order((10, 15), 13) == [13, 14, 15, 12, 11, 10]


def test_shen_paper_nsd_is_computed_on_the_reference_stack_and_the_anatomical_one_is_given_beside_it():
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:8, :24, :24]
    gt = ((zz - 3.5) ** 2 / 9 + (yy - 12) ** 2 / 40 + (xx - 12) ** 2 / 40) < 1
    pred = gt.copy()
    pred[2] = np.roll(gt[2], 3, axis=1)  # an error the stack's seam moves around
    pred[5] &= rng.random(gt[5].shape) > 0.2
    video, anchor = (0, 7), 4
    info = {"stack_order": reference_runs.shen_stack_order(video, anchor)}
    m = metrics.evaluate(pred, gt, (1.0, 1.0, 1.0), 2.0, video, None, "shen_mask", info)
    stacked = [k for k in info["stack_order"]]
    assert m["paper"]["nsd"] == pytest.approx(metrics.nsd_shen_reference(pred[stacked], gt[stacked]))
    assert m["paper"]["nsd_anatomical"] == pytest.approx(metrics.nsd_shen_reference(pred, gt))
    assert m["paper"]["nsd"] != pytest.approx(m["paper"]["nsd_anatomical"])  # the order changes the number
    assert m["paper"]["dice"] == pytest.approx(m["dice_pooled"])  # Dice does not depend on the order


# --- Shen: the frames ---------------------------------------------------------------------------------


def test_shen_frames_truncate_to_uint8_round_trip_through_jpeg_and_are_transposed():
    rng = np.random.default_rng(3)
    vol = rng.random((2, 20, 16)) * 1000.0
    frames_raw = reference_frames.shen_frames(vol, jpeg=False)
    assert frames_raw.shape == (2, 16, 20)  # nii_2_video.py saves img_data[:, :, i]: rows along the first axis
    for k in range(2):
        s = vol[k].T
        want = ((s - s.min()) / (s.max() - s.min()) * 255).astype(np.uint8)
        assert np.array_equal(frames_raw[k], want)
    ours = to_uint8(vol.astype(np.float32), IntensityPreset("slice_minmax"))
    assert (ours.transpose(0, 2, 1) != frames_raw).mean() > 0.3  # ours rounds: about half the pixels differ
    # Image.fromarray(...).save("x.jpg") with no options: PIL's default quality, 75
    frames = reference_frames.shen_frames(vol)
    buf = io.BytesIO()
    Image.fromarray(frames_raw[0]).save(buf, format="JPEG", quality=75)
    assert np.array_equal(frames[0], np.asarray(Image.open(io.BytesIO(buf.getvalue()))))
    assert not np.array_equal(frames[0], frames_raw[0])  # JPEG is lossy on noise


# --- Shen: one SAM 2 state across click rounds ---------------------------------------------------------


def test_shen_exact_clicks_go_to_one_state_and_sam2_gets_the_previous_round_logits(engine128):
    img, gt = _ellipsoid()
    session = engine128.open_array("exact-clicks", img, client_id="t/exact", preset=IntensityPreset("slice_minmax"))
    predictor = session.engine.predictor
    calls = []
    original = predictor.add_new_points_or_box

    def spy(state, frame_idx, obj_id, points=None, labels=None, **kw):
        obj = state["obj_id_to_idx"].get(obj_id)
        before = None
        if obj is not None:  # what SAM 2 looks up as prev_sam_mask_logits
            before = (state["temp_output_dict_per_obj"][obj]["cond_frame_outputs"].get(frame_idx)
                      or state["output_dict_per_obj"][obj]["cond_frame_outputs"].get(frame_idx))
        out = original(state, frame_idx, obj_id, points=points, labels=labels, **kw)
        calls.append({"k": frame_idx, "points": np.array(points), "had_previous_output": before is not None,
                      "logits": out[2][0, 0].float().cpu().numpy().copy()})
        return out

    predictor.add_new_points_or_box = spy
    try:
        run = protocols.run(protocols.ProtocolSpec.parse("shen2024-2clicks"), session, gt, exact=True)
    finally:
        del predictor.add_new_points_or_box
    assert run.skipped is None and run.info["exact"]
    rounds = [s for s in run.steps if s.get("round")]
    assert len(calls) == len(rounds) == 2
    assert not calls[0]["had_previous_output"] and calls[1]["had_previous_output"]
    assert len(calls[1]["points"]) == 2  # every click so far, as perform_iteration sends them
    # a fresh state given the same two clicks (what this project's own mode does each round) answers otherwise
    fresh = session.segment_slice(run.anchor, protocols._prompt(
        {"kind": "points", "points": rounds[1]["points"], "labels": rounds[1]["labels"]}, gt))
    track = session.track()
    fresh_logits = track.logits(run.anchor)
    assert fresh_logits is not None
    assert not np.allclose(fresh_logits, calls[1]["logits"], atol=1e-4)
    del fresh
    # the propagation: forward from the prompt, then reverse from the slice before it, inside the video
    props = [s for s in run.steps if s["verb"] == "propagate"]
    lo, hi = run.propagate
    assert props == [{"verb": "propagate", "range": [run.anchor, hi], "direction": "forward"},
                     {"verb": "propagate", "range": [lo, run.anchor - 1], "direction": "reverse"}]
    assert not run.mask[:lo].any() and not run.mask[hi + 1:].any()


def test_our_clicks_mode_starts_each_round_from_a_fresh_state(engine128):
    img, gt = _ellipsoid()
    session = engine128.open_array("ours-clicks", img, client_id="t/ours", preset=IntensityPreset("slice_minmax"))
    predictor = session.engine.predictor
    resets = []
    original = predictor.reset_state

    def spy(state):
        resets.append(1)
        return original(state)

    predictor.reset_state = spy
    try:
        run = protocols.run(protocols.ProtocolSpec.parse("shen2024-2clicks"), session, gt, exact=False)
    finally:
        del predictor.reset_state
    rounds = [s for s in run.steps if s.get("round")]
    assert len(rounds) == 2 and len(resets) >= 3  # session reset + one per segment_slice round (+ the propagation)


def test_shen_exact_mask_protocol_scores_sam2s_own_answer_on_the_prompted_frame(engine128):
    # segment_any_image.py scores add_new_mask's output on frame_idx (the mask resized to the model's input and
    # back), where this project's mode puts the prompt mask itself
    img, gt = _ellipsoid(k=5, h=37, w=29)
    gt[:] = False
    gt[1:4, 6:30, 4:24] = True  # 480 px per slice: a 3-slice object, a 2-frame video
    gt[1:4, 8:16, 6:14] = (np.indices((8, 8)).sum(axis=0) % 2).astype(bool)  # 1-px detail the resizing blurs
    session = engine128.open_array("exact-mask", img, client_id="t/mask", preset=IntensityPreset("slice_minmax"))
    run = protocols.run(protocols.ProtocolSpec.parse("shen2024-1mask"), session, gt, exact=True)
    assert run.steps[0]["verb"] == "add_new_mask"
    ours = protocols.run(protocols.ProtocolSpec.parse("shen2024-1mask"), session, gt, exact=False)
    assert np.array_equal(ours.mask[ours.anchor], gt[ours.anchor])
    assert not np.array_equal(run.mask[run.anchor], gt[run.anchor])


# --- Gutiérrez: the released rule (v1.1.4, --apply_windowing --use_bounding_box) ------------------------


def _two_lungs():
    parts = np.zeros((64, 64), np.int32)
    parts[10:40, 4:18] = 1  # right lung, off-centre
    parts[14:44, 24:36] = 2  # left lung
    return parts


def test_released_negative_is_the_centre_of_the_box_around_all_masks_and_that_box_is_sent():
    parts = _two_lungs()
    pts, labels, box = P.gutierrez_released(parts)
    assert labels == [1, 1, 0]
    # regionprops bbox of all masks: rows 10..43, cols 4..35, max exclusive
    assert box == (4, 10, 36, 44)
    assert pts[-1] == (4 + (36 - 4) // 2, 10 + (44 - 10) // 2) == (20, 27)
    old_pts, old_labels = P.gutierrez_points(parts)
    assert old_pts[-1] == (32, 32)  # the 2023 rule: the image centre


def test_released_moved_point_is_the_middle_element_of_the_run_not_the_mean():
    mask = np.zeros((40, 60), bool)
    mask[5:35, 10:20] = True  # a tall bar
    mask[5:35, 30:50] = True  # a taller-than-wide bar further right
    y, x = 20, 25  # outside, between them; the row meets 10 + 20 mask pixels
    row = np.flatnonzero(mask[y, x + 1:]) + x + 1  # right: 20 pixels (30..49) beat left's 10
    assert len(row) == 20
    ny, nx = P._move_inside_released(mask, y, x)
    assert nx == row[len(row) // 2] == 40  # segment[len // 2]
    my, mx = P._move_inside(mask, y, x)
    assert mx == int(np.mean(row)) == 39  # the 2023-05-05 rule: their mean


def test_released_points_go_to_sam_with_the_box(engine128):
    img = np.random.default_rng(2).normal(size=(3, 64, 64)).astype(np.float32)
    gt = np.zeros((3, 64, 64), bool)
    parts = np.zeros((3, 64, 64), np.int32)
    parts[1] = _two_lungs()
    gt[1] = parts[1] > 0
    session = engine128.open_array("lungs", img, client_id="t/lungs", preset=IntensityPreset("slice_minmax"), mode="2d")
    run = protocols.run(protocols.ProtocolSpec.parse("gutierrez2023-lung"), session, gt, parts=parts, exact=True)
    (step,) = run.steps
    assert step["box"] == [4, 10, 36, 44] and step["labels"] == [1, 1, 0]
    assert session.prompts()[1].box == (4, 10, 36, 44)


def test_paper_aggregation_differs_from_the_mean_of_case_means():
    def rec(case, dices):
        return {"setting": "s", "case": case, "results": [{"label": "l", "protocol": "p", "status": "ok",
                "per_slice_dice": dices, "per_slice_iou": dices}]}

    records = [rec("a", [None, 1.0, 1.0, 1.0, None]), rec("b", [0.0])]  # None: a slice never segmented
    assert report.slice_pooled(records, "s", "l", "p")["dice"] == pytest.approx(0.75)  # the paper: 3 of 4 slices
    assert report.case_mean(records, "s", "l", "p") == pytest.approx(0.5)  # ours: (1.0 + 0.0) / 2


def test_gutierrez_frames_clip_to_the_released_window_then_slice_minmax_truncated():
    s = np.array([[[-2000.0, -1400.0, -650.0], [99.5, 100.0, 3000.0]]])
    frames = reference_frames.gutierrez_frames(s)
    clipped = np.clip(s[0], -1400, 100)
    assert np.array_equal(frames[0], ((clipped + 1400) / 1500 * 255).astype(np.uint8))
    assert frames[0].tolist() == [[0, 0, 127], [254, 255, 255]]


# --- windows --------------------------------------------------------------------------------------------


def test_custom_window_and_the_lung_preset_as_the_code_has_it():
    assert CT_WINDOWS["lung"] == (-600.0, 1500.0)  # docs/evaluation.md states this, not -650
    case = datasets.Case("c", "/x.nii.gz", "/y.nii.gz")
    p = case_task.preset_for({"window": "-650,1500", "preset": "lung"}, case)
    assert (p.name, p.center, p.width) == ("window", -650.0, 1500.0)
    assert case_task.preset_for({"preset": "lung"}, case) == IntensityPreset("lung")
    vol = np.array([[[-1400.0, -650.0, 100.0]]], np.float32)
    assert to_uint8(vol, p).tolist() == [[[0, 128, 255]]]
    for bad in ("-650", "a,b", "40,0"):
        with pytest.raises(ValueError, match="--window"):
            case_task.parse_window(bad)


def test_evaluate_refuses_a_bad_window_before_building_a_model(tmp_path, capsys):
    import evaluate

    rc = evaluate.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--window", "40,-1"])
    assert rc == 2 and "--window" in capsys.readouterr().err
    # a negative centre is a value, not an option (argparse alone would refuse "--window -650,1500")
    assert evaluate.parser().parse_args(evaluate.window_as_one_argument(
        ["--data", "d", "--out", "o", "--window", "-650,1500"])).window == "-650,1500"


# --- the command: --exact reaches the protocols, the frames are the reference's --------------------------


def test_exact_command_runs_shen_on_the_reference_frames(tmp_path):
    import json

    import evaluate
    import SimpleITK as sitk

    from lib.evaluation.store import Store

    img, gt = _ellipsoid(k=4, h=40, w=36)
    gt[:] = False
    gt[:3, 8:30, 6:24] = True  # 396 px on slices 0..2: the video is slices 0..1, its middle frame slice 1
    data = tmp_path / "data"
    data.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(img * 7.3 - 40), str(data / "c.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(gt.astype(np.uint8)), str(data / "c_label.nii.gz"))
    out = tmp_path / "out"
    assert evaluate.main(["--data", str(data), "--protocol", "shen2024-1mask", "--exact", "--random-weights",
                          "--image-size", "128", "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    (r,) = json.load(open(out / "results.json"))["cases"][0]["results"]
    assert r["exact"] and r["preset"] == "reference frames" and "JPEG" in r["info"]["frames"]
    assert r["anchor"] == 1 and r["info"]["stack_order"] == [1, 0]
    anchor_image = Store(str(out)).arrays("default", "c")["fg__shen2024-1mask__anchor"][0]
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "c.nii.gz"))).astype(np.float64)
    assert np.array_equal(anchor_image, reference_frames.shen_frames(raw)[1])  # the frame SAM 2 was given
    assert "paper-exact" in open(out / "report.md").read()
