"""TDDSR: a one-step ResShift student distilled from its teacher, with an HR and an LR discriminator.

Three loss paths (TDDSR Sec. 4, Fig. 2), each switched by its weight (0 = the path is not built;
Table 5 ablates the HR and LR paths):

- distillation (Eq. 6): MSE between the student's one step from z_T and the teacher's multi-step
  deterministic output from the same z_T (SinSR's deterministic distillation);
- HR path (Eq. 7-8): the student's latent is decoded by the frozen autoencoder and judged against
  real HR images by ``D_H``, a StyleGAN-T-style discriminator whose feature network is trained
  (``hr_discriminator.train_features``);
- LR path (Eq. 9-10): a learnable downsampler ``G`` maps the student's HR output to LR, ``y_hat``,
  judged against the real LR images by ``D_L`` of the same design.

Loss forms. The discriminators minimise the cross-entropy form of Eq. 7 / Eq. 9,
``-E[log D(real)] - E[log(1 - D(fake))]`` with ``D = sigmoid(logit)``: the paper prints
``E[log(1 - D(real))] + E[log D(fake)]``, which pushes D the same way (real -> 1, fake -> 0) but is
unbounded below. The generator side is Eq. 8 / Eq. 10 as printed, ``E[1 - D(fake)]``. The downsampler
is trained against ``D_L`` only (Eq. 10, "the downsampler's adversarial objective"), in the generator
step, together with the student: it is part of the generator module (``TDDSRGenerator``), and the
student's gradient of Eq. 10 flows through it. Multi-head logits are averaged over heads.

Optimiser: Adam, lr 5e-5 for the student, the downsampler and the discriminators, 20k iterations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from osdsr.config import ranged
from osdsr.complexity import Parts, meta_zeros
from osdsr.losses.adversarial import nonsaturating_discriminator_loss
from osdsr.methods import full_config
from osdsr.methods.resshift_family import (
    TEACHER_NETWORK,
    StudentMethod,
    StudentOptimizerConfig,
    Teacher,
    TeacherConfig,
    export_student,
    load_teacher,
    meta_teacher,
    student_sr_model,
    teacher_complexity_parts,
)
from osdsr.models.downsampler import LearnableDownsampler
from osdsr.models.feature_discriminator import (
    FeatureDiscriminator,
    FeatureDiscriminatorConfig,
    feature_discriminator_complexity_parts,
)
from osdsr.models.resshift_sr import SCALE, ResShiftSR
from osdsr.models.resshift_unet import SwinUNet
from osdsr.train import DataConfig, Outputs, TrainerConfig

# TDDSR gives no weights for its adversarial terms; these defaults are TAD-SR's adversarial weight
# (lambda2 = 0.02, TAD-SR Sec. V-A) for the same ResShift student.
ADVERSARIAL_WEIGHT = 0.02


@dataclass(frozen=True)
class TDDSRLossConfig:
    """Weights of the three paths; 0 switches a path off (TDDSR Table 5)."""

    distill_weight: float = ranged(1.0, "[0, inf)")  # Eq. 6
    hr_adversarial_weight: float = ranged(ADVERSARIAL_WEIGHT, "[0, inf)")  # Eq. 8; 0: no HR discriminator
    lr_adversarial_weight: float = ranged(ADVERSARIAL_WEIGHT, "[0, inf)")  # Eq. 10; 0: no downsampler and no LR discriminator


@dataclass(frozen=True)
class DownsamplerConfig:
    channels: int = ranged(64, "[1, inf)")  # width of the learnable downsampler's convolutions


@dataclass(frozen=True)
class TDDSRConfig:
    method: Literal["tddsr"] = "tddsr"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: TDDSRLossConfig = field(default_factory=TDDSRLossConfig)
    hr_discriminator: FeatureDiscriminatorConfig = field(default_factory=FeatureDiscriminatorConfig)
    lr_discriminator: FeatureDiscriminatorConfig = field(default_factory=FeatureDiscriminatorConfig)
    downsampler: DownsamplerConfig = field(default_factory=DownsamplerConfig)
    optimizer: StudentOptimizerConfig = field(default_factory=StudentOptimizerConfig)  # Adam, lr 5e-5
    discriminator_lr: float = ranged(5e-5, "[0, 1]")
    discriminator_warmup_steps: int = ranged(0, "[0, inf)")  # linear warm-up of both discriminators' lr (trainer steps)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=20_000))
    data: DataConfig = field(default_factory=DataConfig)


class TDDSRGenerator(nn.Module):
    """What the generator step trains: the student denoiser and, with the LR path, the downsampler G.

    ``forward`` is the student's (``SwinUNet`` inputs), so the module is the student for sampling.
    """

    def __init__(self, student: SwinUNet, downsampler: LearnableDownsampler | None) -> None:
        super().__init__()
        self.student = student
        self.downsampler = downsampler

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        return self.student(sample, timesteps, lq)


class TDDSRDiscriminators(nn.Module):
    """The discriminator step's networks: ``hr`` (D_H) and ``lr`` (D_L), each present when its path is on.

    ``forward(which, image)`` runs one of them, so that every call goes through the module's own forward
    (under DDP, a call of ``.hr`` or ``.lr`` would bypass the wrapper and its gradient all-reduce).
    """

    def __init__(self, hr: FeatureDiscriminator | None, lr: FeatureDiscriminator | None) -> None:
        super().__init__()
        self.hr = hr
        self.lr = lr

    def forward(self, which: Literal["hr", "lr"], image: torch.Tensor) -> list[torch.Tensor]:
        return getattr(self, which)(image)


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def expected_fakeness(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``E[1 - D(fake)]`` with ``D = sigmoid(logit)``, averaged over heads (TDDSR Eq. 8 and Eq. 10)."""
    return torch.stack([(1 - torch.sigmoid(logits)).mean() for logits in fake_logits]).mean()


