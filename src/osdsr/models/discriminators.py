"""Small discriminators trained from scratch, and the timestep FiLM block they share.

- ``LatentPatchDiscriminator(time_conditioned=False)``: a plain patch CNN (the "cnn" ablation of D3SR
  Table 6).
- ``LatentPatchDiscriminator(time_conditioned=True)``: a Diffusion-GAN-style discriminator, a small
  CNN on noised latents modulated by the diffusion step (the "diffusion-gan" ablation).
Both return one realism logit per latent patch, ``[B, 1, h', w']``. The large pretrained
noise-aware discriminator (SD-2.1 / SDXL encoder) lives in ``nad_discriminator.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) steps ``t`` ``[B]`` -> ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class TimeFiLM(nn.Module):
    """Feature-wise modulation by the step: ``Norm(F) * (1 + gamma(t)) + beta(t)`` (TAD-SR Sec. 3.3)."""

    def __init__(self, channels: int, embed_dim: int = 128, groups: int = 8) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.norm = nn.GroupNorm(min(groups, channels), channels, affine=False)
        self.to_scale_shift = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, 2 * channels))
        nn.init.zeros_(self.to_scale_shift[-1].weight)
        nn.init.zeros_(self.to_scale_shift[-1].bias)

    def forward(self, features: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.to_scale_shift(timestep_embedding(t, self.embed_dim)).to(features.dtype).chunk(2, dim=1)
        return self.norm(features) * (1 + gamma[..., None, None]) + beta[..., None, None]


class LatentPatchDiscriminator(nn.Module):
    """Strided conv stack -> per-patch logits; optionally FiLM-modulated by the diffusion step."""

    def __init__(self, in_channels: int, channels: int = 64, num_layers: int = 3, time_conditioned: bool = False) -> None:
        super().__init__()
        self.time_conditioned = time_conditioned
        self.convs = nn.ModuleList()
        self.films = nn.ModuleList()
        width = in_channels
        for i in range(num_layers):
            out = channels * 2 ** min(i, 2)
            self.convs.append(nn.Conv2d(width, out, 3, stride=2 if i > 0 else 1, padding=1))
            self.films.append(TimeFiLM(out) if time_conditioned else nn.GroupNorm(min(8, out), out))
            width = out
        self.head = nn.Conv2d(width, 1, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        x = z
        for conv, norm in zip(self.convs, self.films):
            x = conv(x)
            x = norm(x, t) if self.time_conditioned else norm(x)
            x = self.act(x)
        return self.head(x)
