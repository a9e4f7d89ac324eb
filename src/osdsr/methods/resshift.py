"""ResShift teacher training: a Swin-UNet denoiser that predicts z_0 in a frozen f4 latent space.

One step of the objective (TAD-SR Eq. 1 and 4, as in the official ResShift release): draw a step
index t uniformly from [0, T-1] (the paper's t = 1..T), shift and noise the HR latent towards the
LR latent, ``z_t = z_0 + eta_t (y - z_0) + kappa sqrt(eta_t) eps``, and regress the denoiser's
prediction ``f(z_t / sqrt(kappa^2 eta_t + 1), t, LR)`` onto ``z_0`` with a per-sample mean squared
error. The release trains with the weight ``w_t`` of Eq. 4 off (``weighted_mse: False``, "omitting
this weight often leads to performance improvement"); ``loss.weighted_mse`` switches it on.

The autoencoder is frozen: the official VQGAN-f4, whose weights come from a ResShift model folder
(``autoencoder_path``, e.g. written by ``osdsr convert resshift``), or the parameter-free
pixel-unshuffle f4 space of small CPU models. The exported model folder (``"model_type":
"resshift"``) samples with ``osdsr upscale --model DIR --steps 15``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from osdsr.config import ranged
from osdsr.diffusion.resshift import ResShiftSchedule, ResShiftScheduleConfig
from osdsr.methods.resshift_family import draw_prior_noise, encode_hr, encode_lr
from osdsr.models.autoencoders import VQAutoencoderConfig
from osdsr.models.resshift_sr import (
    CONFIG_FILE,
    TEACHER_TYPE,
    WEIGHTS_FILE,
    ResShiftModelConfig,
    ResShiftSR,
    build_autoencoder,
    read_resshift_config,
    save_resshift_model,
)
from osdsr.models.resshift_unet import SwinUNet, SwinUNetConfig
from osdsr.train import DataConfig, Outputs, TrainerConfig
from osdsr.weights_io import load_weights, read_safetensors

AUTOENCODER_PREFIX = "autoencoder."


@dataclass(frozen=True)
class ResShiftLossConfig:
    weighted_mse: bool = False  # w_t = alpha_t / (2 kappa^2 eta_t eta_{t-1}) of TAD-SR Eq. 4 (release: off)


@dataclass(frozen=True)
class ResShiftOptimizerConfig:
    """AdamW; the release: lr 5e-5, weight decay 0 (batch 64, 500k iterations, EMA 0.999)."""

    lr: float = ranged(5e-5, "[0, 1]")
    betas: tuple[float, float] = ranged((0.9, 0.999), "[0, 1)")
    weight_decay: float = ranged(0.0, "[0, 1]")
    warmup_steps: int = ranged(0, "[0, inf)")  # linear warm-up of the lr (trainer steps)


@dataclass(frozen=True)
class ResShiftTrainConfig:
    """Teacher training; the model defaults are the official x4 real-SR release (VQ-f4, 15 steps)."""

    method: Literal["resshift"] = "resshift"
    autoencoder: VQAutoencoderConfig | Literal["pixel_unshuffle"] = field(default_factory=VQAutoencoderConfig)
    autoencoder_path: str | None = None  # vq_f4: a ResShift model folder whose autoencoder.* weights are used
    denoiser: SwinUNetConfig = field(default_factory=SwinUNetConfig)
    schedule: ResShiftScheduleConfig = field(default_factory=ResShiftScheduleConfig)
    loss: ResShiftLossConfig = field(default_factory=ResShiftLossConfig)
    optimizer: ResShiftOptimizerConfig = field(default_factory=ResShiftOptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def model_config(self) -> ResShiftModelConfig:
        """The config of the model folder this run exports."""
        return ResShiftModelConfig(
            model_type=TEACHER_TYPE, autoencoder=self.autoencoder, denoiser=self.denoiser, schedule=self.schedule
        )


def load_frozen_autoencoder(config: ResShiftModelConfig, path: str | None) -> nn.Module:
    """The config's autoencoder, frozen; VQ-f4 weights are read from the model folder ``path``."""
    autoencoder = build_autoencoder(config)
    if config.autoencoder_name == "vq_f4":
        if path is None:
            raise ValueError(
                "autoencoder_path is not set: the vq_f4 autoencoder needs its weights; point it at a ResShift "
                "model folder (osdsr convert resshift ... --autoencoder autoencoder_vq_f4.pth) or use "
                "autoencoder: pixel_unshuffle"
            )
        folder = Path(path)
        if not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"autoencoder_path {folder}: no {WEIGHTS_FILE} there; give a ResShift model folder")
        config_file = folder / CONFIG_FILE
        if config_file.is_file() and read_resshift_config(config_file).autoencoder != config.autoencoder:
            raise ValueError(f"autoencoder_path {folder}: its autoencoder settings differ from this config's")
        state, _ = read_safetensors(folder / WEIGHTS_FILE)
        weights = {k[len(AUTOENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(AUTOENCODER_PREFIX)}
        load_weights(autoencoder, weights, str(folder / WEIGHTS_FILE))
    elif path is not None:
        raise ValueError("autoencoder_path is set, but the pixel_unshuffle autoencoder has no weights; remove it")
    autoencoder.requires_grad_(False)
    return autoencoder.eval()


def mse_loss_weights(schedule: ResShiftSchedule) -> torch.Tensor:
    """w_t = alpha_t / (2 kappa^2 eta_t eta_{t-1}) per step (TAD-SR Eq. 4), float64.

    At t = 1 (eta_0 = 0) the weight is infinite; like the release, that step borrows the posterior
    variance of t = 2: w = 0.5 / var_clipped * (alpha_t / eta_t)^2 with var_1 := var_2.
    """
    variance = schedule.kappa**2 * schedule.etas_prev / schedule.etas * schedule.alphas
    variance_clipped = torch.cat([variance[1:2], variance[1:]])
    return 0.5 / variance_clipped * (schedule.alphas / schedule.etas) ** 2


class ResShiftMethod:
    """Builds the denoiser (the trained "generator") and the frozen autoencoder of the teacher."""

    discriminator = None

    def __init__(self, config: ResShiftTrainConfig, autoencoder: nn.Module | None = None) -> None:
        """``autoencoder``: a prebuilt frozen one (e.g. on ``meta`` for memory estimates) instead of
        ``config.autoencoder_path``'s."""
        self.config = config
        self.model_config = config.model_config()
        self.autoencoder = (
            autoencoder if autoencoder is not None else load_frozen_autoencoder(self.model_config, config.autoencoder_path)
        )
        self.generator = SwinUNet(config.denoiser)
        self.generator.gradient_checkpointing = config.trainer.gradient_checkpointing
        self.schedule = ResShiftSchedule.from_config(config.schedule)
        self.loss_weights = mse_loss_weights(self.schedule).float() if config.loss.weighted_mse else None
        self.warmup_steps = {"generator": config.optimizer.warmup_steps}

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.autoencoder}

    def optimizers(self, generator: nn.Module, discriminator: nn.Module | None) -> dict[str, torch.optim.Optimizer]:
        opt = self.config.optimizer
        params = [p for p in generator.parameters() if p.requires_grad]
        return {"generator": torch.optim.AdamW(params, opt.lr, opt.betas, weight_decay=opt.weight_decay)}

    def generator_outputs(self, batch: dict[str, torch.Tensor], generator: nn.Module, rng: torch.Generator) -> Outputs:
        """The denoiser's z0 prediction at a random step t, the HR latent z0 and t."""
        y, lr_cond = encode_lr(self.autoencoder, batch["lr"])
        z0 = encode_hr(self.autoencoder, batch["hr"])
        t = torch.randint(0, self.schedule.num_timesteps, (z0.shape[0],), generator=rng, device=rng.device)
        t = t.to(z0.device)
        noise = draw_prior_noise(z0, rng)
        z_t = self.schedule.q_sample(z0, y, t, noise)  # TAD-SR Eq. 1
        return {"z0_pred": generator(self.schedule.scale_input(z_t, t), t, lr_cond), "z0": z0, "t": t}

    def generator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module | None, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        per_sample = (outputs["z0_pred"] - outputs["z0"]).pow(2).flatten(1).mean(dim=1)  # TAD-SR Eq. 4, mean over C, H, W
        if self.loss_weights is not None:
            per_sample = per_sample * self.loss_weights.to(per_sample.device)[outputs["t"]]
        return {"mse": per_sample.mean()}

    def discriminator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        raise RuntimeError("ResShift teacher training has no discriminator")

    def sr_model(self, generator: nn.Module) -> ResShiftSR:
        return ResShiftSR(self.model_config, generator, self.autoencoder).eval()

    def export(self, generator: nn.Module, path: Path) -> Path:
        return save_resshift_model(path, self.sr_model(generator), overwrite=True)
