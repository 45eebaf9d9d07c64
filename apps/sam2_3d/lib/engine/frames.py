"""SAM 2 input frames made in memory, equal to what SAM 2's own loader makes of 8-bit image files.

``sam2.utils.misc._load_img_as_tensor`` opens a file with PIL, converts it to RGB, resizes it to
``image_size``² with PIL's default filter, divides by 255 and normalises with ImageNet mean/std.
We do exactly the same on the uint8 slice held in memory (no JPEG/PNG round trip). A grey slice
converted to RGB has three equal channels, so we resize one channel and repeat it: identical output,
a third of the work. Frames are made lazily, one per access, so a long volume never holds its
float frames all at once (SAM 2's own loader keeps N x 3 x 1024 x 1024 floats).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMG_MEAN = (0.485, 0.456, 0.406)  # the defaults of sam2.utils.misc.load_video_frames
IMG_STD = (0.229, 0.224, 0.225)


def frame_tensor(slice_u8: np.ndarray, image_size: int) -> torch.Tensor:
    """One uint8 ``[H, W]`` slice -> normalised float32 ``[3, S, S]`` tensor, as SAM 2 loads a frame."""
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(slice_u8), mode="L").resize((image_size, image_size)))
    grey = torch.from_numpy(resized / 255.0).to(torch.float32)  # float64 / 255 then float32, as SAM 2 does
    rgb = grey.unsqueeze(0).expand(3, -1, -1)
    mean = torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
    return (rgb - mean) / std


class SliceFrames(Sequence):
    """A volume's uint8 slices seen by SAM 2 as its ``inference_state["images"]``."""

    def __init__(self, slices_u8: np.ndarray, image_size: int):
        if slices_u8.ndim != 3 or slices_u8.dtype != np.uint8:
            raise ValueError(f"expected uint8 [K, H, W] slices, got {slices_u8.dtype} {slices_u8.shape}")
        self.slices_u8 = slices_u8
        self.image_size = image_size

    def __len__(self) -> int:
        return self.slices_u8.shape[0]

    def __getitem__(self, k):
        if isinstance(k, slice):
            return torch.stack([self[i] for i in range(*k.indices(len(self)))])
        return frame_tensor(self.slices_u8[k], self.image_size)

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([self[i] for i in indices])
