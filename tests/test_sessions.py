"""A session an annotator can trust: every sequence of actions ends where a fresh session given the same
final prompts ends (the oracle), corrections count, labels keep their prompts, undo/redo, any axis, 2D.

The oracle below is SAM 2's own recipe written out with SAM 2's calls on a brand-new inference state:
add each slice's prompt (mask first, then clicks/box), ``propagate_in_video`` forward from the first
prompted slice and in reverse from it. tests/test_fidelity.py shows that the engine's frames and
features are SAM 2's own; here the session's answers are checked against this recipe.

Real SAM 2.1 tiny with RANDOM weights at 256 px (see conftest): masks are meaningless, but
deterministic, so equality and agreement between code paths are exact statements.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
import torch
from conftest import MEASURED, REPO, shared
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lib.engine import intensity
from lib.engine.errors import PromptError
from lib.engine.model import VolumeFeatures, init_state_from_frames
from lib.engine.prompts import SlicePrompt

LO, HI = 22, 29  # 8 slices of spinalcord_t2: small enough for many examples on a 2-core CPU
MIN_INCREMENTAL_DICE = 0.99
INCREMENTAL_DICES: list[float] = []  # the measured distribution, written to test-artifacts/
WORST_SLICE_DICES: list[float] = []  # per label, its worst slice
REFUSED: list[str] = []  # actions the sequences saw refused (all-or-nothing checked on each)


def _dice(a, b):
    a, b = a > 0, b > 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * (a & b).sum() / s


def oracle(engine, volume, prompts, lo, hi):
    """What a fresh SAM 2 state given ``prompts`` computes with SAM 2's own recipe."""
    predictor = engine.predictor
    geo = volume.geometry
    features = VolumeFeatures(predictor, volume.frames, volume.key, engine.feature_cache, 1)
    state = init_state_from_frames(predictor, volume.frames, features, geo.frame_height, geo.frame_width)
    out = np.zeros(volume.slices_u8.shape, dtype=np.uint8)
    with torch.inference_mode():
        for k, p in sorted(prompts.items()):
            if p.mask is not None:
                predictor.add_new_mask(state, frame_idx=k, obj_id=1, mask=p.mask)
            if p.points or p.box is not None:
                predictor.add_new_points_or_box(
                    state, frame_idx=k, obj_id=1,
                    points=np.asarray(p.points, np.float32).reshape(-1, 2) if p.points else None,
                    labels=np.asarray(p.labels, np.int32) if p.points else None,
                    box=np.asarray(p.box, np.float32) if p.box is not None else None,
                )
        anchor = min(prompts)
        for reverse in (False, True):
            span = (anchor - lo) if reverse else (hi - anchor)
            if reverse and span == 0:
                continue
            for k, _, m in predictor.propagate_in_video(
                state, start_frame_idx=anchor, max_frame_num_to_track=span, reverse=reverse
            ):
                out[k] = (m[0, 0] > 0).numpy()
    for k, p in prompts.items():
        if p.mask is not None and not p.points and p.box is None:
            out[k] = p.mask  # the engine's documented choice: a mask prompt alone is returned as given
    return out


@pytest.fixture(scope="module")
def volume_path():
    return shared("spinalcord_t2", "image.nii.gz")


PRESET = intensity.IntensityPreset("mr")
_counter = iter(range(10**6))


def new_session(engine, path, axis="k"):
    return engine.open(path, f"sessions-{next(_counter)}", PRESET, axis=axis)


def click(session, x, y, positive=1):
    h, w = session.volume.slices_u8.shape[1:]
    return (x * (w - 1), y * (h - 1), positive)


def disk(session, cx, cy, r):
    h, w = session.volume.slices_u8.shape[1:]
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx * w) ** 2 + (yy - cy * h) ** 2 <= (r * min(h, w)) ** 2


