"""The engine feeds SAM 2 exactly what SAM 2's own code would, and gets the same masks back.

* Frames: for the same 8-bit slices, the engine's in-memory frames equal what SAM 2's own loader
  (``sam2.utils.misc._load_img_as_tensor`` + its ImageNet normalisation) makes of lossless PNG files.
* Propagation: the engine's session (cached features, in-memory frames) gives the same masks as SAM 2's
  own ``init_state`` / ``add_new_*`` / ``propagate_in_video`` (forward then reverse from the prompt)
  run on those PNG frames by the stock ``SAM2VideoPredictor``, with the same weights.

SAM 2's ``init_state`` only opens JPEG folders or mp4 files, and JPEG is lossy; so the reference run
hands ``init_state`` the PNG-loaded frames through ``load_video_frames``, the one function it reads
frames with. All networks here are the real SAM 2.1 tiny architecture with RANDOM weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import sam2.sam2_video_predictor as sam2_video_predictor_module
import torch
from conftest import TEST_IMAGE_SIZE, shared
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor
from sam2.utils.misc import _load_img_as_tensor

from lib.engine import intensity
from lib.engine.engine import SlicePrompt
from lib.engine.frames import IMG_MEAN, IMG_STD, SliceFrames
from lib.engine.geometry import read_image, volume_array


def sam2_png_frames(slices_u8: np.ndarray, folder, image_size: int) -> torch.Tensor:
    """What SAM 2's loader makes of the slices saved as lossless PNGs."""
    mean = torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
    frames = torch.zeros(len(slices_u8), 3, image_size, image_size, dtype=torch.float32)
    for n, s in enumerate(slices_u8):
        path = folder / f"{n:05d}.png"
        Image.fromarray(s).save(path)
        frames[n], _, _ = _load_img_as_tensor(str(path), image_size)
    frames -= mean
    frames /= std
    return frames


@pytest.mark.parametrize("image_size", [TEST_IMAGE_SIZE, 1024])
def test_frames_equal_sam2_loader_on_png(tmp_path, image_size):
    image = read_image(shared("pyradiomics_brain", "image.nrrd"))
    slices = intensity.to_uint8(volume_array(image)[10:13], intensity.IntensityPreset("mr"))
    expected = sam2_png_frames(slices, tmp_path, image_size)
    ours = SliceFrames(slices, image_size)
    for n in range(len(slices)):
        assert torch.equal(ours[n], expected[n]), f"frame {n} differs from SAM 2's loader"
    # the encoder's batched path (uint8 to the device, normalised there; here the device is the CPU):
    # the same bits, in any order and with the resize made ahead, as a prefetch makes it
    assert torch.equal(ours.batch([0, 1, 2]), expected)
    assert torch.equal(ours.batch([2, 0], resized=ours.resized([2, 0])), expected[[2, 0]])


@pytest.fixture(scope="module")
def stock_predictor(engine):
    """SAM 2's own video predictor class, with the engine's (random) weights."""
    predictor = build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu",
        hydra_overrides_extra=[f"++model.image_size={engine.image_size}"],
    )
    predictor.load_state_dict(engine.predictor.state_dict())
    predictor.fill_hole_area = 0  # as the engine: no CUDA extension on CPU
    assert type(predictor).__name__ == "SAM2VideoPredictor"
    return predictor


def sam2_reference_run(predictor, frames, height, width, add_prompt, anchor):
    original = sam2_video_predictor_module.load_video_frames
    sam2_video_predictor_module.load_video_frames = lambda **_: (frames, height, width)
    try:
        state = predictor.init_state(video_path="<png frames>")
    finally:
        sam2_video_predictor_module.load_video_frames = original
    add_prompt(state)
    masks = {}
    for reverse in (False, True):
        for k, _, m in predictor.propagate_in_video(state, start_frame_idx=anchor, reverse=reverse):
            masks[k] = (m[0, 0] > 0).numpy()
    return np.stack([masks[k] for k in range(len(frames))])


@pytest.mark.parametrize("prompt_kind", ["points", "mask"])
def test_propagation_equals_sam2_own_run(engine, stock_predictor, tmp_path, prompt_kind):
    path = shared("totalseg_mr_small", "image.nii.gz")
    image = read_image(path)
    slices = intensity.to_uint8(volume_array(image), intensity.IntensityPreset("mr"))
    height, width = slices.shape[1:]
    anchor = len(slices) // 2
    frames = sam2_png_frames(slices, tmp_path, engine.image_size)
    label = volume_array(read_image(shared("totalseg_mr_small", "label.nii.gz")))

    points = np.array([[width * 0.4, height * 0.5], [width * 0.6, height * 0.45]], dtype=np.float32)
    labels = np.array([1, 0], np.int32)
    mask = label[anchor] > 0
    assert mask.any()

    def add_prompt(state):
        if prompt_kind == "points":
            stock_predictor.add_new_points_or_box(state, frame_idx=anchor, obj_id=1, points=points, labels=labels)
        else:
            stock_predictor.add_new_mask(state, frame_idx=anchor, obj_id=1, mask=mask)

    reference = sam2_reference_run(stock_predictor, frames, height, width, add_prompt, anchor)
    # Equality below must not be vacuous: random weights still give non-trivial masks on every slice.
    fractions = reference.reshape(len(reference), -1).mean(1)
    assert ((fractions > 0.01) & (fractions < 0.99)).all(), fractions

    session = engine.open(path, f"fidelity-{prompt_kind}", intensity.IntensityPreset("mr"))
    session.reset()
    if prompt_kind == "points":
        prompt = SlicePrompt(points=tuple(map(tuple, points.tolist())), labels=tuple(labels.tolist()))
    else:
        prompt = SlicePrompt.from_mask(mask)
    session.set_prompts({anchor: prompt})
    result = session.propagate(0, len(slices) - 1, auto_stop=0)
    ours = result.mask.astype(bool)
    if prompt_kind == "mask":
        # Deliberate difference: the engine returns the user's mask unchanged on its slice; SAM 2
        # returns its low-resolution reconstruction of it. Compare that slice separately.
        np.testing.assert_array_equal(ours[anchor], mask)
        ours[anchor] = reference[anchor]
    np.testing.assert_array_equal(ours, reference)
    assert result.processed_range == (0, len(slices) - 1)
