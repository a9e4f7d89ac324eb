"""D3SR and DFOSD: a one-step SD generator trained against a discriminator on noised latents.

Generator loss (D3SR Eq. 8): ``MSE + lambda2 * perceptual + lambda1 * L_G`` with L_G the
non-saturating loss (Eq. 2) of the discriminator on ``F(z_H, t)``; discriminator loss Eq. 3 on
``F(E(x_HR), t)`` (real) and ``F(z_H, t)`` (fake), ``t ~ U[0, T]`` (Eq. 4) in diffusion steps, where
``t = 0`` is the clean latent (``osdsr.diffusion.ddpm``); time-conditioned discriminators see ``t`` as a
UNet index. DFOSD is the same method with a learnable prompt embedding
(``generator.prompt_embedding: learnable``).

Only LoRA adapters, the prompt embedding (DFOSD) and the discriminator's trainable part (LoRA + head
for the pretrained NAD, everything for the small ones) are trained; frozen base weights stay frozen.

Ablations are config fields: ``loss.perceptual`` in {mse, lpips, ea-lpips, dists, ea-dists} and
``discriminator.kind`` in {none, cnn, diffusion-gan, sd21, sdxl}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from osdsr.config import ranged
from osdsr.losses.adversarial import ADVERSARIAL_LOSSES
from osdsr.losses.edges import sobel_magnitude
from osdsr.losses.lattice import lattice_loss
from osdsr.models.discriminators import LatentPatchDiscriminator
from osdsr.models.nad_discriminator import NoiseAwareDiscriminator
from osdsr.models.sd_generator import (
    LoRAConfig,
    SDGeneratorConfig,
    SDOneStepGenerator,
    SDSRModel,
    build_sd_generator,
    save_sd_model,
    upsample_lr,
)
from osdsr.train import FROZEN_DTYPES, DataConfig, Outputs, TrainerConfig

RGB_CHANNELS = 3
NAD_HEAD_CHANNELS = 512  # hidden width of the NAD head in configs/d3sr.yaml and configs/dfosd.yaml


@dataclass(frozen=True)
class LossConfig:
    mse_weight: float = ranged(1.0, "[0, inf)")
    perceptual: Literal["mse", "lpips", "ea-lpips", "dists", "ea-dists"] = "ea-dists"
    perceptual_weight: float = ranged(1.0, "[0, inf)")  # lambda2 (D3SR Eq. 8)
    vgg_weights: str | None = None  # torchvision VGG16 state dict (ImageNet), needed by lpips/dists
    head_weights: str | None = None  # official LPIPS linear heads / DISTS alpha-beta file
    allow_random_perceptual: bool = False  # tests only: random VGG instead of refusing to start
    edge_weight: float = ranged(0.0, "[0, inf)")  # optional L1 between Sobel maps (D3SR Eq. 6-7), for weight-free training
    lattice_weight: float = ranged(0.0, "[0, inf)")  # optional penalty on the error pattern with the latent grid's period
    # distillation: the pixel terms (MSE, edge, lattice) also against a teacher's output (data.teacher);
    # with a strength control, image b weighs the ground truth by (1 - s_b) and the teacher by s_b * this
    teacher_weight: float = ranged(0.0, "[0, inf)")
    extreme_strength_prob: float = ranged(0.5, "[0, 1]")  # strength control: s in {0, 1} this often, else U(0, 1)
    adversarial: Literal["nonsaturating", "hinge"] = "nonsaturating"  # D3SR Eq. 2-3
    adversarial_weight: float = ranged(0.5, "[0, inf)")  # lambda1 (D3SR Eq. 8)


@dataclass(frozen=True)
class DiscriminatorConfig:
    kind: Literal["none", "cnn", "diffusion-gan", "sd21", "sdxl"] = "sd21"
    pretrained: str | None = None  # local diffusers folder (SD-2.1 or SDXL) for sd21 / sdxl
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # sd21 / sdxl: LoRA on the frozen UNet encoder
    prompt_embedding: Literal["fixed", "learnable"] = "fixed"  # sd21 / sdxl: null prompt, zeros or trained
    channels: int = ranged(64, "[1, inf)")  # cnn / diffusion-gan width; sd21 / sdxl: hidden width of the MLP head
    num_layers: int = ranged(3, "[1, inf)")  # cnn / diffusion-gan
    max_timestep: int = ranged(999, "[0, inf)")  # T of t ~ U[0, T], diffusion steps with t = 0 clean (D3SR Eq. 4)
    lr: float = ranged(5e-5, "[0, 1]")
    warmup_steps: int = ranged(0, "[0, inf)")  # linear warm-up of the discriminator's lr (trainer steps)


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = ranged(5e-5, "[0, 1]")
    betas: tuple[float, float] = ranged((0.9, 0.999), "[0, 1)")
    weight_decay: float = ranged(1e-2, "[0, 1]")
    warmup_steps: int = ranged(0, "[0, inf)")  # linear warm-up of the generator's lr (trainer steps)


@dataclass(frozen=True)
class D3SRConfig:
    method: Literal["d3sr", "dfosd"] = "d3sr"
    generator: SDGeneratorConfig = field(default_factory=SDGeneratorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)


def build_discriminator(
    config: DiscriminatorConfig,
    latent_channels: int,
    random_init: bool = False,
    frozen_dtype: torch.dtype | None = None,
) -> nn.Module | None:
    """The configured discriminator (None for kind 'none').

    The plain CNN judges RGB images (pixel space, as in D3SR Table 6); the others judge noised
    latents of ``latent_channels``. ``random_init``: a NAD without ``pretrained`` is the full-size
    architecture with random weights (memory estimates) instead of an error. ``frozen_dtype``: the
    dtype a NAD reads its pretrained UNet in.
    """
    if config.kind == "none":
        return None
    if config.kind == "cnn":
        return LatentPatchDiscriminator(RGB_CHANNELS, config.channels, config.num_layers, time_conditioned=False)
    if config.kind == "diffusion-gan":
        return LatentPatchDiscriminator(latent_channels, config.channels, config.num_layers, time_conditioned=True)
    from osdsr.models.nad_discriminator import build_nad_discriminator

    return build_nad_discriminator(config, latent_channels, random_init=random_init, frozen_dtype=frozen_dtype)


ComplexityParts = dict[str, tuple[nn.Module, Callable[[], tuple[torch.Tensor, ...]]]]


def discriminator_complexity_parts(size: int) -> dict[str, ComplexityParts]:
    """The full-size NADs of the papers (SD-2.1: DFOSD / D3SR Table 6; SDXL: D3SR) as parts on ``meta``,
    with the head width of ``configs/d3sr.yaml``, for ``osdsr complexity --train``."""
    from osdsr.models.nad_discriminator import nad_complexity_parts

    configs = {kind: DiscriminatorConfig(kind=kind, channels=NAD_HEAD_CHANNELS) for kind in ("sd21", "sdxl")}
    return {f"discriminator {kind} (NAD)": nad_complexity_parts(config, size) for kind, config in configs.items()}


class D3SRMethod:
    """Builds the generator, discriminator and losses of D3SR / DFOSD for the one trainer."""

    def __init__(self, config: D3SRConfig, random_init: bool = False) -> None:
        """``random_init``: a NAD without ``discriminator.pretrained`` gets random full-size weights
        (for memory estimates on fake tensors, ``osdsr.memory``) instead of an error."""
        from osdsr.losses.perceptual import build_perceptual_loss

        self.config = config
        base = config.generator.pretrained
        if base is not None and not Path(base).is_dir():
            raise FileNotFoundError(
                f"generator.pretrained {base}: no such folder; set it to a local diffusers folder of "
                "SD-2.1-base with --set generator.pretrained=DIR"
            )
        # under mixed precision the frozen SD / SDXL weights are read in the trainer's frozen dtype
        frozen_dtype = FROZEN_DTYPES.get(config.trainer.mixed_precision)
        self.generator: SDOneStepGenerator = build_sd_generator(config.generator, frozen_dtype=frozen_dtype)
        latent_channels = self.generator.unet.config.in_channels
        schedule_steps = self.generator.schedule.num_train_timesteps
        if not 0 <= config.discriminator.max_timestep <= schedule_steps:
            raise ValueError(
                f"discriminator.max_timestep {config.discriminator.max_timestep} must be in [0, {schedule_steps}]"
            )
        self.discriminator = build_discriminator(config.discriminator, latent_channels, random_init, frozen_dtype)
        if config.trainer.gradient_checkpointing:
            self.generator.enable_gradient_checkpointing()
            if isinstance(self.discriminator, NoiseAwareDiscriminator):
                self.discriminator.enable_gradient_checkpointing()
        self.warmup_steps = {"generator": config.optimizer.warmup_steps, "discriminator": config.discriminator.warmup_steps}
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

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"perceptual": self.perceptual} if self.perceptual is not None else {}

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
        """F(z, t) with t ~ U[0, T] (D3SR Eq. 4), and the UNet index of t."""
        t_max = self.config.discriminator.max_timestep
        t = torch.randint(0, t_max + 1, (z.shape[0],), generator=rng, device=z.device)
        noise = torch.randn(z.shape, generator=rng, device=z.device, dtype=z.dtype)
        schedule = self.generator.schedule
        return schedule.add_noise(z, t, noise), schedule.unet_index(t)


    def _strengths(self, batch_size: int, rng: torch.Generator) -> torch.Tensor | None:
        """Per-image strengths of a strength-controlled generator: 0 or 1 (``extreme_strength_prob``), else U(0, 1)."""
        if self.generator.strength_timesteps is None:
            return None
        uniform = torch.rand(batch_size, generator=rng, device=rng.device)
        extreme = torch.rand(batch_size, generator=rng, device=rng.device) < self.config.loss.extreme_strength_prob
        ends = (torch.rand(batch_size, generator=rng, device=rng.device) < 0.5).float()
        return torch.where(extreme, ends, uniform)

    def generator_outputs(self, batch: dict[str, torch.Tensor], generator: nn.Module, rng: torch.Generator) -> Outputs:
        strength = self._strengths(batch["lr"].shape[0], rng)
        z_hr_pred, x_hr_pred = generator(upsample_lr(batch["lr"]), strength)
        outputs = {"z_hr_pred": z_hr_pred, "x_hr_pred": x_hr_pred}
        return outputs if strength is None else {**outputs, "strength": strength}

    def _pixel_terms(
        self, x_pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """The weighted pixel terms: MSE, Sobel-edge L1 (D3SR Eq. 6-7), lattice; batch means, or with
        ``weight`` ([B]) the mean of each image's term times its weight."""
        loss = self.config.loss

        def mean(per_element: torch.Tensor) -> torch.Tensor:
            return per_element.mean() if weight is None else (weight * per_element.flatten(1).mean(1)).mean()

        terms = {"mse": loss.mse_weight * mean((x_pred - target).pow(2))}
        if loss.edge_weight:
            terms["edge"] = loss.edge_weight * mean((sobel_magnitude(x_pred) - sobel_magnitude(target)).abs())
        if loss.lattice_weight:
            stride = self.generator.latent_stride
            if weight is None:
                terms["lattice"] = loss.lattice_weight * lattice_loss(x_pred, target, period=stride)
            else:
                per_image = [lattice_loss(x_pred[b : b + 1], target[b : b + 1], period=stride) for b in range(len(x_pred))]
                terms["lattice"] = loss.lattice_weight * (weight * torch.stack(per_image)).mean()
        return terms

    def generator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module | None, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        loss = self.config.loss
        z_hr_pred, x_hr_pred = outputs["z_hr_pred"], outputs["x_hr_pred"]
        x_pred = (x_hr_pred + 1) / 2  # [0, 1], as the perceptual losses expect
        hr = batch["hr"]
        strength = outputs.get("strength")
        # D3SR Eq. 8, spatial part (+ the optional edge and lattice terms); image b weighs the GT by 1 - s_b
        terms = self._pixel_terms(x_pred, hr, None if strength is None else 1 - strength)
        if loss.teacher_weight:
            if "teacher" not in batch:
                raise ValueError("loss.teacher_weight needs teacher outputs: set data.teacher (a teacher model folder)")
            weight = loss.teacher_weight * (torch.ones(len(hr), device=hr.device) if strength is None else strength)
            for name, value in self._pixel_terms(x_pred, batch["teacher"], weight).items():
                terms[f"teacher_{name}"] = value
        if self.perceptual is not None:
            terms["perceptual"] = loss.perceptual_weight * self.perceptual(x_pred, hr)
        if discriminator is not None and loss.adversarial_weight:
            logits = discriminator(*self._discriminator_input(z_hr_pred, x_hr_pred, rng))
            terms["adversarial"] = loss.adversarial_weight * self._weighted_adversarial(logits, strength)
        return terms

    def _weighted_adversarial(self, logits: torch.Tensor | Sequence[torch.Tensor], strength: torch.Tensor | None) -> torch.Tensor:
        """D3SR Eq. 2; with a strength control image b's term is weighted by s_b (batch mean), so the
        fidelity end (s = 0) is never pushed towards realism."""
        if strength is None:
            return self.g_adv(logits)
        heads = [logits] if isinstance(logits, torch.Tensor) else list(logits)
        per_image = torch.stack([self.g_adv([head[b : b + 1] for head in heads]) for b in range(len(strength))])
        return (strength.to(per_image.dtype) * per_image).mean()

    def _discriminator_input(
        self, z: torch.Tensor | None, image: torch.Tensor, rng: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The plain CNN's image (pixel space, no step), else ``F(z, t)`` and the UNet index of ``t``."""
        if self.config.discriminator.kind == "cnn":
            return image, None
        return self._noised(z, rng)

    def discriminator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        x_real = batch["hr"] * 2 - 1
        with torch.no_grad():
            z_real = None if self.config.discriminator.kind == "cnn" else self.generator.encode(x_real)
        real = self._discriminator_input(z_real, x_real, rng)
        fake = self._discriminator_input(outputs["z_hr_pred"], outputs["x_hr_pred"], rng)
        return {"adversarial": self.d_adv(discriminator(*real), discriminator(*fake))}  # D3SR Eq. 3

    def sr_model(self, generator: nn.Module) -> SDSRModel:
        return SDSRModel(generator).eval()

    def export(self, generator: nn.Module, path: Path) -> Path:
        target = path.with_suffix(".safetensors") if self.config.generator.lora is not None else path
        return save_sd_model(generator, self.config.generator, target, model_type=self.config.method)
