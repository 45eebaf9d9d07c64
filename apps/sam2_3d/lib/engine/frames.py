"""SAM 2 input frames made in memory, equal to what SAM 2's own loader makes of 8-bit image files.

``sam2.utils.misc._load_img_as_tensor`` opens a file with PIL, converts it to RGB, resizes it to
``image_size``² with PIL's default filter, divides by 255 and normalises with ImageNet mean/std.
We do exactly the same on the uint8 slice held in memory (no JPEG/PNG round trip). A grey slice
converted to RGB has three equal channels, so we resize one channel and repeat it: identical output,
a third of the work. Frames are made lazily, one per access, so a long volume never holds its
float frames all at once (SAM 2's own loader keeps N x 3 x 1024 x 1024 floats).

For the image encoder, frames come in batches (:meth:`SliceFrames.batch`): the resize stays PIL's on the
uint8 slice, and only uint8 pixels go to the device, where the float conversion and normalisation run
(the same IEEE operations in the same order, so the values are the same bits as the CPU's).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMG_MEAN = (0.485, 0.456, 0.406)  # the defaults of sam2.utils.misc.load_video_frames
IMG_STD = (0.229, 0.224, 0.225)


def resized_u8(slice_u8: np.ndarray, image_size: int) -> np.ndarray:
    """One uint8 ``[H, W]`` slice resized to ``image_size``² by PIL's default filter, as SAM 2's loader."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(slice_u8), mode="L").resize((image_size, image_size)))


def normalise(grey_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., S, S]`` -> float32 ``[..., 3, S, S]`` frames, on the tensor's own device.

    The steps are SAM 2's: ``/ 255`` in float64 then float32 (numpy's ``img_np / 255.0`` and
    ``torch.from_numpy(...)``), then ``(x - mean) / std`` per channel in float32."""
    grey = (grey_u8.to(torch.float64) / 255.0).to(torch.float32)
    rgb = grey.unsqueeze(-3).expand(*grey.shape[:-2], 3, *grey.shape[-2:])
    mean = torch.tensor(IMG_MEAN, dtype=torch.float32, device=grey.device)[:, None, None]
    std = torch.tensor(IMG_STD, dtype=torch.float32, device=grey.device)[:, None, None]
    return (rgb - mean) / std


def frame_tensor(slice_u8: np.ndarray, image_size: int) -> torch.Tensor:
    """One uint8 ``[H, W]`` slice -> normalised float32 ``[3, S, S]`` tensor, as SAM 2 loads a frame."""
    return normalise(torch.from_numpy(resized_u8(slice_u8, image_size)))


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

    def resized(self, indices: Sequence[int]) -> torch.Tensor:
        """The slices ``indices`` resized, as one uint8 ``[B, S, S]`` tensor in (pinnable) CPU memory."""
        return torch.from_numpy(np.stack([resized_u8(self.slices_u8[i], self.image_size) for i in indices]))

    def batch(self, indices: Sequence[int], device="cpu", resized: torch.Tensor | None = None) -> torch.Tensor:
        """Frames ``indices`` as float32 ``[B, 3, S, S]`` on ``device``: uint8 crosses to the device, the
        normalisation runs there. ``resized``: the slices already resized (made ahead by a prefetch)."""
        grey = self.resized(indices) if resized is None else resized
        if str(device) != "cpu":
            grey = grey.pin_memory().to(device, non_blocking=True)
        return normalise(grey)
