"""A tiny random ResShift teacher folder for the student-method tests (TAD-SR, TDDSR).

Pixel-unshuffle f4 latents (48 channels), a 2-level Swin-UNet with window 4 (LR sides multiples of
8, so 32 px HR crops work) and the 4-step schedule, so that a teacher target costs four tiny passes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from osdsr.diffusion.resshift import ResShiftScheduleConfig
from osdsr.models.resshift_sr import ResShiftModelConfig, build_resshift_sr_model, save_resshift_model
from osdsr.models.resshift_unet import SwinUNetConfig

TINY_TEACHER = ResShiftModelConfig(
    model_type="resshift",
    autoencoder="pixel_unshuffle",
    denoiser=SwinUNetConfig(
        latent_channels=48,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        swin_depth=1,
        swin_embed_dim=32,
        window_size=4,
        image_size=8,
    ),
    schedule=ResShiftScheduleConfig(num_timesteps=4, min_noise_level=0.2),
)


def save_tiny_teacher(folder: Path, seed: int = 0) -> Path:
    """Write a randomly initialised tiny teacher model folder and return it."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_resshift_sr_model(TINY_TEACHER)
    return save_resshift_model(folder, model)