# -- the bugs of the issue, one by one ------------------------------------------------------------
def test_a_correction_on_a_tracked_slice_counts(engine, volume_path):
    s = new_session(engine, volume_path)
    s.update_prompts(points={24: [click(s, 0.5, 0.5), click(s, 0.6, 0.45, 0)]})
    before = s.propagate(LO, HI).mask.copy()
    s.update_prompts(points={24: [click(s, 0.5, 0.5), click(s, 0.6, 0.45, 0)], 27: [click(s, 0.3, 0.6)]})
    after_full = s.propagate(LO, HI, incremental=False).mask
    expected = oracle(engine, s.volume, s.prompts(), LO, HI)
    np.testing.assert_array_equal(after_full, expected)
    assert (after_full != before).any(), "the correction on slice 27 changed nothing"
    # a second click on the prompted slice itself counts too
    s.update_prompts(points={24: [click(s, 0.5, 0.5), click(s, 0.6, 0.45, 0), click(s, 0.2, 0.2)],
                             27: [click(s, 0.3, 0.6)]})
    again = s.propagate(LO, HI, incremental=False).mask
    np.testing.assert_array_equal(again, oracle(engine, s.volume, s.prompts(), LO, HI))
    assert (again != after_full).any(), "the second click on slice 24 changed nothing"


def test_moving_and_removing_prompts_rebuilds_instead_of_failing(engine, volume_path):
    s = new_session(engine, volume_path)
    s.update_prompts(points={24: [click(s, 0.5, 0.5)]})
    s.propagate(LO, HI)
    s.update_prompts(points={26: [click(s, 0.5, 0.5)]})  # the click moved from 24 to 26
    moved = s.propagate(LO, HI)
    assert moved.how == "full" and moved.prompted_slices == [26]
    np.testing.assert_array_equal(moved.mask, oracle(engine, s.volume, s.prompts(), LO, HI))
    s.update_prompts(points={24: [click(s, 0.5, 0.5)], 28: [click(s, 0.4, 0.4)]})
    s.propagate(LO, HI)
    s.update_prompts(points={28: [click(s, 0.4, 0.4)]})  # {24, 28} then {28}
    np.testing.assert_array_equal(s.propagate(LO, HI).mask, oracle(engine, s.volume, s.prompts(), LO, HI))


def test_tools_combine_on_a_slice_as_sam2_combines_them(engine, volume_path):
    s = new_session(engine, volume_path)
    s.update_prompts(points={25: [click(s, 0.5, 0.5)]})
    clicked = s.propagate(LO, HI).mask.copy()
    s.update_prompts(boxes={25: (10, 10, 40, 45)})  # a box after a click on the same slice
    fast = s.propagate(LO, HI)
    assert s.prompts()[25].points and s.prompts()[25].box == (10, 10, 40, 45)
    expected = oracle(engine, s.volume, s.prompts(), LO, HI)
    assert fast.how == "incremental" and _dice(fast.mask, expected) >= MIN_INCREMENTAL_DICE
    boxed = s.propagate(LO, HI, incremental=False)
    np.testing.assert_array_equal(boxed.mask, expected)
    assert (boxed.mask != clicked).any(), "the box was ignored"
    s.update_prompts(masks={23: disk(s, 0.5, 0.5, 0.2)})  # a mask on another slice
    masked = s.propagate(LO, HI, incremental=False)
    np.testing.assert_array_equal(masked.mask, oracle(engine, s.volume, s.prompts(), LO, HI))


def test_2d_click_answers_its_own_slice(engine, volume_path):
    s = engine.open(volume_path, "sessions-2d", PRESET, mode="2d")
    p5 = SlicePrompt(points=((20.0, 30.0),), labels=(1,))
    p7 = SlicePrompt(points=((25.0, 20.0),), labels=(1,))
    first, _ = s.segment_slice(5, p5)
    s.segment_slice(7, p7)
    again, _ = s.segment_slice(5, p5)
    np.testing.assert_array_equal(again, first)
    fresh = engine.open(volume_path, "sessions-2d-fresh", PRESET, mode="2d")
    np.testing.assert_array_equal(fresh.segment_slice(5, p5)[0], first)


