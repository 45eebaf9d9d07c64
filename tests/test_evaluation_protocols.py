"""Each protocol, run through the real engine (SAM 2.1 tiny, RANDOM WEIGHTS, 256 px), places its prompts
where the papers say, relative to the ground truth; and its recorded steps replay to the same mask.

Random weights make the masks meaningless; what is checked is where prompts go, which slices are
processed, and that mask prompts are honoured exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared
from scipy.ndimage import distance_transform_edt

from lib.engine.intensity import IntensityPreset
from lib.evaluation import datasets, metrics, protocols
from lib.evaluation import prompts as P


@pytest.fixture(scope="module")
def cord():
    """spinalcord_t2 cut to 7 slices; the object kept on its 3 central ones so it ends inside the volume."""
    case = datasets.discover(shared("spinalcord_t2"), "cases")[0]
    spec = datasets.LabelSpec.parse("cord=1")
    loaded = datasets.load(case, spec.mask, z_margin=0, max_slices=7)
    gt = spec.mask(loaded.label)
    gt[:2] = False
    gt[5:] = False
    yield loaded, gt
    loaded.cleanup()


def _session(engine, loaded, name, mode="3d"):
    return engine.open(loaded.image_path, client_id=f"test/{name}", preset=IntensityPreset("slice_minmax"), mode=mode)


def test_mask_protocol_prompts_central_slice_and_scores_it_exactly(engine, cord):
    loaded, gt = cord
    session = _session(engine, loaded, "mask")
    run = protocols.run(protocols.ProtocolSpec.parse("mask"), session, gt, "volume")
    assert run.anchor == 3 == P.central_slice(gt)
    assert [s["kind"] for s in run.steps] == ["mask"] and run.steps[0]["k"] == 3
    assert run.propagate == (0, gt.shape[0] - 1) and run.slices_processed == gt.shape[0]
    assert metrics.per_slice_dice(run.mask, gt)[3] == 1.0
    # replay: the recorded steps through the same engine verbs give the same mask
    again, _ = protocols.execute(session, gt, run.steps, run.propagate)
    assert np.array_equal(again, run.mask)
    obj = protocols.run(protocols.ProtocolSpec.parse("mask"), session, gt, "object")
    assert obj.propagate == (2, 4) and not obj.mask[[0, 1, 5, 6]].any()


def test_box_protocol_uses_gt_bbox_of_middle_slice_and_object_range(engine, cord):
    loaded, gt = cord
    run = protocols.run(protocols.ProtocolSpec.parse("box"), _session(engine, loaded, "box"), gt)
    ys, xs = np.nonzero(gt[3])
    assert run.steps == [{"k": 3, "verb": "set_prompts", "kind": "box",
                          "box": [xs.min(), ys.min(), xs.max(), ys.max()]}]
    assert run.propagate == (2, 4) and run.slices_processed == 3
    assert not run.mask[[0, 1, 5, 6]].any()  # nothing outside the object's start..end slices


def test_clicks_follow_the_larger_error_region_of_the_previous_answer(engine, cord):
    loaded, gt = cord
    session = _session(engine, loaded, "clicks")
    answers = []
    segment = session.segment_slice

    def spy(k, prompt):
        mask, score = segment(k, prompt)
        answers.append(mask.astype(bool).copy())
        return mask, score

    session.segment_slice = spy
    try:
        run = protocols.run(protocols.ProtocolSpec.parse("clicks3"), session, gt, "volume")
    finally:
        del session.segment_slice
    k = P.central_slice(gt)
    assert run.anchor == k and 1 <= len(run.steps) <= 3 and len(answers) == len(run.steps)
    previous = [np.zeros_like(gt[k])] + answers[:-1]
    for step, before in zip(run.steps, previous):
        assert step["k"] == k
        fn, fp = gt[k] & ~before, before & ~gt[k]
        region = fn if fn.sum() >= fp.sum() else fp
        (x, y), label = step["click"]["xy"], step["click"]["label"]
        assert label == (1 if region is fn else 0)
        assert region[y, x]
        dist = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        assert dist[y, x] == dist.max()
        assert step["points"][-1] == [x, y]  # each round sends every click so far
    assert run.propagate == (0, gt.shape[0] - 1)
    if len(run.steps) < 3:  # stopped early only because the slice was perfect
        assert np.array_equal(answers[-1], gt[k])


def test_slice2d_prompts_every_object_slice_without_propagation(engine, cord):
    loaded, gt = cord
    run = protocols.run(protocols.ProtocolSpec.parse("slice2d"), _session(engine, loaded, "s2d", "2d"), gt,
                        slice2d_positives=2)
    assert run.propagate is None and [s["k"] for s in run.steps] == [2, 3, 4]
    for step in run.steps:
        g = gt[step["k"]]
        x0, y0, x1, y1 = P.bounding_box(g)
        for (x, y), label in zip(step["points"], step["labels"]):
            if label == 1:
                assert g[y, x]
            else:
                assert (x, y) == ((x0 + x1) // 2, (y0 + y1) // 2) and not g[y, x]
        assert step["labels"].count(1) == 2
    assert not run.mask[[0, 1, 5, 6]].any()
