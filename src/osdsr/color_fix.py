"""Colour correction of a super-resolved image against a reference (the bicubic upsample of its LR).

One-step diffusion models can shift colours; both fixes keep the model's detail and take the colour
from the reference:
- ``wavelet``: keep the high frequencies of the output, take the low frequencies of the reference
  (an a-trous decomposition with a dilated 3x3 binomial blur; a local operator, so it runs per tile);
- ``adain``: match each channel's mean and standard deviation to the reference's (global statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("wavelet", "adain", "none")
WAVELET_LEVELS = 5  # blur dilations 1, 2, 4, 8, 16: the low band spans a radius of 31 pixels
BINOMIAL_3X3 = ((1.0, 2.0, 1.0), (2.0, 4.0, 2.0), (1.0, 2.0, 1.0))  # divided by 16
STD_EPSILON = 1e-6  # keeps the AdaIN ratio finite on flat channels


def low_frequency(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """The coarsest band of an a-trous wavelet decomposition: ``levels`` dilated binomial blurs."""
    channels = image.shape[1]
    kernel = torch.tensor(BINOMIAL_3X3, dtype=image.dtype, device=image.device) / 16.0
    kernel = kernel.expand(channels, 1, 3, 3)
    for level in range(levels):
        dilation = 2**level
        padded = F.pad(image, (dilation,) * 4, mode="replicate")
        image = F.conv2d(padded, kernel, dilation=dilation, groups=channels)
    return image


def wavelet_color_fix(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``content`` plus low frequencies of ``reference`` (same shape)."""
    return content - low_frequency(content) + low_frequency(reference)


def channel_statistics(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel (mean, std) over the spatial dimensions, each ``[B, C, 1, 1]``."""
    var, mean = torch.var_mean(image.float(), dim=(2, 3), keepdim=True, correction=0)
    return mean, var.sqrt()


def adain_color_fix_(
    content: torch.Tensor, reference_stats: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """In place: give each channel of ``content`` the reference's mean and std (AdaIN)."""
    mean, std = channel_statistics(content)
    reference_mean, reference_std = reference_stats
    return content.sub_(mean).mul_(reference_std / (std + STD_EPSILON)).add_(reference_mean)
