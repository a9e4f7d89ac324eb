"""The contract between a super-resolution model and the one inference pipeline.

Every method (the classical baselines, D3SR/DFOSD, the ResShift teacher, TAD-SR/TDDSR/SinSR students,
the embedded default model) is served to ``osdsr.inference`` as an object with this shape. The
pipeline pads, tiles and blends; the model only maps tensors.

Conventions:
- images are float tensors ``[B, C, H, W]`` in ``[0, 1]`` with C = 3 (the pipeline converts gray to RGB
  and handles alpha separately);
- ``encode`` maps the LR image to a *condition* tensor on the latent grid: its spatial size is
  ``lr_size * scale // latent_stride``;
- ``noise_channels`` > 0 means ``denoise`` takes a noise tensor of that many channels on the latent
  grid; the pipeline draws it once for the whole image (from the caller's generator) and tiles it
  with the condition, so tiled and untiled runs see the same noise;
- ``denoise`` maps (condition, noise) to the clean latent ``z_H`` on the same grid;
- ``decode`` maps ``z_H`` to the HR image in ``[0, 1]``.
All three must be local operators (finite receptive field) so that overlapped tiles blend seamlessly.
"""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class SRModel(Protocol):
    scale: int  # HR pixels per LR pixel (4)
    latent_stride: int  # HR pixels per latent pixel (8 for the SD VAE, 4 for VQ-f4 / pixel-unshuffle, 1 for pixels)
    lr_multiple: int  # LR height and width must be multiples of this (the pipeline pads, then crops back)
    noise_channels: int  # channels of the noise tensor ``denoise`` takes (0: deterministic)

    def encode(self, lr: torch.Tensor) -> torch.Tensor: ...

    def denoise(self, condition: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor: ...

    def decode(self, z_hr: torch.Tensor) -> torch.Tensor: ...

    def to(self, *args, **kwargs): ...  # noqa: D102 - device / dtype move like nn.Module


def at_strength(model: SRModel, strength: float | None) -> SRModel:
    """``model`` with its strength control at ``strength`` (a shallow copy sharing the weights; 0 = fidelity,
    1 = the most detail), or ``model`` itself when it has no strength control or ``strength`` is None."""
    if strength is None or getattr(model, "strength", None) is None:
        return model
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1] (0 = faithful, 1 = most detail), got {strength}")
    moved = copy.copy(model)
    moved.strength = float(strength)
    return moved
