"""Clicks and boxes land on the voxel the client named, for every orientation in ../shared/data.

The network is replaced by ``DiskStandIn`` (tests/disk_standin.py), a deterministic stand-in that paints
a disk around each click, so the expected label is known exactly. Everything else is the real path:
the infer task parses the Slicer/OHIF request, the engine reads the real file and makes frames, and the
label is written back; the result is then read with an independent reader (nibabel / pynrrd).
"""

from __future__ import annotations

import os

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import same_grid, shared
from disk_standin import RADIUS, DiskStandIn

from lib.engine.engine import Sam2VolumeEngine
from lib.engine.geometry import SliceGeometry, read_image
from lib.infers.sam2_infer import Sam2InferTask

CASES = [
    ("spinalcord_t2", "image.nii.gz"),  # permuted axes: direction is not diagonal
    ("totalseg_ct_small", "image.nii.gz"),  # diag(-1, -1, 1)
    ("pyradiomics_brain", "image.nrrd"),  # NRRD, diag(1, -1, 1), anisotropic
    ("totalseg_ct_dicom", "dicom"),  # a real DICOM series folder, diag(1, -1, 1)
]


@pytest.fixture(scope="module")
def standin_engine():
    return Sam2VolumeEngine(DiskStandIn(), checkpoint_name="disk-stand-in")


def read_ijk(path: str) -> np.ndarray:
    """The result as an [i, j, k] array, read without SimpleITK."""
    if path.endswith(".nrrd"):
        data, _ = nrrd.read(path)  # pynrrd's default index order is Fortran: data[i, j, k]
        return data
    return np.asarray(nib.load(path).dataobj)


@pytest.mark.parametrize("folder,name", CASES)
@pytest.mark.parametrize("extension", [".nii.gz", ".nrrd"])
def test_click_lands_on_its_voxel(standin_engine, folder, name, extension):
    path = shared(folder, name)
    image = read_image(path)
    size = image.GetSize()
    # Deliberately asymmetric so that a swapped or flipped axis moves the disk elsewhere.
    i, j, k = size[0] // 3, size[1] // 4 + 1, size[2] // 2
    task = Sam2InferTask(standin_engine, "point", ["object"])
    out, result = task({
        "image": path, "foreground": [[i, j, k]], "background": [], "client_id": f"geo-{folder}",
        "start_slice": k - 1, "end_slice": k + 1, "auto_stop": 0, "result_extension": extension,
    })
    try:
        label = read_ijk(out)
        assert label.shape == tuple(size)
        assert label[i, j, k] == 1
        ii, jj = np.mgrid[0 : size[0], 0 : size[1]]
        disk = ((ii - i) ** 2 + (jj - j) ** 2 <= RADIUS**2).astype(np.uint8)
        for kk in range(size[2]):
            expected = disk if k - 1 <= kk <= k + 1 else np.zeros_like(disk)
            np.testing.assert_array_equal(label[:, :, kk], expected, err_msg=f"slice {kk}")
        written = sitk.ReadImage(out)
        same_grid(written, image)
        assert written.GetPixelID() == sitk.sitkUInt8
        # The voxel set in the result is, in world coordinates, the point the client clicked.
        np.testing.assert_allclose(
            written.TransformIndexToPhysicalPoint((i, j, k)), image.TransformIndexToPhysicalPoint((i, j, k)), atol=1e-4
        )
        assert result["prompted_slices"] == [k] and result["processed_range"] == [k - 1, k + 1]
    finally:
        os.unlink(out)


@pytest.mark.parametrize("folder,name", CASES[:3])
def test_roi_box_with_unsorted_pairs(standin_engine, folder, name):
    path = shared(folder, name)
    size = read_image(path).GetSize()
    i0, i1, j0, j1 = 2, size[0] // 2, 3, size[1] // 3
    k0, k1 = 1, min(5, size[2] - 1)
    roi = [i1, i0, j1, j0, k1, k0]  # as Slicer sends it for LPS data: each pair reversed
    task = Sam2InferTask(standin_engine, "box", ["object"])
    out, result = task({"image": path, "roi": roi, "client_id": f"box-{folder}", "auto_stop": 0})
    try:
        label = read_ijk(out)
        expected = np.zeros(size, np.uint8)
        expected[i0 : i1 + 1, j0 : j1 + 1, k0 : k1 + 1] = 1
        np.testing.assert_array_equal(label, expected)
        assert result["prompted_slices"] == [(k0 + k1) // 2]  # the ROI's middle slice
        assert result["processed_range"] == [k0, k1]  # the box's depth bounds propagation
    finally:
        os.unlink(out)


def test_slice_geometry_conventions():
    geo = SliceGeometry((60, 55, 52))
    assert (geo.num_frames, geo.frame_height, geo.frame_width) == (52, 55, 60)
    assert geo.voxel_to_frame([10, 20, 30]) == (30, 10.0, 20.0)
    assert geo.roi_to_box([40, 10, 50, 5, 9, 3]) == ((10, 5, 40, 50), (3, 9))
    # a box poking out of the volume is clamped; one entirely outside is an error
    assert geo.roi_to_box([-5, 10, 50, 70, 0, 100]) == ((0, 50, 10, 54), (0, 51))
    with pytest.raises(ValueError, match="outside the volume along i"):
        geo.roi_to_box([70, 80, 1, 5, 0, 1])
    with pytest.raises(ValueError, match="i=60 is not in"):
        geo.voxel_to_frame([60, 0, 0])


def test_volume_array_stays_valid_after_its_image_is_dropped():
    """Issue 11: SimpleITK's array view dangled once its image was freed (garbage values or a segfault)."""
    import gc

    from lib.engine.geometry import volume_array

    path = shared("spinalcord_t2", "image.nii.gz")
    expected = sitk.GetArrayFromImage(sitk.ReadImage(path))  # a copy
    view = volume_array(read_image(path))[20:30]  # the image itself is referenced nowhere else
    gc.collect()
    _ = [np.ones((64, 64, 64)) for _ in range(20)]  # reuse freed memory, if any was freed
    np.testing.assert_array_equal(view, expected[20:30])
