"""Engine-level behaviour: bounded memory, feature reuse, checkpoint registry and real loading code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TEST_IMAGE_SIZE, shared

from lib.engine import intensity
from lib.engine.checkpoints import REGISTRY, CheckpointMissing, resolve_checkpoint
from lib.engine.engine import Sam2VolumeEngine, SlicePrompt
from lib.engine.errors import UnknownOption
from lib.engine.model import build_predictor


def test_many_open_images_stay_within_bounds(engine):
    """Sessions, volumes and cached features are LRU-bounded however many images are opened."""
    per_frame = None
    small = Sam2VolumeEngine(engine.predictor, max_sessions=2, max_volumes=2, feature_cache_bytes=1)
    images = [shared("spinalcord_t2", "image.nii.gz"), shared("totalseg_mr_small", "image.nii.gz"),
              shared("totalseg_ct_small", "image.nii.gz"), shared("pyradiomics_brain", "image.nrrd")]
    for n, path in enumerate(images):
        session = small.open(path, client_id=f"user{n}")
        k = session.geometry.num_frames // 2
        session.set_prompts({k: SlicePrompt(points=((10.0, 10.0),), labels=(1,))})
        session.propagate(k - 1, k + 1)
        if per_frame is None:
            per_frame = small.feature_cache.nbytes
            small.feature_cache.max_bytes = 4 * per_frame  # room for ~4 frames of one volume's size
        stats = small.stats()
        assert stats["volumes"] <= 2 and stats["sessions"] <= 2
        assert stats["cached_feature_bytes"] <= small.feature_cache.max_bytes  # features are 256 px for every volume


def test_features_are_computed_once_per_volume_and_shared_by_sessions(engine):
    path = shared("totalseg_mr_small", "image.nii.gz")
    preset = intensity.IntensityPreset("volume_minmax")
    first = engine.open(path, client_id="feat-a", preset=preset)
    first.reset()
    first.set_prompts({10: SlicePrompt(points=((50.0, 40.0),), labels=(1,))})
    before = first.features.frames_encoded
    first.propagate(8, 12)
    assert first.features.frames_encoded - before == 5  # slices 8..12, each once
    second = engine.open(path, client_id="feat-b", preset=preset)  # another user, same volume and preset
    assert second is not first
    second.reset()
    second.set_prompts({11: SlicePrompt(points=((52.0, 41.0),), labels=(1,))})
    second.propagate(8, 12)
    assert second.features.frames_encoded == 0


def test_registry_covers_sam2_and_sam21_in_four_sizes():
    import sam2

    names = set(REGISTRY)
    for family in ("sam2", "sam2.1"):
        for size in ("tiny", "small", "base_plus", "large"):
            assert f"{family}_hiera_{size}" in names
    for spec in REGISTRY.values():
        if spec.family == "MedSAM2":
            assert spec.url == "https://huggingface.co/wanglab/MedSAM2/resolve/main/" + spec.filename
            assert spec.sha256 is None and spec.size is None  # nobody publishes them: checked by loading
            continue
        assert spec.url.startswith("https://dl.fbaipublicfiles.com/segment_anything_2/") and spec.url.endswith(spec.filename)
        assert len(spec.sha256) == 64 and spec.size > 100_000_000
        assert (sam2.__path__[0] + "/" + spec.config) and __import__("os").path.isfile(sam2.__path__[0] + "/" + spec.config)


def test_missing_and_unknown_checkpoints_are_named(tmp_path, monkeypatch):
    with pytest.raises(CheckpointMissing, match="download_ckpts.py sam2.1_hiera_small"):
        resolve_checkpoint("sam2.1_hiera_small")
    with pytest.raises(UnknownOption, match="unknown checkpoint 'sam3_huge'"):
        resolve_checkpoint("sam3_huge")
    with pytest.raises(CheckpointMissing, match="not found"):
        resolve_checkpoint(str(tmp_path / "sam2.1_hiera_tiny.pt"))
    with pytest.raises(CheckpointMissing, match="not found"):
        resolve_checkpoint("/nonexistent/mystery.pt")  # "not found" first, not "cannot tell the config"
    (tmp_path / "mystery.pt").write_bytes(b"x")
    with pytest.raises(UnknownOption, match="cannot tell the SAM 2 config"):
        resolve_checkpoint(str(tmp_path / "mystery.pt"))
    resolved = resolve_checkpoint("sam2.1_hiera_large", random_weights=True)
    assert resolved.random_weights and resolved.path is None and resolved.config.endswith("sam2.1_hiera_l.yaml")


def test_a_checkpoint_file_is_loaded_by_sam2s_own_loader(engine, tmp_path):
    """The real loading path: a file in SAM 2's checkpoint format ({"model": state_dict}) is loaded
    strictly; here it holds the test engine's random weights, since no real checkpoint is downloadable."""
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": engine.predictor.state_dict()}, path)
    resolved = resolve_checkpoint(str(path))
    assert not resolved.random_weights and resolved.config == REGISTRY["sam2.1_hiera_tiny"].config
    loaded = build_predictor(resolved, device="cpu", image_size=TEST_IMAGE_SIZE)
    for (name, a), (_, b) in zip(engine.predictor.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    # a file with missing weights must be refused, not half-loaded
    state = engine.predictor.state_dict()
    state.pop(next(iter(state)))
    torch.save({"model": state}, path)
    with pytest.raises(RuntimeError):
        build_predictor(resolve_checkpoint(str(path)), device="cpu", image_size=TEST_IMAGE_SIZE)


def test_medsam2_names_build_sam21_tiny_at_512_px_and_load_their_files(tmp_path):
    """MedSAM2 (bowang-lab) by name: SAM 2.1 Hiera-T with its published 512 px hyper-parameters. RANDOM
    WEIGHTS: no MedSAM2 file can be downloaded here, so a file of the right shapes is made from them."""
    names = ["MedSAM2_latest", "MedSAM2_2411", "MedSAM2_CTLesion", "MedSAM2_MRI_LiverLesion", "MedSAM2_US_Heart"]
    assert all(n in REGISTRY for n in names)
    with pytest.raises(CheckpointMissing, match="download_ckpts.py MedSAM2_latest"):
        resolve_checkpoint("MedSAM2_latest")
    torch.manual_seed(0)
    built = build_predictor(resolve_checkpoint("MedSAM2_latest", random_weights=True), device="cpu")
    assert built.image_size == 512 and built.sam_image_embedding_size == 32
    for attention in ("self_attn", "cross_attn_image"):
        layer = getattr(built.memory_attention.layers[0], attention)
        assert layer.freqs_cis.shape[0] == 32 * 32  # RoPE tables for a 32x32 feature map, as MedSAM2's config
    # the same shapes as SAM 2.1 tiny: a MedSAM2 file is a SAM 2.1-tiny state dict
    tiny = build_predictor(resolve_checkpoint("sam2.1_hiera_tiny", random_weights=True), device="cpu")
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in tiny.state_dict().items()}
    # a user's file named like the published one loads strictly through SAM 2's own loader, at 512 px
    path = tmp_path / "MedSAM2_latest.pt"
    torch.save({"model": built.state_dict()}, path)
    resolved = resolve_checkpoint(str(path))
    assert resolved.path == str(path) and resolved.name == "MedSAM2_latest.pt"
    loaded = build_predictor(resolved, device="cpu")
    assert loaded.image_size == 512
    for (name, a), (_, b) in zip(built.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    # the server's image_size still wins over the entry's 512
    assert build_predictor(resolved, device="cpu", image_size=256).image_size == 256


def test_presets_do_not_modify_the_volume():
    array = np.arange(-1000, 1000, dtype=np.int16).reshape(2, 10, 100)
    copy = array.copy()
    for name in intensity.PRESETS:
        out = intensity.to_uint8(array, intensity.IntensityPreset(name))
        assert out.dtype == np.uint8 and out.shape == array.shape
    np.testing.assert_array_equal(array, copy)
    lung = intensity.to_uint8(array, intensity.IntensityPreset("lung")).ravel()
    hu = array.ravel()
    # the lung window is -1350..150 HU: -1000 -> 255*350/1500, -600 (its centre) -> mid-grey, >=150 -> 255
    assert lung[hu == -1000][0] == 60 and lung[hu == -600][0] == 128 and (lung[hu >= 150] == 255).all()
    assert intensity.resolve(intensity.IntensityPreset("auto"), array).name == "soft_tissue"
    assert intensity.resolve(intensity.IntensityPreset("auto"), array + 1000).name == "mr"
