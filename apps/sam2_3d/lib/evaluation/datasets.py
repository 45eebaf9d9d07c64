"""Find (image, label) cases in the dataset layouts users have, and load them for the engine.

Layouts (``--format auto`` picks the first that matches):

* ``msd``: a Medical Segmentation Decathlon task folder, ``imagesTr/X.nii.gz`` + ``labelsTr/X.nii.gz``
  (4D images: ``--channel`` picks the modality);
* ``pairs``: ``images/`` + ``labels/`` with the same file names, or one flat folder of
  ``X.nii.gz`` + ``X_label|X_seg|X_gt.nii.gz`` (any SimpleITK format: NIfTI, NRRD, MHA...);
* ``cases``: one folder per case (BraTS style; or the given folder itself is one case) holding a label file (``*seg*`` or ``*label*``) and
  image files; ``--modality flair`` picks the image whose name contains it (default: ``image``, or
  the only other file);
* ``npz``: MedSAM2 ``.npz`` files with ``imgs`` (Z x H x W), ``gts`` and ``spacing`` (x, y, z).

The engine opens an image by path, so an ``.npz``, a 4D channel or a z-cropped volume is written to a
temporary NIfTI first; the engine itself is not changed.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from ..common import VOLUME_EXTENSIONS, strip_extension
from ..engine.geometry import grid_differences, grid_of

IMAGE_EXT = VOLUME_EXTENSIONS
LABEL_SUFFIX = re.compile(r"[_-](label|labels|seg|gt|mask)$", re.IGNORECASE)


@dataclass(frozen=True)
class Case:
    case_id: str
    image: str
    label: str | None = None  # None for npz (labels inside)
    kind: str = "image"  # "image" or "npz"
    channel: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _stem(path: str) -> str:
    return strip_extension(path, (*IMAGE_EXT, ".npz"))


def _images(folder: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.endswith(IMAGE_EXT) and os.path.isfile(p))


def _paired_folders(root: str, img_dir: str, lab_dir: str, channel: int) -> list[Case]:
    labels = {_stem(p): p for p in _images(os.path.join(root, lab_dir))}
    cases = []
    for img in _images(os.path.join(root, img_dir)):
        stem = _stem(img)
        # MSD names 4D images X.nii.gz; some copies name channel files X_0000.nii.gz (nnU-Net)
        lab = labels.get(stem) or labels.get(re.sub(r"_\d{4}$", "", stem))
        if lab:
            cases.append(Case(stem, img, lab, channel=channel))
    return cases


DEFAULT_LABEL_PATTERN = "*seg*|*label*"
LABEL_HINT = ("label files are found by name: in a case folder the file matching --label-file (default "
              f"'{DEFAULT_LABEL_PATTERN}'), in a flat folder X_label / X_seg / X_gt / X_mask next to X; a label named "
              "after its structure (e.g. aorta.nii.gz) needs --label-file 'aorta*' (globs, '|' separates several)")


def _matches(path: str, pattern: str) -> bool:
    name = os.path.basename(path).lower()
    return any(fnmatch.fnmatch(name, p.strip().lower()) for p in pattern.split("|") if p.strip())


def _flat_pairs(root: str) -> list[Case]:
    files = _images(root)
    labels = {LABEL_SUFFIX.sub("", _stem(p)): p for p in files if LABEL_SUFFIX.search(_stem(p))}
    return [Case(_stem(p), p, labels[_stem(p)]) for p in files if _stem(p) in labels and p not in labels.values()]


def _case_folders(root: str, modality: str | None, label_pattern: str | None = None) -> list[Case]:
    """Sub-folders that are cases; or, when there are none, ``root`` itself as a single case."""
    cases = []
    folders = sorted(d for d in glob.glob(os.path.join(root, "*")) if os.path.isdir(d))
    for folder in folders or [root]:
        files = _images(folder)
        labels = [p for p in files if _matches(p, label_pattern or DEFAULT_LABEL_PATTERN)]
        if len(labels) > 1:
            raise ValueError(f"case folder {folder}: several files match the label pattern "
                             f"{label_pattern or DEFAULT_LABEL_PATTERN!r}: {[os.path.basename(p) for p in labels]}; "
                             "pass --label-file with a narrower glob")
        images = [p for p in files if p not in labels]
        if len(labels) != 1 or not images:
            continue
        want = modality or "image"
        chosen = [p for p in images if want.lower() in os.path.basename(p).lower()]
        if not chosen and modality is None and len(images) == 1:
            chosen = images
        if len(chosen) != 1:
            raise ValueError(
                f"case folder {folder}: cannot pick the image among {[os.path.basename(p) for p in images]}; "
                f"pass --modality NAME (a part of the image file name)"
            )
        cases.append(Case(os.path.basename(folder), chosen[0], labels[0]))
    return cases


def discover(root: str, fmt: str = "auto", modality: str | None = None, channel: int = 0,
             label_pattern: str | None = None) -> list[Case]:
    """All cases of a dataset folder (or a single .npz file), sorted by case id."""
    root = os.path.abspath(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"dataset not found: {root}")
    finders = {
        "npz": lambda: [Case(_stem(p), p, kind="npz") for p in sorted(glob.glob(os.path.join(root, "*.npz")))]
        if os.path.isdir(root) else ([Case(_stem(root), root, kind="npz")] if root.endswith(".npz") else []),
        "msd": lambda: _paired_folders(root, "imagesTr", "labelsTr", channel),
        "pairs": lambda: _paired_folders(root, "images", "labels", channel) or _flat_pairs(root),
        "cases": lambda: _case_folders(root, modality, label_pattern),
    }
    if fmt not in ("auto", *finders):
        raise ValueError(f"unknown dataset format {fmt!r}; use auto, {', '.join(finders)}")
    for name in finders if fmt == "auto" else [fmt]:
        cases = finders[name]()
        if cases:
            return sorted(cases, key=lambda c: c.case_id)
    raise ValueError(f"no image/label cases found in {root} (format {fmt}); {LABEL_HINT}")


@dataclass
class LoadedCase:
    """A case ready for the engine: an image path it can open, the label array on the same grid."""

    image_path: str  # what Sam2VolumeEngine.open reads
    label: np.ndarray  # int [K, J, I] on the (cropped) grid
    spacing_kji: tuple[float, float, float]
    crop: tuple[int, int]  # slices [k0, k1] of the original volume that were kept
    original_slices: int
    tmpdir: str | None = None

    def cleanup(self) -> None:
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def _read(case: Case) -> tuple[sitk.Image, np.ndarray, bool]:
    """(image, label [K,J,I] int, image_is_a_file_as_is)."""
    if case.kind == "npz":
        data = np.load(case.image)
        image = sitk.GetImageFromArray(np.asarray(data["imgs"]))
        image.SetSpacing([float(s) for s in data["spacing"]])
        if "origin" in data:
            image.SetOrigin([float(v) for v in data["origin"]])
        if "direction" in data:
            image.SetDirection([float(v) for v in np.asarray(data["direction"]).ravel()])
        gts = np.asarray(data["gts"])
        if gts.shape != tuple(reversed(image.GetSize())):
            raise GridMismatch(f"{case.case_id}: gts shape {gts.shape} != imgs shape {tuple(reversed(image.GetSize()))}")
        return image, np.rint(gts).astype(np.int32), False
    image = sitk.ReadImage(case.image)
    as_is = image.GetDimension() == 3
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, case.channel])
    label_image = sitk.ReadImage(case.label)
    check_grid(image, label_image, case.case_id)
    return image, np.rint(sitk.GetArrayFromImage(label_image)).astype(np.int32), as_is


class GridMismatch(ValueError):
    """The label is not on its image's voxel grid: scoring it would compare the wrong voxels."""