def test_a_requests_encode_count_covers_its_prompts_and_every_label_it_propagates(engine, volume_path):
    """The answer's ``frames_encoded`` is the session's count (``all_or_nothing`` yields it), not the
    infer layer's: it covers each propagation in the request and is 0 once the slices are cached."""
    # a window no other test uses: none of these slices is in the feature cache yet
    s = engine.open(volume_path, "sessions-encode-count", intensity.IntensityPreset("window", 321.0, 123.0))
    with pytest.raises(PromptError, match="non-empty string"):
        s.select("")
    with s.all_or_nothing() as encoded:
        s.select("a")
        s.update_prompts(points={25: [click(s, 0.5, 0.5)]})
        first = s.propagate(LO, LO + 4)
        s.select("b")
        s.update_prompts(points={27: [click(s, 0.3, 0.3)]})
        second = s.propagate(LO + 2, HI)
        assert encoded() == first.frames_encoded + second.frames_encoded == HI - LO + 1  # each slice once
    with s.all_or_nothing() as encoded:
        s.select("a")
        s.update_prompts(points={25: [click(s, 0.5, 0.5), click(s, 0.6, 0.6, 0)]})
        assert s.propagate(LO, HI).frames_encoded == encoded() == 0


def test_labels_keep_their_prompts_and_combine(engine, volume_path):
    s = new_session(engine, volume_path)
    s.select("cord")
    s.update_prompts(points={25: [click(s, 0.5, 0.5)]})
    cord = s.propagate(LO, HI).mask.copy()
    s.select("csf")
    s.update_prompts(points={24: [click(s, 0.3, 0.3)]})
    csf = s.propagate(LO, HI).mask.copy()
    s.select("cord")  # back to the first label: its prompts and result are still there
    assert sorted(s.prompts()) == [25]
    back = s.propagate(LO, HI)
    assert back.how == "cached"
    np.testing.assert_array_equal(back.mask, cord)
    combined, values = s.combined()
    assert values == {"cord": 1, "csf": 2}
    assert set(np.unique(combined)) <= {0, 1, 2}
    np.testing.assert_array_equal(combined > 0, (cord > 0) | (csf > 0))
    only_cord = (cord > 0) & ~(csf > 0)
    assert (combined[only_cord] == 1).all() and (combined[(csf > 0) & ~(cord > 0)] == 2).all()
    overlap = (cord > 0) & (csf > 0)
    if overlap.any():  # overlaps go to the label with the higher SAM 2 logit
        k = int(np.flatnonzero(overlap.reshape(len(overlap), -1).any(1))[0])
        cord_logits, csf_logits = s.track("cord").logits(k), s.track("csf").logits(k)
        expected = np.where(cord_logits >= csf_logits, 1, 2)[overlap[k]]
        ties = (cord_logits == csf_logits)[overlap[k]]
        np.testing.assert_array_equal(combined[k][overlap[k]][~ties], expected[~ties])
    s.reset("csf")
    assert s.prompts("csf") == {} and sorted(s.prompts("cord")) == [25]
    s.reset()
    assert s.prompts("cord") == {}


def test_undo_and_redo_equal_the_session_that_never_had_the_action(engine, volume_path):
    s = new_session(engine, volume_path)
    s.update_prompts(points={25: [click(s, 0.5, 0.5)]})
    first = s.propagate(LO, HI).mask.copy()
    s.update_prompts(points={25: [click(s, 0.5, 0.5)], 27: [click(s, 0.2, 0.7)]})
    second = s.propagate(LO, HI, incremental=False).mask.copy()
    s.undo()
    assert sorted(s.prompts()) == [25]
    np.testing.assert_array_equal(s.propagate(LO, HI).mask, first)
    s.redo()  # re-adding a prompt takes the fast path; the full one is exact
    assert _dice(s.propagate(LO, HI).mask, second) >= MIN_INCREMENTAL_DICE
    np.testing.assert_array_equal(s.propagate(LO, HI, incremental=False).mask, second)
    s.undo()
    s.undo()
    with pytest.raises(PromptError, match="nothing to undo"):
        s.undo()


