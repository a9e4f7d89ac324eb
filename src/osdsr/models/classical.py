"""Classical x4 baselines (bicubic, Lanczos-3) served through the same SR-model contract and pipeline.

The "latent" of these models is the LR image itself (``latent_stride`` = ``scale`` = 4, identity
``encode`` and ``denoise``); ``decode`` interpolates it x4. Keeping the latent at LR size keeps the
tiled pipeline's intermediate canvases small, and both interpolations are local operators (4 and 6
LR pixels wide), so tiling with a few pixels of overlap reproduces the untiled result.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

SCALE = 4
LANCZOS_A = 3  # Lanczos-3: the windowed-sinc kernel is nonzero on (-3, 3)


def bicubic_upsample(image: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """PyTorch bicubic (a = -0.75, pixel-centre aligned, edge samples clamped)."""
    return F.interpolate(image, scale_factor=scale, mode="bicubic", align_corners=False)


def lanczos_kernel(t: torch.Tensor, a: int = LANCZOS_A) -> torch.Tensor:
    """``sinc(t) * sinc(t / a)`` on ``|t| < a``, zero outside (``torch.sinc`` is the normalised sinc)."""
    return torch.where(t.abs() < a, torch.sinc(t) * torch.sinc(t / a), torch.zeros_like(t))


def lanczos_phase_weights(scale: int = SCALE, a: int = LANCZOS_A) -> torch.Tensor:
    """``[scale, 2a + 1]`` tap weights: output sample ``scale * i + p`` reads inputs ``i - a .. i + a``.

    With pixel-centre alignment, output sample ``scale * i + p`` sits at input coordinate
    ``i + (p + 0.5) / scale - 0.5``; each row of taps is normalised to sum to one.
    """
    offsets = (torch.arange(scale, dtype=torch.float64) + 0.5) / scale - 0.5
    taps = torch.arange(-a, a + 1, dtype=torch.float64)
    weights = lanczos_kernel(offsets[:, None] - taps[None, :], a)
    return weights / weights.sum(dim=1, keepdim=True)


def lanczos_upsample(image: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Separable Lanczos-3 upsampling (edge samples replicated): rows first, then columns."""
    batch, channels, height, width = image.shape
    weight = lanczos_phase_weights(scale).to(image.dtype).to(image.device)  # cast first: mps has no float64
    planes = image.reshape(batch * channels, 1, height, width)
    planes = _upsample_last_axis(planes, weight)
    planes = _upsample_last_axis(planes.transpose(2, 3), weight).transpose(2, 3)
    return planes.reshape(batch, channels, height * scale, width * scale)


def _upsample_last_axis(planes: torch.Tensor, phase_weights: torch.Tensor) -> torch.Tensor:
    """``[N, 1, H, W]`` -> ``[N, 1, H, W * scale]``: one 1-D convolution per phase, then interleave."""
    n, _, height, width = planes.shape
    scale, taps = phase_weights.shape
    padded = F.pad(planes, (taps // 2, taps // 2, 0, 0), mode="replicate")
    phases = F.conv2d(padded, phase_weights[:, None, None, :])  # [N, scale, H, W]
    return phases.permute(0, 2, 3, 1).reshape(n, 1, height, width * scale)


CLASSICAL_INTERPOLATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bicubic": bicubic_upsample,
    "lanczos": lanczos_upsample,
}


class ClassicalUpsampler(nn.Module):
    """Identity encode/denoise on the LR-sized latent; ``decode`` interpolates x4 and clips to [0, 1]."""

    scale = SCALE
    latent_stride = SCALE
    lr_multiple = 1
    noise_channels = 0

    def __init__(self, method: str) -> None:
        super().__init__()
        if method not in CLASSICAL_INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {method!r}; choose one of {sorted(CLASSICAL_INTERPOLATIONS)}")
        self.method = method

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        return lr

    def denoise(self, condition: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return condition

    def decode(self, z_hr: torch.Tensor) -> torch.Tensor:
        return CLASSICAL_INTERPOLATIONS[self.method](z_hr).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, scale={self.scale}"
