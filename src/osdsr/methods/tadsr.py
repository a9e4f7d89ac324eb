"""TAD-SR: a one-step ResShift student with score distillation and a time-aware discriminator.

Student loss (TAD-SR Eq. 13): ``L_distill + lambda1 L_hsd + lambda2 L_adv``, each term switched off
by a zero weight (it is then not computed):

- ``L_distill`` (Eq. 6): MSE between the student's one step from z_T and the teacher's multi-step
  deterministic output from the same z_T;
- ``L_hsd`` (Eq. 7-8): high-frequency-enhanced score distillation at t' ~ U{1, 2, 3} with
  omega = 1 / (C S), no gradient through the teacher (``osdsr.losses.distillation.hsd_loss``);
- ``L_adv`` (Eq. 11): the time-aware discriminator's hinge generator loss on the noised student output.

Discriminator (Eq. 9-12, Algorithm 1): a step t ~ U{discriminator.steps} and one noise draw are
shared by the real latent ``z_t = q(z_0^HR, y, t)`` and the fake one ``z_t^stu = q(z_0^stu, y, t)``
(Eq. 1); the frozen teacher's encoder, conditioned on the LR image and t like the denoiser, gives
multi-scale features, each judged by its time-aware head (``osdsr.models.time_aware_discriminator``,
the release's design); hinge losses (Eq. 11-12) over the concatenated logits of all heads. The
teacher's encoder is not trained (the release's discriminator optimiser holds only the heads).
Algorithm 1 updates the discriminator first (``trainer.step_order: discriminator_first``; the
default is the generator first); t and the noise are drawn with the student's output, so both steps
judge the same z_t in either order.

``release_compat`` reproduces what the authors' code does where the paper says otherwise (all off by
default: the paper): uniform instead of Gaussian noise in HSD and in the discriminator's
perturbation, HSD's teacher input scaled twice, and validation of the raw instead of the EMA weights.

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
from osdsr.models.resshift_unet import SwinUNetConfig
from osdsr.models.time_aware_discriminator import (
    LOGITS_PER_POSITION,
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
    # width of the step's sinusoid that feeds FiLM; None: the teacher's model_channels (the release)
    embed_dim: int | None = ranged(None, "[1, inf)")
    logits_per_position: int = ranged(LOGITS_PER_POSITION, "[1, inf)")  # the release's 64
    # paper steps t ~ U{first..last} of the discriminator's perturbation; None: 1..T (Algorithm 1). The
    # release draws {1..T-1} (gaussian_diffusion.py:896, randint(0, T - 1) as chain indices)
    steps: tuple[int, int] | None = ranged(None, "[1, inf)")
    lr: float = ranged(5e-5, "[0, 1]")
    warmup_steps: int = ranged(0, "[0, inf)")  # linear warm-up of the discriminator's lr (trainer steps)


@dataclass(frozen=True)
class ReleaseCompatConfig:
    """The authors' code where the paper says otherwise (github.com/LearningHx/TAD-SR, commit 8b0373f,
    TAD-SR/models/gaussian_diffusion.py and trainer.py); every switch off is the paper."""

    # HSD's and the discriminator's noise U[0, 1) (``th.rand_like``, gaussian_diffusion.py:838 and :895)
    # instead of the N(0, I) of Eq. 1 and Algorithm 1
    uniform_noise: bool = False
    # HSD's teacher input z_t' / std_t'^2: scaled at gaussian_diffusion.py:844-845 and again inside
    # ddim_sample -> p_mean_variance (l. 286); the paper (Eq. 7) feeds the teacher like its denoiser
    scale_hsd_teacher_input_twice: bool = False
    # the distillation trainer's validation runs self.model, not the EMA weights (trainer.py,
    # TrainerDistillDifIR.validation), although it loads the EMA model when use_ema_val is set
    validate_raw_weights: bool = False


@dataclass(frozen=True)
class TADSRConfig:
    method: Literal["tadsr"] = "tadsr"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: TADSRLossConfig = field(default_factory=TADSRLossConfig)
    discriminator: TimeAwareDiscriminatorConfig = field(default_factory=TimeAwareDiscriminatorConfig)
    release_compat: ReleaseCompatConfig = field(default_factory=ReleaseCompatConfig)
    optimizer: StudentOptimizerConfig = field(default_factory=StudentOptimizerConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=30_000))
    data: DataConfig = field(default_factory=DataConfig)


def build_discriminator(denoiser: SwinUNetConfig, config: TimeAwareDiscriminatorConfig) -> TimeAwareDiscriminator:
    """The time-aware heads over the encoder taps of a teacher with ``denoiser``'s layout."""
    embed_dim = denoiser.model_channels if config.embed_dim is None else config.embed_dim
    return TimeAwareDiscriminator(encoder_feature_channels(denoiser), embed_dim, config.logits_per_position)