@pytest.mark.parametrize("axis", ["i", "j"])
def test_any_axis_propagates_through_that_stack(engine, volume_path, axis):
    """A mask prompt along i or j comes back on exactly its voxels, and frames are the volume's planes."""
    s = new_session(engine, volume_path, axis=axis)
    geo = s.geometry
    array = s.volume.slices_u8
    vol_u8 = intensity.to_uint8(geo.to_volume(array), intensity.IntensityPreset("none"))
    assert vol_u8.shape == tuple(reversed(geo.size_ijk))
    plane = geo.num_frames // 2
    prompt = disk(s, 0.5, 0.5, 0.2)
    s.update_prompts(masks={plane: prompt})
    result = s.propagate(plane - 2, plane + 2, auto_stop=0)
    volume_mask = geo.to_volume(result.mask)
    index = [slice(None)] * 3
    index[{"i": 2, "j": 1}[axis]] = plane  # [k, j, i] array
    np.testing.assert_array_equal(volume_mask[tuple(index)], prompt)
    # a click's voxel maps to its frame pixel and back
    ijk = (7, 11, 13)
    k, x, y = geo.voxel_to_frame(ijk)
    assert geo.frame_to_voxel(k, x, y) == ijk
    assert geo.to_frames(np.arange(np.prod(vol_u8.shape)).reshape(vol_u8.shape))[k, int(y), int(x)] == \
        np.ravel_multi_index(ijk[::-1], vol_u8.shape)


# -- auto-stop, driven through the real network ------------------------------------------------------
@contextlib.contextmanager
def decoder_rewritten(engine, chosen: set, rewrite):
    """A forward hook on SAM 2's real mask decoder that passes its output for the slices in ``chosen`` through
    ``rewrite`` (the slice being decoded is read from the feature source, which SAM 2 asks first).
    Named as such: it drives the network's output, it replaces nothing."""
    current = {"k": None}
    original_get = VolumeFeatures.get

    def get(self, frame_idx):
        current["k"] = frame_idx
        return original_get(self, frame_idx)

    def hook(module, args, output):
        return rewrite(*output) if current["k"] in chosen else output

    VolumeFeatures.get = get
    handle = engine.predictor.sam_mask_decoder.register_forward_hook(hook)
    try:
        yield chosen
    finally:
        handle.remove()
        VolumeFeatures.get = original_get


@pytest.fixture
def absent_on(engine):
    """SAM 2's object score says "absent" on the slices added to the yielded set."""
    def absent(masks, ious, tokens, object_scores):
        return masks, ious, tokens, torch.full_like(object_scores, -20.0)

    with decoder_rewritten(engine, set(), absent) as chosen:
        yield chosen


def test_auto_stop_stops_forgets_and_reports(engine, volume_path, absent_on):
    absent_on.update({27, 28, 21, 20})
    s = new_session(engine, volume_path)
    engine.feature_cache.drop_volume(s.volume.key)  # so every slice is decoded through the hook's eyes
    s.update_prompts(points={24: [click(s, 0.5, 0.5)]})
    full = s.propagate(18, 31, auto_stop=2)
    assert full.stopped_early == {"forward": 28, "reverse": 20}
    assert full.processed_range == (20, 28)
    assert not full.mask[29:].any() and not full.mask[:20].any()
    # an incremental correction past the stop re-runs the outer direction and stops again
    s.update_prompts(points={24: [click(s, 0.5, 0.5)], 26: [click(s, 0.4, 0.5)]})
    inc = s.propagate(18, 31, auto_stop=2)
    assert inc.how == "incremental"
    assert inc.stopped_early["forward"] == 28 and max(inc.scores) == 28
    assert not inc.mask[29:].any()
    absent_on.clear()
    absent_on.update({30, 31})  # the object now "vanishes" later: a full pass reaches further
    later = s.propagate(18, 31, auto_stop=2, incremental=False)
    assert later.stopped_early["forward"] == 31


