"""Stable Diffusion's DDPM noise schedule, as the one-step SD methods use it.

The cumulative products are those of diffusers' ``DDPMScheduler`` built from the scheduler config of
the base model (``scheduler/scheduler_config.json`` in a diffusers folder), so the schedule is exactly
the one the base UNet was trained with. The linear and scaled-linear beta schedules (SD's) are computed
here as diffusers computes them (same float32 operations, so the same values; a test compares), which
spares inference diffusers' import; other schedules are taken from diffusers. This module imports no
network.

Two step conventions meet here, and each function says which one it takes:

- **UNet index** ``i`` in ``[0, T-1]`` (diffusers): the UNet's timestep input, with
  ``abar = alphas_cumprod[i]``. The generator's fixed step ``T_L`` is a UNet index (D3SR Eq. 1,
  ``pred_x0``), as in every diffusers pipeline.
- **Diffusion step** ``t`` in ``[0, T]`` (the papers' notation, D3SR Sec. 3.1):
  ``abar_t = prod_{s=1..t} alpha_s``, so ``abar_0 = 1`` (the clean latent) and
  ``abar_t = alphas_cumprod[t - 1]`` for ``t >= 1``. The discriminators' inputs
  ``F(z, t)``, ``t ~ U[0, T]`` (D3SR Eq. 4) use this, because ``alphas_cumprod[0] = 0.99915`` is not
  clean: only ``t = 0`` returns ``z`` itself. A UNet sees step ``t`` as index ``max(t - 1, 0)``
  (``unet_index``): the clean step 0 shares index 0, the nearest one the UNet was trained on.
"""

from __future__ import annotations

from typing import Any

import torch

from osdsr.precision import exact_dtype

# Stable Diffusion 2.1(-base) scheduler settings, used when no base-model folder gives them.
SD21_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}

# diffusers' DDPMScheduler defaults of the fields above
DDPM_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}
NATIVE_BETA_SCHEDULES = ("linear", "scaled_linear")


def _alphas_cumprod(scheduler_config: dict[str, Any]) -> torch.Tensor:
    """float32 ``prod_{s<=i} (1 - beta_s)`` by UNet index, as ``DDPMScheduler(**config).alphas_cumprod``."""
    config = {**DDPM_DEFAULTS, **scheduler_config}
    if config["beta_schedule"] not in NATIVE_BETA_SCHEDULES or config.get("trained_betas") is not None or config.get(
        "rescale_betas_zero_snr", False
    ):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(dict(scheduler_config)).alphas_cumprod
    start, end, steps = config["beta_start"], config["beta_end"], config["num_train_timesteps"]
    if config["beta_schedule"] == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float32)
    else:  # scaled_linear: linear in sqrt(beta) (latent diffusion)
        betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class DDPMSchedule:
    """``abar`` of an SD-style DDPM, forward noising F(z, t) and the one-step clean-latent estimate."""

    def __init__(self, scheduler_config: dict[str, Any] | None = None) -> None:
        given = SD21_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config
        config = {**DDPM_DEFAULTS, **{k: v for k, v in given.items() if k in DDPM_DEFAULTS}}
        self.num_train_timesteps: int = config["num_train_timesteps"]
        self.prediction_type: str = config["prediction_type"]
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"scheduler prediction_type {self.prediction_type!r} is not supported")
        self.alphas_cumprod: torch.Tensor = _alphas_cumprod(given).to(torch.float64)  # by UNet index
        # by diffusion step t in [0, T]: abar_0 = 1 (empty product), abar_t = alphas_cumprod[t - 1]
        self.abar_by_step: torch.Tensor = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        self.config = {k: config[k] for k in SD21_SCHEDULER_CONFIG}

    @property
    def timesteps(self) -> torch.Tensor:
        """The UNet indices ``0 .. T-1``."""
        return torch.arange(self.num_train_timesteps)

    @staticmethod
    def _gather(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        values = table.to(exact_dtype(like.device)).to(like.device)[t.to(like.device).long()]
        return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def unet_index(self, t: torch.Tensor) -> torch.Tensor:
        """The UNet timestep input for diffusion step ``t`` in ``[0, T]``: ``max(t - 1, 0)``."""
        return (t.long() - 1).clamp(min=0)

    def add_noise(self, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """F(z, t) = sqrt(abar_t) z + sqrt(1 - abar_t) eps, diffusion step t in [0, T]  (D3SR Eq. 4).

        ``t = 0`` returns ``z`` exactly.
        """
        if int(t.min()) < 0 or int(t.max()) > self.num_train_timesteps:
            raise ValueError(f"diffusion step t must be in [0, {self.num_train_timesteps}], got {t.tolist()}")
        abar = self._gather(self.abar_by_step, t, z)
        return abar.sqrt() * z + (1 - abar).sqrt() * noise

    def pred_x0(self, sample: torch.Tensor, model_output: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Clean latent from one network evaluation at UNet index ``index`` (abar = alphas_cumprod[index]).

        epsilon: z_H = (z_L - sqrt(1 - abar) eps) / sqrt(abar)   (D3SR Eq. 1)
        v:       z_H = sqrt(abar) z_L - sqrt(1 - abar) v
        """
        abar = self._gather(self.alphas_cumprod, index, sample)
        if self.prediction_type == "epsilon":
            return (sample - (1 - abar).sqrt() * model_output) / abar.sqrt()
        if self.prediction_type == "v_prediction":
            return abar.sqrt() * sample - (1 - abar).sqrt() * model_output
        return model_output