def discriminator_cross_entropy(
    real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``-E[log D(real)] - E[log(1 - D(fake))]``, averaged over heads (TDDSR Eq. 7 and Eq. 9, bounded form)."""
    return nonsaturating_discriminator_loss(real_logits, fake_logits) / len(real_logits)


def training_complexity_parts(size: int) -> dict[str, Parts]:
    """TDDSR's training-only networks at the full size of ``configs/tddsr.yaml``, on ``meta``, for
    ``osdsr complexity --train``: D_H on the ``size`` x ``size`` HR output, the downsampler G from it,
    D_L on the LR image, and the frozen teacher's distillation target."""
    config: TDDSRConfig = full_config("tddsr")
    with torch.device("meta"):
        hr_discriminator = FeatureDiscriminator(config.hr_discriminator)
        downsampler = LearnableDownsampler(SCALE, config.downsampler.channels)
        lr_discriminator = FeatureDiscriminator(config.lr_discriminator)
    return {
        "HR discriminator D_H": feature_discriminator_complexity_parts(hr_discriminator, size),
        "learnable downsampler G": {"downsampler": (downsampler, lambda: (meta_zeros(3, size),))},
        "LR discriminator D_L": feature_discriminator_complexity_parts(lr_discriminator, size // SCALE),
        TEACHER_NETWORK: teacher_complexity_parts(meta_teacher(config.teacher.steps), size),
    }


class TDDSRMethod(StudentMethod):
    """Builds the TDDSR student, downsampler and discriminators from a frozen ResShift teacher."""

    model_type = "tddsr"

    def __init__(self, config: TDDSRConfig, teacher: Teacher | None = None) -> None:
        """``teacher``: a prebuilt one (e.g. on ``meta`` for memory estimates) instead of ``config.teacher.path``."""
        super().__init__(
            teacher if teacher is not None else load_teacher(config.teacher),
            config.optimizer,
            discriminator_lr=config.discriminator_lr,
            discriminator_warmup_steps=config.discriminator_warmup_steps,
            gradient_checkpointing=config.trainer.gradient_checkpointing,
        )
        self.config = config
        loss = config.loss
        hr_path, lr_path = loss.hr_adversarial_weight > 0, loss.lr_adversarial_weight > 0
        downsampler = LearnableDownsampler(SCALE, config.downsampler.channels) if lr_path else None
        self.generator = TDDSRGenerator(self.generator, downsampler)
        self.discriminator = (
            TDDSRDiscriminators(
                FeatureDiscriminator(config.hr_discriminator) if hr_path else None,
                FeatureDiscriminator(config.lr_discriminator) if lr_path else None,
            )
            if hr_path or lr_path
            else None
        )

    def _decode(self, z0: torch.Tensor) -> torch.Tensor:
        """The student's HR image in [-1, 1] through the frozen autoencoder (gradients reach z0)."""
        autoencoder = self.teacher.autoencoder
        return autoencoder.decode(z0 / autoencoder.scaling_factor)

    def generator_outputs(self, batch: dict[str, torch.Tensor], generator: nn.Module, rng: torch.Generator) -> Outputs:
        """The student's z0 and the teacher's target; with a discriminator, the student's HR image and
        (LR path) its downsampled y_hat."""
        latents = self.distillation_batch(batch, rng)
        z_student = self.student_z0(generator, latents)  # f_phi(x_T, y, T)
        outputs = {"z_student": z_student, "z_teacher": latents.z_teacher}
        if self.discriminator is not None:
            outputs["x_student"] = self._decode(z_student)
        if self.discriminator is not None and self.discriminator.lr is not None:
            # y_hat = G(f_phi(x_T, y, T)); its gradients are all-reduced with the student's (one backward)
            outputs["y_hat"] = _unwrap(generator).downsampler(outputs["x_student"])
        return outputs

    def generator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module | None, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        loss = self.config.loss
        terms = self.distillation_terms(outputs, loss.distill_weight)  # Eq. 6
        if discriminator is None:
            return terms
        if discriminator.hr is not None:
            terms["hr_adversarial"] = loss.hr_adversarial_weight * expected_fakeness(discriminator("hr", outputs["x_student"]))  # Eq. 8
        if discriminator.lr is not None:
            terms["lr_adversarial"] = loss.lr_adversarial_weight * expected_fakeness(discriminator("lr", outputs["y_hat"]))  # Eq. 10
        return terms

    def discriminator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        paths = _unwrap(discriminator)  # which paths exist; every call goes through ``discriminator`` itself
        terms = {}
        if paths.hr is not None:
            real_hr, fake_hr = batch["hr"] * 2 - 1, outputs["x_student"]
            terms["hr_adversarial"] = discriminator_cross_entropy(discriminator("hr", real_hr), discriminator("hr", fake_hr))  # Eq. 7
        if paths.lr is not None:
            real_lr, fake_lr = batch["lr"] * 2 - 1, outputs["y_hat"]
            terms["lr_adversarial"] = discriminator_cross_entropy(discriminator("lr", real_lr), discriminator("lr", fake_lr))  # Eq. 9
        return terms

    def sr_model(self, generator: nn.Module) -> ResShiftSR:
        return student_sr_model(_unwrap(generator).student, self.teacher, self.model_type)

    def export(self, generator: nn.Module, path: Path) -> Path:
        return export_student(_unwrap(generator).student, self.teacher, path, self.model_type)
