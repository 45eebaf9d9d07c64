from typing import List

import numpy as np
import torch
import torch.nn.functional as F


class ToTensor:
    """HWC uint8 array -> CHW float in [0, 1], as torchvision's ToTensor."""

    def __call__(self, pic):
        t = torch.from_numpy(np.ascontiguousarray(pic))
        if t.ndim == 2:
            t = t[:, :, None]
        t = t.permute(2, 0, 1).contiguous()
        return t.float().div(255) if t.dtype == torch.uint8 else t.float()


class Resize(torch.nn.Module):
    """Bilinear with antialias, torchvision's tensor default."""

    def __init__(self, size: List[int]):
        super().__init__()
        self.size = [int(s) for s in size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batched = x.dim() == 4
        y = x if batched else x.unsqueeze(0)
        y = F.interpolate(y, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return y if batched else y.squeeze(0)


class Normalize(torch.nn.Module):
    def __init__(self, mean: List[float], std: List[float]):
        super().__init__()
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std