@pytest.mark.parametrize("every", [1, 3, 100])
def test_host_copies_in_groups_give_the_answer_and_state_of_copies_per_slice(engine, volume_path, absent_on,
                                                                            monkeypatch, every):
    """A full pass brings masks and scores to the host SYNC_EVERY slices at a time; with auto-stop, the
    slices tracked past the stop are forgotten. Any group size must leave exactly the answer and the SAM 2
    state that copying every slice at once leaves (``every = 1``, what the loop did before): compared on
    the stop itself and on an incremental correction that reads the state afterwards."""
    from lib.engine import tracking

    absent_on.update({27, 28, 29, 21, 20})

    def session_run(group):
        monkeypatch.setattr(tracking, "SYNC_EVERY", {"cpu": group, "cuda": group})  # the GPU's grouping, on the CPU
        s = new_session(engine, volume_path)
        s.update_prompts(points={24: [click(s, 0.5, 0.5)]})
        full = s.propagate(18, 31, auto_stop=2)
        s.update_prompts(points={24: [click(s, 0.5, 0.5)], 25: [click(s, 0.45, 0.5)]})
        inc = s.propagate(18, 31, auto_stop=2)
        tracked = sorted(s.track().state["frames_tracked_per_obj"][0])
        return full, inc, tracked

    engine.feature_cache.drop_volume(new_session(engine, volume_path).volume.key)  # every slice through the hook
    one = session_run(1)
    grouped = session_run(every)
    assert one[0].stopped_early == {"forward": 28, "reverse": 20}
    for a, b in ((one[0], grouped[0]), (one[1], grouped[1])):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.scores == b.scores and a.stopped_early == b.stopped_early and a.how == b.how
    assert one[2] == grouped[2] and 29 not in grouped[2], grouped[2]


# -- the oracle over random action sequences ------------------------------------------------------
SLICES = st.integers(LO, HI)
UNIT = st.floats(0.1, 0.9)
ACTIONS = st.one_of(
    st.tuples(st.just("click"), SLICES, UNIT, UNIT, st.sampled_from([1, 1, 0])),
    st.tuples(st.just("move_last_click"), SLICES),
    st.tuples(st.just("remove_last_click")),
    st.tuples(st.just("box"), SLICES, UNIT, UNIT),
    st.tuples(st.just("mask"), SLICES, UNIT),
    st.tuples(st.just("switch_label")),
    st.tuples(st.just("undo")),
    st.tuples(st.just("redo")),
    st.tuples(st.just("reset")),
    st.tuples(st.just("rejected")),  # a request the server refuses (a click outside the slice range)
    st.tuples(st.just("evict")),  # the volume leaves the engine's cache: the SAM 2 states go
    st.tuples(st.just("preset")),  # the client switches intensity preset
    st.tuples(st.just("lock")),  # lock (or unlock) the current label: its voxels are its own in labels "all"
)
OTHER_PRESET = intensity.IntensityPreset("volume_minmax")


