"""Helpers shared by the hostile-input, load and crash tests: tiny real volumes and labels on disk."""

from __future__ import annotations

import json
import os

import numpy as np
import requests
import SimpleITK as sitk


def write_volume(path, shape_kji=(6, 32, 32), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), seed=0, dtype=np.int16):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 400, shape_kji).astype(dtype)
    array[:, shape_kji[1] // 4: 3 * shape_kji[1] // 4, shape_kji[2] // 4: 3 * shape_kji[2] // 4] += 600  # an object
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path), useCompression=str(path).endswith(".gz"))
    return image


def write_label_like(image, path, value=1, **changes):
    array = np.zeros(tuple(reversed(image.GetSize())), np.uint8)
    array[:, 2:-2, 2:-2] = value
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)
    for key, v in changes.items():
        getattr(label, "Set" + key)(v)
    sitk.WriteImage(label, str(path), useCompression=str(path).endswith(".gz"))
    return str(path)


def put_label(url, image, path, tag="final", params=None, filename=None):
    with open(path, "rb") as f:
        return requests.put(f"{url}/datastore/label", params={"image": image, "tag": tag},
                            files={"label": (filename or os.path.basename(path), f)},
                            data={"params": json.dumps(params or {})}, timeout=120)


def healthy(url) -> bool:
    return requests.get(url + "/info/", timeout=30).status_code == 200
