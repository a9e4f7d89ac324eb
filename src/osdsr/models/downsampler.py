"""TDDSR's learnable downsampler G: a few convolutions mapping an HR image to an LR image (TDDSR Sec. 4.3).

The output is an area (box) downsample of the input plus a learned residual from a small strided CNN,
whose last convolution starts at zero: the downsampler begins as plain x``scale`` area downsampling
and learns the spatially varying part of the degradation from there. Images are in [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2


class LearnableDownsampler(nn.Module):
    """``forward(hr [B, C, H, W]) -> lr [B, C, H / scale, W / scale]`` for a power-of-two ``scale``."""

    def __init__(self, scale: int = 4, channels: int = 64, image_channels: int = 3) -> None:
        super().__init__()
        if scale < 2 or scale & (scale - 1):
            raise ValueError(f"downsampler: scale {scale} must be a power of two, at least 2")
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(image_channels, channels, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
        self.residual = nn.Sequential(*layers, nn.Conv2d(channels, image_channels, 3, padding=1))
        nn.init.zeros_(self.residual[-1].weight)
        nn.init.zeros_(self.residual[-1].bias)

    def forward(self, hr: torch.Tensor) -> torch.Tensor:
        height, width = hr.shape[-2:]
        if height % self.scale or width % self.scale:
            raise ValueError(f"downsampler input {height}x{width}: sides must be multiples of {self.scale}")
        return F.avg_pool2d(hr, self.scale) + self.residual(hr)
