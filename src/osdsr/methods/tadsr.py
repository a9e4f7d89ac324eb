"""TAD-SR: a one-step ResShift student with score distillation and a time-aware discriminator.

Student loss (TAD-SR Eq. 13): ``L_distill + lambda1 L_hsd + lambda2 L_adv``, each term switched off
by a zero weight (it is then not computed):

- ``L_distill`` (Eq. 6): MSE between the student's one step from z_T and the teacher's multi-step
  deterministic output from the same z_T;
- ``L_hsd`` (Eq. 7-8): high-frequency-enhanced score distillation at t' ~ U{1, 2, 3} with
  omega = 1 / (C S), no gradient through the teacher (``osdsr.losses.distillation.hsd_loss``);
- ``L_adv`` (Eq. 11): the time-aware discriminator's hinge generator loss on the noised student output.

Discriminator (Eq. 9-12, Algorithm 1): a step t ~ U{1..T} and one noise draw are shared by the real
latent ``z_t = q(z_0^HR, y, t)`` and the fake one ``z_t^stu = q(z_0^stu, y, t)`` (Eq. 1); the frozen
teacher's encoder, conditioned on the LR image and t like the denoiser, gives multi-scale features;
each is modulated by t and judged by its head; hinge loss (Eq. 12). The teacher's encoder is not
trained (the release's discriminator optimiser holds only the heads and time embeddings); the
heads' results are averaged (Sec. IV-B), i.e. Eq. 11-12 with the sum over k divided by K.
Algorithm 1 updates the discriminator first (``trainer.step_order: discriminator_first``; the
default is the generator first); t and the noise are drawn with the student's output, so both steps
judge the same z_t in either order.

Weights lambda1 = 1, lambda2 = 0.02 and 30k iterations are the paper's real-SR settings (Sec. V-A).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from osdsr.config import ranged
from osdsr.complexity import ComplexityPart, InputBuilder, Parts, meta_steps, meta_zeros
from osdsr.losses.adversarial import hinge_discriminator_loss, hinge_generator_loss
from osdsr.losses.distillation import (
    HSD_FIRST_STEP,
    HSD_LAST_STEP,
    TeacherDenoiseFn,
    hsd_loss,
    sample_hsd_steps,
)
from osdsr.methods import full_config
from osdsr.methods.resshift_family import (
    TEACHER_NETWORK,
    StudentMethod,
    StudentOptimizerConfig,
    Teacher,
    TeacherConfig,
    draw_prior_noise,
    load_teacher,
    meta_teacher,
    teacher_complexity_parts,
)
from osdsr.models.resshift_sr import complexity_latent_side
from osdsr.models.time_aware_discriminator import (
    TimeAwareDiscriminator,
    encoder_feature_channels,
    encoder_feature_sides,
    teacher_encoder_features,
)
from osdsr.train import DataConfig, Outputs, TrainerConfig


@dataclass(frozen=True)
class TADSRLossConfig:
    distill_weight: float = ranged(1.0, "[0, inf)")  # L_distill (Eq. 6, 13)
    hsd_weight: float = ranged(1.0, "[0, inf)")  # lambda1 (Eq. 13)
    hsd_steps: tuple[int, int] = ranged((HSD_FIRST_STEP, HSD_LAST_STEP), "[1, inf)")  # t' ~ U{first..last}, paper steps
    adversarial_weight: float = ranged(0.02, "[0, inf)")  # lambda2 (Eq. 13); 0: no discriminator


@dataclass(frozen=True)
class TimeAwareDiscriminatorConfig:
    head_channels: int = ranged(128, "[1, inf)")  # width of each head's 3x3 convolution
    embed_dim: int = ranged(128, "[1, inf)")  # width of the step embedding that feeds FiLM
    lr: float = ranged(5e-5, "[0, 1]")
    warmup_steps: int = ranged(0, "[0, inf)")  # linear warm-up of the discriminator's lr (trainer steps)


@dataclass(frozen=True)
class TADSRConfig:
    method: Literal["tadsr"] = "tadsr"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: TADSRLossConfig = field(default_factory=TADSRLossConfig)
    discriminator: TimeAwareDiscriminatorConfig = field(default_factory=TimeAwareDiscriminatorConfig)
    optimizer: StudentOptimizerConfig = field(default_factory=StudentOptimizerConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=30_000))
    data: DataConfig = field(default_factory=DataConfig)


def _discriminator_parts(teacher: Teacher, config: TimeAwareDiscriminatorConfig, size: int) -> Parts:
    """The time-aware discriminator on one noised latent: the frozen teacher's encoder (Eq. 9), then the
    trainable FiLM heads (Eq. 10) on its features."""
    denoiser = teacher.denoiser
    channels = encoder_feature_channels(denoiser.config)
    with torch.device("meta"):
        discriminator = TimeAwareDiscriminator(channels, config.head_channels, config.embed_dim)
    latent = complexity_latent_side(size, denoiser.config)
    sides = encoder_feature_sides(denoiser.config, latent)

    def noised_latent() -> tuple[torch.Tensor, ...]:
        return meta_zeros(teacher.config.latent_channels, latent), meta_steps(), meta_zeros(3, latent)

    def step_and_features() -> tuple[torch.Tensor, ...]:
        return meta_steps(), *(meta_zeros(c, s) for c, s in zip(channels, sides))

    encoder = ComplexityPart(
        functools.partial(teacher_encoder_features, denoiser),
        [denoiser.time_embed, denoiser.input_blocks, denoiser.middle_block],
    )
    heads = ComplexityPart(lambda t, *features: discriminator(features, t), [discriminator])
    return {"teacher encoder (frozen)": (encoder, noised_latent), "FiLM heads": (heads, step_and_features)}


def _score_distillation_part(teacher: Teacher, size: int) -> tuple[nn.Module, InputBuilder]:
    """HSD's two frozen-teacher evaluations (Eq. 7-8): the student's and the teacher's outputs noised to t'."""
    denoiser = teacher.denoiser
    latent = complexity_latent_side(size, denoiser.config)
    channels = teacher.config.latent_channels

    def both(
        z_student: torch.Tensor, z_teacher: torch.Tensor, t: torch.Tensor, lr_cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return denoiser(z_student, t, lr_cond), denoiser(z_teacher, t, lr_cond)

    def inputs() -> tuple[torch.Tensor, ...]:
        return meta_zeros(channels, latent), meta_zeros(channels, latent), meta_steps(), meta_zeros(3, latent)

    return ComplexityPart(both, [denoiser]), inputs


def training_complexity_parts(size: int) -> dict[str, Parts]:
    """TAD-SR's training-only networks at the full size of ``configs/tadsr.yaml``, on ``meta``, for
    ``osdsr complexity --train``: the time-aware discriminator and the frozen teacher (distillation
    target and HSD), for an output of ``size`` x ``size``."""
    config: TADSRConfig = full_config("tadsr")
    teacher = meta_teacher(config.teacher.steps)
    teacher_parts = teacher_complexity_parts(teacher, size)
    teacher_parts["score distillation (2 evaluations)"] = _score_distillation_part(teacher, size)
    return {
        "time-aware discriminator": _discriminator_parts(teacher, config.discriminator, size),
        TEACHER_NETWORK: teacher_parts,
    }


class TADSRMethod(StudentMethod):
    """Builds the TAD-SR student and time-aware discriminator from a frozen ResShift teacher."""

    model_type = "tadsr"

    def __init__(self, config: TADSRConfig) -> None:
        super().__init__(
            load_teacher(config.teacher),
            config.optimizer,
            discriminator_lr=config.discriminator.lr,
            discriminator_warmup_steps=config.discriminator.warmup_steps,
        )
        self.config = config
        first, last = config.loss.hsd_steps
        total = self.teacher.schedule.num_timesteps
        if not 1 <= first <= last <= total:
            raise ValueError(f"loss.hsd_steps {list(config.loss.hsd_steps)}: need 1 <= first <= last <= T = {total}")
        disc = config.discriminator
        channels = encoder_feature_channels(self.teacher.denoiser.config)
        self.discriminator = (
            TimeAwareDiscriminator(channels, disc.head_channels, disc.embed_dim)
            if config.loss.adversarial_weight > 0
            else None
        )

    def _teacher_denoise(self, lr_cond: torch.Tensor) -> TeacherDenoiseFn:
        def denoise(z_scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.teacher.denoiser(z_scaled, t, lr_cond)

        return denoise

    def _judge(
        self,
        discriminator: nn.Module,
        z0: torch.Tensor,
        y: torch.Tensor,
        lr_cond: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
    ) -> list[torch.Tensor]:
        """D(Enc(z_t, t, LR), t) with z_t = q(z0, y, t) (TAD-SR Eq. 1, 9-10): per-head logits."""
        schedule = self.teacher.schedule
        z_t = schedule.q_sample(z0, y, t, noise)  # TAD-SR Eq. 1
        features = teacher_encoder_features(self.teacher.denoiser, schedule.scale_input(z_t, t), t, lr_cond)
        return discriminator(features, t)

    def generator_outputs(self, batch: dict[str, torch.Tensor], generator: nn.Module, rng: torch.Generator) -> Outputs:
        """The student's z0, the teacher's target and latents, and the draws of HSD and the discriminator."""
        loss = self.config.loss
        latents = self.distillation_batch(batch, rng)
        z_student = self.student_z0(generator, latents)  # z_0^stu = f_theta(z_T, y, T)
        outputs = {"z_student": z_student, "z_teacher": latents.z_teacher, "z0": latents.z0}
        outputs.update(y=latents.y, lr_cond=latents.lr_cond)
        if loss.hsd_weight:
            outputs["t_hsd"] = sample_hsd_steps(z_student.shape[0], rng, *loss.hsd_steps).to(z_student.device)
            outputs["hsd_noise"] = draw_prior_noise(z_student, rng)
        if self.discriminator is not None:
            # Algorithm 1: t ~ U{1..T} (chain indices 0..T-1) and one noise draw, shared by real and fake
            t = torch.randint(0, self.teacher.schedule.num_timesteps, (z_student.shape[0],), generator=rng, device=rng.device)
            outputs["t"] = t.to(z_student.device)
            outputs["noise"] = draw_prior_noise(z_student, rng)
        return outputs

    def generator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module | None, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        loss = self.config.loss
        z_student, z_teacher, y, lr_cond = outputs["z_student"], outputs["z_teacher"], outputs["y"], outputs["lr_cond"]
        terms = self.distillation_terms(outputs, loss.distill_weight)  # Eq. 6
        if loss.hsd_weight:
            terms["hsd"] = loss.hsd_weight * hsd_loss(  # Eq. 7-8
                z_student, z_teacher, y, outputs["hsd_noise"], outputs["t_hsd"], self.teacher.schedule,
                self._teacher_denoise(lr_cond),
            )
        if discriminator is not None:
            fake_logits = self._judge(discriminator, z_student, y, lr_cond, outputs["t"], outputs["noise"])
            terms["adversarial"] = loss.adversarial_weight * hinge_generator_loss(fake_logits) / len(fake_logits)  # Eq. 11
        return terms

    def discriminator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        condition = (outputs["y"], outputs["lr_cond"], outputs["t"], outputs["noise"])
        real_logits = self._judge(discriminator, outputs["z0"], *condition)  # real: the noised HR latent
        fake_logits = self._judge(discriminator, outputs["z_student"], *condition)
        return {"adversarial": hinge_discriminator_loss(real_logits, fake_logits) / len(real_logits)}  # Eq. 12
