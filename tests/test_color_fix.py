"""The colour fixes: the fast wavelet decomposition equals the textbook 2-D a-trous one."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from osdsr.color_fix import WAVELET_LEVELS, low_frequency, wavelet_color_fix


def atrous_low_band_2d(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """Reference: ``levels`` replicate-padded 3x3 binomial convolutions with dilation 2**level."""
    channels = image.shape[1]
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=image.dtype) / 16.0
    kernel = kernel.expand(channels, 1, 3, 3)
    for level in range(levels):
        dilation = 2**level
        padded = F.pad(image, (dilation,) * 4, mode="replicate")
        image = F.conv2d(padded, kernel, dilation=dilation, groups=channels)
    return image


def test_separable_low_band_equals_the_2d_convolution() -> None:
    image = torch.rand(2, 3, 45, 70, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(low_frequency(image), atrous_low_band_2d(image), rtol=0, atol=1e-12)


def test_wavelet_fix_keeps_content_detail_and_reference_colour() -> None:
    rng = torch.Generator().manual_seed(1)
    content = torch.rand(1, 3, 64, 64, generator=rng, dtype=torch.float64)
    reference = torch.rand(1, 3, 64, 64, generator=rng, dtype=torch.float64)
    fixed = wavelet_color_fix(content, reference)
    expected = content - atrous_low_band_2d(content) + atrous_low_band_2d(reference)
    torch.testing.assert_close(fixed, expected, rtol=0, atol=1e-12)