def _discriminator_parts(teacher: Teacher, config: TimeAwareDiscriminatorConfig, size: int) -> Parts:
    """The time-aware discriminator on one noised latent: the frozen teacher's encoder (Eq. 9), then the
    trainable FiLM heads (Eq. 10) on its features."""
    denoiser = teacher.denoiser
    channels = encoder_feature_channels(denoiser.config)
    with torch.device("meta"):
        discriminator = build_discriminator(denoiser.config, config)
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

    def __init__(self, config: TADSRConfig, teacher: Teacher | None = None) -> None:
        """``teacher``: a prebuilt one (e.g. on ``meta`` for memory estimates) instead of ``config.teacher.path``."""
        super().__init__(
            teacher if teacher is not None else load_teacher(config.teacher),
            config.optimizer,
            discriminator_lr=config.discriminator.lr,
            discriminator_warmup_steps=config.discriminator.warmup_steps,
            gradient_checkpointing=config.trainer.gradient_checkpointing,
        )
        self.config = config
        first, last = config.loss.hsd_steps
        total = self.teacher.schedule.num_timesteps
        if not 1 <= first <= last <= total:
            raise ValueError(f"loss.hsd_steps {list(config.loss.hsd_steps)}: need 1 <= first <= last <= T = {total}")
        first, last = config.discriminator.steps or (1, total)
        if not 1 <= first <= last <= total:
            raise ValueError(f"discriminator.steps {[first, last]}: need 1 <= first <= last <= T = {total}")
        self.discriminator_steps = (first, last)
        self.validate_raw_weights = config.release_compat.validate_raw_weights  # read by the trainer
        self.discriminator = (
            build_discriminator(self.teacher.denoiser.config, config.discriminator)
            if config.loss.adversarial_weight > 0
            else None
        )

    def _perturbation(self, like: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """The noise of HSD's and the discriminator's q(z_t | z_0, y): N(0, I), or U[0, 1) as released."""
        if not self.config.release_compat.uniform_noise:
            return draw_prior_noise(like, rng)
        return torch.rand(like.shape, generator=rng, device=rng.device, dtype=like.dtype).to(like.device)

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
    ) -> torch.Tensor:
        """D(Enc(z_t, t, LR), t) with z_t = q(z0, y, t) (TAD-SR Eq. 1, 9-10): the heads' concatenated logits."""
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
            outputs["hsd_noise"] = self._perturbation(z_student, rng)
        if self.discriminator is not None:
            # Algorithm 1: t ~ U{first..last} (chain indices first-1..last-1), one noise draw shared by real and fake
            first, last = self.discriminator_steps
            t = torch.randint(first - 1, last, (z_student.shape[0],), generator=rng, device=rng.device)
            outputs["t"] = t.to(z_student.device)
            outputs["noise"] = self._perturbation(z_student, rng)
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
                scale_teacher_input_twice=self.config.release_compat.scale_hsd_teacher_input_twice,
            )
        if discriminator is not None:
            fake_logits = self._judge(discriminator, z_student, y, lr_cond, outputs["t"], outputs["noise"])
            terms["adversarial"] = loss.adversarial_weight * hinge_generator_loss(fake_logits)  # Eq. 11
        return terms

    def discriminator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        condition = (outputs["y"], outputs["lr_cond"], outputs["t"], outputs["noise"])
        real_logits = self._judge(discriminator, outputs["z0"], *condition)  # real: the noised HR latent
        fake_logits = self._judge(discriminator, outputs["z_student"], *condition)
        return {"adversarial": hinge_discriminator_loss(real_logits, fake_logits)}  # Eq. 12
