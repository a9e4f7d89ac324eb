"""Stable Diffusion's DDPM noise schedule, as the one-step SD methods use it.

The cumulative products ``abar_t`` come from diffusers' ``DDPMScheduler`` built from the scheduler
config of the base model (``scheduler/scheduler_config.json`` in a diffusers folder), so the schedule
is exactly the one the base UNet was trained with. This module imports no network.
"""

from __future__ import annotations

from typing import Any

import torch

# Stable Diffusion 2.1(-base) scheduler settings, used when no base-model folder gives them.
SD21_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


class DDPMSchedule:
    """``abar_t`` of an SD-style DDPM, forward noising F(z, t) and the one-step clean-latent estimate."""

    def __init__(self, scheduler_config: dict[str, Any] | None = None) -> None:
        from diffusers import DDPMScheduler

        config = dict(SD21_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config)
        scheduler = DDPMScheduler.from_config(config)
        self.num_train_timesteps: int = scheduler.config.num_train_timesteps
        self.prediction_type: str = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"scheduler prediction_type {self.prediction_type!r} is not supported")
        self.alphas_cumprod: torch.Tensor = scheduler.alphas_cumprod.to(torch.float64)
        self.config = {k: scheduler.config[k] for k in SD21_SCHEDULER_CONFIG}

    @property
    def timesteps(self) -> torch.Tensor:
        return torch.arange(self.num_train_timesteps)

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod.to(like.device)[t.to(like.device).long()]
        return abar.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """F(z, t) = sqrt(abar_t) z + sqrt(1 - abar_t) eps  (D3SR Eq. 4)."""
        abar = self._abar(t, z)
        return abar.sqrt() * z + (1 - abar).sqrt() * noise

    def pred_x0(self, sample: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Clean latent from one network evaluation at step t.

        epsilon: z_H = (z_L - sqrt(1 - abar) eps) / sqrt(abar)   (D3SR Eq. 1)
        v:       z_H = sqrt(abar) z_L - sqrt(1 - abar) v
        """
        abar = self._abar(t, sample)
        if self.prediction_type == "epsilon":
            return (sample - (1 - abar).sqrt() * model_output) / abar.sqrt()
        if self.prediction_type == "v_prediction":
            return abar.sqrt() * sample - (1 - abar).sqrt() * model_output
        return model_output
