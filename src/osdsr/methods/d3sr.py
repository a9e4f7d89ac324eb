"""D3SR and DFOSD: a one-step SD generator trained against a discriminator on noised latents.

Generator loss (D3SR Eq. 8): ``MSE + lambda2 * perceptual + lambda1 * L_G`` with L_G the
non-saturating loss (Eq. 2) of the discriminator on ``F(z_H, t)``; discriminator loss Eq. 3 on
``F(E(x_HR), t)`` (real) and ``F(z_H, t)`` (fake), ``t ~ U[0, T]`` (Eq. 4). DFOSD is the same method
with a learnable prompt embedding (``generator.prompt_embedding: learnable``).

Ablations are config fields: ``loss.perceptual`` in {mse, lpips, ea-lpips, dists, ea-dists} and
``discriminator.kind`` in {none, cnn, diffusion-gan, sd21, sdxl}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from osdsr.losses.adversarial import ADVERSARIAL_LOSSES
from osdsr.losses.edges import sobel_magnitude
from osdsr.models.discriminators import LatentPatchDiscriminator
from osdsr.models.sd_generator import (
    LoRAConfig,
    SDGeneratorConfig,
    SDOneStepGenerator,
    SDSRModel,
    build_sd_generator,
    save_sd_model,
    upsample_lr,
)
from osdsr.train import DataConfig, TrainerConfig

DISCRIMINATOR_KINDS = ("none", "cnn", "diffusion-gan", "sd21", "sdxl")


@dataclass(frozen=True)
class LossConfig:
    mse_weight: float = 1.0
    perceptual: Literal["mse", "lpips", "ea-lpips", "dists", "ea-dists"] = "ea-dists"
    perceptual_weight: float = 1.0  # lambda2 (D3SR Eq. 8)
    vgg_weights: str | None = None  # torchvision VGG16 state dict (ImageNet), needed by lpips/dists
    head_weights: str | None = None  # official LPIPS linear heads / DISTS alpha-beta file
    allow_random_perceptual: bool = False  # tests only: random VGG instead of refusing to start
    edge_weight: float = 0.0  # optional L1 between Sobel maps (D3SR Eq. 6-7), for weight-free training
    adversarial: Literal["nonsaturating", "hinge"] = "nonsaturating"  # D3SR Eq. 2-3
    adversarial_weight: float = 0.5  # lambda1 (D3SR Eq. 8)


@dataclass(frozen=True)
class DiscriminatorConfig:
    kind: Literal["none", "cnn", "diffusion-gan", "sd21", "sdxl"] = "sd21"
    pretrained: str | None = None  # local diffusers folder (SD-2.1 or SDXL) for sd21 / sdxl
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    channels: int = 64  # cnn / diffusion-gan width
    num_layers: int = 3
    max_timestep: int = 999  # t ~ U[0, T] for the noised inputs (D3SR Eq. 4)
    lr: float = 5e-5


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2


@dataclass(frozen=True)
class D3SRConfig:
    method: Literal["d3sr", "dfosd"] = "d3sr"
    generator: SDGeneratorConfig = field(default_factory=SDGeneratorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)


def build_discriminator(config: DiscriminatorConfig, latent_channels: int) -> nn.Module | None:
    """The configured discriminator on latents of ``latent_channels`` (None for kind 'none')."""
    if config.kind == "none":
        return None
    if config.kind in ("cnn", "diffusion-gan"):
        return LatentPatchDiscriminator(
            latent_channels, config.channels, config.num_layers, time_conditioned=config.kind == "diffusion-gan"
        )
    from osdsr.models.nad_discriminator import build_nad_discriminator

    return build_nad_discriminator(config, latent_channels)


class D3SRMethod:
    """Builds the generator, discriminator and losses of D3SR / DFOSD for the one trainer."""

    def __init__(self, config: D3SRConfig) -> None:
        from osdsr.losses.perceptual import build_perceptual_loss

        self.config = config
        self.generator: SDOneStepGenerator = build_sd_generator(config.generator)
        latent_channels = self.generator.unet.config.in_channels
        self.discriminator = build_discriminator(config.discriminator, latent_channels)
        loss = config.loss
        self.perceptual = (
            None
            if loss.perceptual == "mse" or loss.perceptual_weight == 0
            else build_perceptual_loss(
                loss.perceptual,
                vgg_weights=loss.vgg_weights,
                head_weights=loss.head_weights,
                allow_random=loss.allow_random_perceptual,
            )
        )
        self.g_adv, self.d_adv = ADVERSARIAL_LOSSES[loss.adversarial]

    def optimizers(self, generator: nn.Module, discriminator: nn.Module | None) -> dict[str, torch.optim.Optimizer]:
        opt = self.config.optimizer
        trainable = [p for p in generator.parameters() if p.requires_grad]
        optimizers = {"generator": torch.optim.AdamW(trainable, opt.lr, opt.betas, weight_decay=opt.weight_decay)}
        if discriminator is not None:
            d_params = [p for p in discriminator.parameters() if p.requires_grad]
            optimizers["discriminator"] = torch.optim.AdamW(
                d_params, self.config.discriminator.lr, opt.betas, weight_decay=opt.weight_decay
            )
        return optimizers

    def _noised(self, z: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """F(z, t) with t ~ U[0, T] (D3SR Eq. 4); the plain CNN sees clean latents."""
        if self.config.discriminator.kind == "cnn":
            return z, torch.zeros(z.shape[0], device=z.device)
        t_max = self.config.discriminator.max_timestep
        t = torch.randint(0, t_max + 1, (z.shape[0],), generator=rng, device=z.device)
        noise = torch.randn(z.shape, generator=rng, device=z.device, dtype=z.dtype)
        return self.generator.schedule.add_noise(z, t, noise), t

    def generator_losses(
        self, batch: dict[str, torch.Tensor], generator: nn.Module, discriminator: nn.Module | None, rng: torch.Generator
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        loss = self.config.loss
        z_hr_pred, x_hr_pred = generator(upsample_lr(batch["lr"]))
        x_pred = (x_hr_pred + 1) / 2  # [0, 1], as the perceptual losses expect
        hr = batch["hr"]
        terms = {"mse": loss.mse_weight * F.mse_loss(x_pred, hr)}  # D3SR Eq. 8, spatial part
        if self.perceptual is not None:
            terms["perceptual"] = loss.perceptual_weight * self.perceptual(x_pred, hr)
        if loss.edge_weight:
            terms["edge"] = loss.edge_weight * F.l1_loss(sobel_magnitude(x_pred), sobel_magnitude(hr))
        if discriminator is not None and loss.adversarial_weight:
            discriminator.requires_grad_(False)
            z_noisy, t = self._noised(z_hr_pred, rng)
            terms["adversarial"] = loss.adversarial_weight * self.g_adv(discriminator(z_noisy, t))  # D3SR Eq. 2
            discriminator.requires_grad_(True)
            self._restore_frozen(discriminator)
        return terms, {"z_hr_pred": z_hr_pred.detach()}

    @staticmethod
    def _restore_frozen(discriminator: nn.Module) -> None:
        """Re-freeze a pretrained discriminator's base weights after the blanket requires_grad_(True)."""
        refreeze = getattr(discriminator, "refreeze", None) or getattr(
            getattr(discriminator, "module", None), "refreeze", None
        )
        if refreeze is not None:
            refreeze()

    def discriminator_losses(
        self, batch: dict[str, torch.Tensor], cache: dict[str, torch.Tensor], discriminator: nn.Module, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            z_real = self.generator.encode(batch["hr"] * 2 - 1)
        z_real_noisy, t_real = self._noised(z_real, rng)
        z_fake_noisy, t_fake = self._noised(cache["z_hr_pred"], rng)
        real_logits = discriminator(z_real_noisy, t_real)
        fake_logits = discriminator(z_fake_noisy, t_fake)
        return {"adversarial": self.d_adv(real_logits, fake_logits)}  # D3SR Eq. 3

    def sr_model(self, generator: nn.Module) -> SDSRModel:
        return SDSRModel(generator).eval()

    def export(self, generator: nn.Module, path: Path) -> Path:
        target = path.with_suffix(".safetensors") if self.config.generator.lora is not None else path
        return save_sd_model(generator, self.config.generator, target, model_type=self.config.method)
