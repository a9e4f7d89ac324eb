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

WAVELET_LEVELS = 5  # blur dilations 1, 2, 4, 8, 16: the low band spans a radius of 31 pixels
STD_EPSILON = 1e-6  # keeps the AdaIN ratio finite on flat channels


def _binomial_sum_1d(image: torch.Tensor, dilation: int, dim: int) -> torch.Tensor:
    """[1, 2, 1] along ``dim`` with taps ``dilation`` apart (4x the binomial blur), on an image padded by ``dilation``."""
    length = image.shape[dim] - 2 * dilation
    left, centre, right = (image.narrow(dim, start, length) for start in (0, dilation, 2 * dilation))
    return (left + right).add_(centre, alpha=2.0)


def low_frequency(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """The coarsest band of an a-trous wavelet decomposition: ``levels`` dilated binomial blurs.

    The 3x3 binomial kernel is separable, so each blur is two shifted sums (rows, then columns) of
    the replicate-padded image: the same result as the 2-D convolution at a fraction of its cost.
    The kernels' 1/4 factors are applied once at the end: scaling by a power of two is exact in
    floating point, so this is the same result as scaling each blur, with two passes fewer per level.
    """
    if levels == 0:
        return image
    for level in range(levels):
        dilation = 2**level
        padded = F.pad(image, (dilation,) * 4, mode="replicate")
        image = _binomial_sum_1d(_binomial_sum_1d(padded, dilation, dim=-1), dilation, dim=-2)
    return image.mul_(0.25 ** (2 * levels))


def wavelet_color_fix(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``content`` plus low frequencies of ``reference`` (same shape).

    ``content - low(content) + low(reference)`` computed as ``content + low(reference - content)``:
    the blur is linear, so one decomposition does.
    """
    return content + low_frequency(reference - content)


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