def check_grid(image: sitk.Image, label: sitk.Image, case_id: str) -> None:
    """Size, spacing, origin and direction of the label must be the image's (``geometry.grid_differences``:
    the rule the server applies to a saved label)."""
    problems = [f"{what} {a if what == 'size' else tuple(round(v, 4) for v in a)} vs image "
                f"{b if what == 'size' else tuple(round(v, 4) for v in b)}"
                for what, a, b in grid_differences(grid_of(label), grid_of(image))]
    if problems:
        raise GridMismatch(f"{case_id}: label is not on the image grid: " + "; ".join(problems)
                           + " (resample the label onto the image first)")


def load(case: Case, objects_mask: callable | None = None, z_margin: int | None = None,
         max_slices: int | None = None, tmp_root: str | None = None) -> LoadedCase:
    """Load a case; optionally crop along z around the union of the evaluated objects.

    ``objects_mask(label) -> bool [K,J,I]`` gives that union. ``z_margin`` keeps its z-range plus that
    many slices each side; ``max_slices`` then keeps at most that many, centred on its middle slice.
    """
    image, label, as_is = _read(case)
    n = label.shape[0]
    k0, k1 = 0, n - 1
    if objects_mask is not None and (z_margin is not None or max_slices):
        ks = np.flatnonzero(objects_mask(label).reshape(n, -1).any(axis=1))
        if ks.size:
            if z_margin is not None:
                k0, k1 = max(0, int(ks[0]) - z_margin), min(n - 1, int(ks[-1]) + z_margin)
            if max_slices and k1 - k0 + 1 > max_slices:
                mid = (int(ks[0]) + int(ks[-1])) // 2
                k0 = max(k0, mid - max_slices // 2)
                k1 = min(k1, k0 + max_slices - 1)
    spacing = image.GetSpacing()
    spacing_kji = (float(spacing[2]), float(spacing[1]), float(spacing[0]))
    if as_is and (k0, k1) == (0, n - 1):
        return LoadedCase(case.image, label, spacing_kji, (k0, k1), n)
    root = tmp_root if tmp_root and os.path.isdir(tmp_root) else None  # a Ray node without it: the default
    tmpdir = tempfile.mkdtemp(prefix=f"sam2eval-{case.case_id}-", dir=root)
    try:
        path = os.path.join(tmpdir, "image.nii.gz")
        sitk.WriteImage(image[:, :, k0 : k1 + 1], path, useCompression=False)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return LoadedCase(path, label[k0 : k1 + 1], spacing_kji, (k0, k1), n, tmpdir)


@dataclass(frozen=True)
class LabelSpec:
    """A named set of label values evaluated as one object (``wt=1,2,3,4``); ``any`` = label > 0.

    ``+`` joins values into one *part* of the object (``lungs=10+11,12+13+14``: two lungs made of lobes);
    without it each value is a part. Parts matter to gutierrez2023-lung only (one positive per part).
    """

    name: str
    values: tuple[int, ...] | None  # None: every non-zero value
    groups: tuple[tuple[int, ...], ...] | None = None  # the parts, when some values are joined by '+'

    @classmethod
    def parse(cls, text: str) -> "LabelSpec":
        name, _, vals = text.partition("=")
        vals = vals or name
        if vals.strip().lower() in ("any", ">0", "fg"):
            return cls(name.strip(), None)
        try:
            groups = tuple(tuple(int(v) for v in item.split("+")) for item in vals.split(",") if item.strip())
        except ValueError as e:
            raise ValueError(f"label {text!r}: use VALUE, NAME=V1,V2 (V1+V2: one part) or NAME=any") from e
        values = tuple(v for g in groups for v in g)
        if not values:
            raise ValueError(f"label {text!r} has no values")
        return cls(name.strip(), values, groups if any(len(g) > 1 for g in groups) else None)

    def mask(self, label: np.ndarray) -> np.ndarray:
        return label > 0 if self.values is None else np.isin(label, self.values)

    def parts(self, label: np.ndarray) -> np.ndarray:
        """One id per part of the object (label values, or '+' groups), 0 outside it."""
        parts = np.where(self.mask(label), label, 0)
        for n, group in enumerate(self.groups or ()):
            parts = np.where(np.isin(label, group), -(n + 1), parts)  # negative ids cannot clash with values
        return parts

    def to_dict(self) -> dict:
        return {"name": self.name, "values": list(self.values) if self.values else "any"}


def image_array(path: str) -> np.ndarray:
    """The image's voxel values as ``[k, j, i]`` float64 (what nibabel's ``get_fdata`` gives the papers'
    scripts, axes reversed)."""
    return sitk.GetArrayFromImage(sitk.ReadImage(path)).astype(np.float64)


def recist_array(case: Case, crop: tuple[int, int]) -> np.ndarray | None:
    """The RECIST marker label map of an npz case (key ``recist``, as MedSAM2's FLARE 2025 files hold it) on
    the evaluated slices, or None when the case has none."""
    if case.kind != "npz":
        return None
    with np.load(case.image) as data:
        if "recist" not in data.files:
            return None
        recist = np.rint(np.asarray(data["recist"])).astype(np.int32)
    return recist[crop[0] : crop[1] + 1]