def _apply(s, clicks, action):
    name = action[0]
    label_clicks = clicks.setdefault(s.label, [])
    if name == "click":
        _, k, x, y, positive = action
        label_clicks.append((k, click(s, x, y, positive)))
    elif name == "move_last_click" and label_clicks:
        label_clicks[-1] = (action[1], label_clicks[-1][1])
    elif name == "remove_last_click" and label_clicks:
        label_clicks.pop()
    elif name == "box":
        _, k, x, y = action
        h, w = s.volume.slices_u8.shape[1:]
        x0, y0 = int(x * w * 0.5), int(y * h * 0.5)
        s.update_prompts(boxes={k: (x0, y0, x0 + w // 3, y0 + h // 3)})
        return
    elif name == "mask":
        s.update_prompts(masks={action[1]: disk(s, action[2], 0.5, 0.15)})
        return
    elif name == "switch_label":
        s.select("b" if s.label == "a" else "a")
        return
    elif name in ("undo", "redo"):
        try:
            getattr(s, name)()
        except PromptError:
            pass
        return
    elif name == "reset":
        s.reset(s.label)
        clicks[s.label] = []
        return
    elif name == "lock":
        s.locked = s.locked ^ {s.label}
        return
    elif name == "rejected":
        s.update_prompts(points={HI + 3: [click(s, 0.5, 0.5)]})  # outside [LO, HI]: propagate refuses it
        return
    points: dict[int, list] = {}
    for k, p in label_clicks:
        points.setdefault(k, []).append(p)
    s.update_prompts(points=points)


def _positive(prompts):
    """Something positive somewhere: slices with only background clicks are corrections (SAM 2 takes them)."""
    return any(p.positive for p in prompts.values())


# CI runs a fixed set of sequences (derandomize: the same 10 on every run, plus the examples below, so a
# pass or a failure is repeatable; refused requests, evictions and preset changes make each one dearer);
# SAM2_3D_SESSION_RANDOM=1 explores new ones, e.g. 300 examples before issue 20's actions: passed, min Dice
# 0.998 (SAM2_3D_SESSION_RANDOM=1 SAM2_3D_SESSION_EXAMPLES=300 pytest tests/test_sessions.py -k any_action).
@settings(max_examples=int(os.environ.get("SAM2_3D_SESSION_EXAMPLES", "10")), deadline=None,
          derandomize=os.environ.get("SAM2_3D_SESSION_RANDOM") != "1",
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(actions=st.lists(ACTIONS, min_size=2, max_size=5))
# found by hypothesis: a reset label lost its prompt list and history, so the next action on it raised
@example(actions=[("reset",), ("undo",)])
@example(actions=[("reset",), ("redo",)])
@example(actions=[("reset",), ("remove_last_click",)])
@example(actions=[("reset",), ("click", 26, 0.4, 0.6, 1)])
@example(actions=[("click", 27, 0.3, 0.6, 0), ("click", 23, 0.6, 0.4, 0)])  # background clicks alone on slices
@example(actions=[("click", 27, 0.3, 0.6, 1), ("rejected",), ("undo",), ("redo",)])
@example(actions=[("click", 27, 0.3, 0.6, 0), ("evict",), ("undo",)])
@example(actions=[("click", 27, 0.3, 0.6, 1), ("preset",), ("remove_last_click",), ("preset",)])
@example(actions=[("lock",), ("switch_label",), ("click", 25, 0.5, 0.5, 1), ("rejected",)])
def test_any_action_sequence_ends_where_a_fresh_session_ends(engine, volume_path, actions):
    """Each action is a request: all of it or, when refused, nothing (prompts and history as before)."""
    s = new_session(engine, volume_path)
    s.select("a")
    preset = PRESET
    clicks: dict[str, list] = {}
    for action in [("click", 25, 0.5, 0.5, 1)] + actions:
        if action[0] in ("evict", "preset"):  # between requests; the next request rebuilds from the prompts
            if action[0] == "evict":
                assert s.drop_state(volume_too=True)
            else:
                preset = OTHER_PRESET if preset is PRESET else PRESET
            assert engine.open(volume_path, s.client_id, preset) is s
            assert s.volume.preset.key == preset.key and not s.has_state
            continue
        before = (s.label, {n: s.prompts(n) for n in s.labels}, {n: s.history_depth(n) for n in s.labels},
                  set(s.locked))
        client_clicks = {n: list(c) for n, c in clicks.items()}
        try:
            with s.all_or_nothing():
                _apply(s, clicks, action)
                s.propagate(LO, HI, auto_stop=0)  # what the server does for every request
        except PromptError:
            REFUSED.append(action[0])
            clicks = client_clicks
            assert (s.label, {n: s.prompts(n) for n in s.labels}, {n: s.history_depth(n) for n in s.labels},
                    set(s.locked)) == before
    for label in s.labels:
        prompts = s.prompts(label)
        if not _positive(prompts):
            continue
        expected = oracle(engine, s.volume, prompts, LO, HI)
        fast = s.propagate(LO, HI, auto_stop=0, label=label)
        slice_dices = [_dice(fast.mask[k], expected[k]) for k in range(LO, HI + 1)]
        INCREMENTAL_DICES.append(float(np.mean(slice_dices)))
        WORST_SLICE_DICES.append(float(np.min(slice_dices)))
        assert INCREMENTAL_DICES[-1] >= MIN_INCREMENTAL_DICE, (actions, fast.how)
        full = s.propagate(LO, HI, auto_stop=0, incremental=False, label=label)
        np.testing.assert_array_equal(full.mask, expected)
    if any(s.result(n) is not None for n in s.labels):  # locked labels keep their voxels in the combined map
        combined, values = s.combined()
        for n in s.locked & set(values):
            others = [s.result(m).mask > 0 for m in s.locked & set(values) - {n}]
            mine = (s.result(n).mask > 0) & ~np.logical_or.reduce(others or [np.zeros_like(combined, bool)])
            assert (combined[mine] == values[n]).all(), (actions, n)


def teardown_module(module):
    if INCREMENTAL_DICES:
        out = os.path.join(REPO, "test-artifacts")
        os.makedirs(out, exist_ok=True)
        values = np.asarray(INCREMENTAL_DICES)
        summary = {"n": len(values), "mean": float(values.mean()), "min": float(values.min()),
                   "p5": float(np.percentile(values, 5)), "median": float(np.median(values)),
                   "exact_fraction": float((values == 1.0).mean()), "worst_slice": float(min(WORST_SLICE_DICES)),
                   "refused_requests": len(REFUSED)}
        with open(os.path.join(out, "session-oracle-dice.json"), "w") as f:
            json.dump({"summary": summary, "values": INCREMENTAL_DICES, "worst_slices": WORST_SLICE_DICES,
                       "refused": REFUSED}, f, indent=1)
        MEASURED["sessions: incremental path vs oracle, mean slice Dice per label"] = summary


# -- through the infer task (what the server runs), threads and clients ----------------------------------
@pytest.fixture(scope="module")
def point_task(engine):
    from lib.infers.sam2_infer import Sam2InferTask

    return Sam2InferTask(engine, "point", ["object"])


def _request(path, **kw):
    return {"image": path, "start_slice": LO, "end_slice": HI, "auto_stop": 0, "result_extension": ".nii.gz",
            "preset": "mr", **kw}


def test_clients_without_client_id_never_see_each_others_prompts(point_task, volume_path):
    """OHIF sends no client_id: several such clients on one image, from threads at once."""
    import threading

    answers, errors = [], []

    def client(n):
        k = LO + 2 * n
        for extra in range(3):
            fg = [[30, 27, k]] + [[25 + extra, 20, k + 1]] * (extra > 0)
            try:
                out_file, result = point_task(_request(volume_path, foreground=fg))
                os.unlink(out_file)
                answers.append((sorted({p[2] for p in fg}), result["prompted_slices"]))
            except Exception as e:  # noqa: BLE001 - any exception is the failure being tested
                errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(answers) == 12
    for sent, answered in answers:
        assert answered == sent


def test_clicks_in_one_sagittal_plane_without_axis_are_answered_along_k_with_a_hint(point_task, volume_path):
    out_file, result = point_task(_request(volume_path, foreground=[[30, 20, 24], [30, 25, 27], [30, 22, 26]],
                                           client_id="axis-hint"))
    os.unlink(out_file)
    assert result["axis"] == "k" and result["prompted_slices"] == [24, 26, 27]
    assert '"axis": "i"' in result["axis_hint"]
    out_file, result = point_task(_request(volume_path, foreground=[[30, 20, 24], [30, 25, 27], [30, 22, 26]], axis="i",
                                           client_id="axis-hint", start_slice=-1, end_slice=-1))
    os.unlink(out_file)
    assert result["axis"] == "i" and result["prompted_slices"] == [30]
    # two axial clicks on one row are no hint: the coincidence is too common
    out_file, result = point_task(_request(volume_path, foreground=[[30, 20, 24], [30, 25, 27]], client_id="axis-2"))
    os.unlink(out_file)
    assert result["axis"] == "k" and result["axis_hint"] is None


def test_labels_all_and_undo_through_the_task(point_task, volume_path):
    import SimpleITK as sitk

    base = _request(volume_path, client_id="labels-undo")
    f1, r1 = point_task(dict(base, label="cord", foreground=[[30, 27, 25]]))
    f2, r2 = point_task(dict(base, label="csf", foreground=[[20, 20, 24]], labels="all"))
    assert r2["label_names"] == {"cord": 1, "csf": 2} and r2["session_labels"] == ["cord", "csf"]
    both = sitk.GetArrayFromImage(sitk.ReadImage(f2))
    cord = sitk.GetArrayFromImage(sitk.ReadImage(f1))
    np.testing.assert_array_equal(both == 1, (cord > 0) & (both != 2))
    f3, r3 = point_task(dict(base, label="cord", foreground=[[30, 27, 25], [10, 10, 28]]))
    assert r3["prompted_slices"] == [25, 28] and r3["undo_available"] == 2
    f4, r4 = point_task(dict(base, label="cord", undo=True))
    assert r4["prompted_slices"] == [25] and r4["redo_available"] == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(f4)), cord)
    for f in (f1, f2, f3, f4):
        os.unlink(f)


def test_sessions_are_bounded_by_the_bytes_they_hold(engine, volume_path):
    s = new_session(engine, volume_path)
    s.update_prompts(points={25: [click(s, 0.5, 0.5)]})
    s.propagate(LO, HI)
    held = s.nbytes()
    # SAM 2's per-slice outputs (memory features, masks) are counted, not only our result array
    assert held > s.track().last.mask.nbytes + (HI - LO + 1) * 1024, held
    print(f"\na session holds {held / (HI - LO + 1) / 2**10:.0f} KiB per propagated slice at {engine.image_size} px")
    old = engine.max_session_bytes
    engine.max_session_bytes = held + 1  # room for one such session only
    try:
        t = new_session(engine, volume_path)
        t.update_prompts(points={24: [click(t, 0.4, 0.5)]})
        t.propagate(LO, HI)
        assert engine.trim(keep=t) >= 1
        assert t.has_state and not s.has_state  # s keeps its prompts: its next propagation rebuilds
        assert engine.stats()["session_bytes"] <= held + 1
        assert sorted(s.prompts()) == [25] and s.propagate(LO, HI).how == "full"
    finally:
        engine.max_session_bytes = old


def test_auto_stop_stops_on_empty_masks_the_object_score_calls_present(engine, volume_path):
    """After fine-tuning SAM 2's object score saturates (0.995 on slices with nothing on them) while the
    masks still go empty where the object ends (issue 22): an empty mask counts as absent. A forward hook
    on the real mask decoder makes the masks of chosen slices empty and their object score +20 ("present").
    Before, auto-stop read the object score alone and ran to the range's ends."""
    chosen = {27, 28, 21, 20}

    def empty_but_present(masks, ious, tokens, object_scores):
        return torch.full_like(masks, -20.0), ious, tokens, torch.full_like(object_scores, 20.0)

    with decoder_rewritten(engine, chosen, empty_but_present):
        s = new_session(engine, volume_path)
        engine.feature_cache.drop_volume(s.volume.key)  # every slice decoded through the hook
        s.update_prompts(points={24: [click(s, 0.5, 0.5)]})
        full = s.propagate(18, 31, auto_stop=2)
    assert full.stopped_early == {"forward": 28, "reverse": 20}, (full.stopped_early, full.scores)
    assert all(full.scores[k] > 0.5 for k in chosen)
    assert not full.mask[27:].any() and not full.mask[:22].any()
