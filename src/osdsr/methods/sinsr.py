"""SinSR: one-step deterministic distillation of the ResShift teacher, with consistency terms.

SinSR (Wang et al., CVPR 2024; the background of TAD-SR and TDDSR) trains a student, initialised
from the teacher, to map z_T = y + kappa sqrt(eta_T) eps in one step (at t = T-1) to the teacher's
deterministic multi-step output (SinSR's deterministic sampler, TAD-SR Eq. 3). Its loss has three
terms, each with its own weight here (a term of weight 0 is not computed):

- ``distill`` (L_distill): MSE between the student's z0 and the teacher's output (TAD-SR Eq. 6,
  TDDSR Eq. 6);
- ``inverse`` (SinSR's "reverse" consistency; ``learn_xT`` in the release): the same network, told
  step index 0, also learns the inverse map from the teacher's output back to z_T:
  ``|| f(z0_teacher, 0) - z_T ||^2``;
- ``gt`` (ground-truth consistency; ``finetune_use_gt`` in the release): the student inverts the HR
  latent to a z_T of its own, ``z_T^gt = sg(f(z0_hr, 0))``, and must map it forward to the HR latent,
  ``|| f(z_T^gt, T-1) - z0_hr ||^2`` (gradients through the forward step only).

As in the SinSR release, both inverse-direction calls scale their input by the factor of step T-1
(``1 / sqrt(kappa^2 eta_T + 1)``), and all three terms weigh 1 (``learn_xT: True``,
``finetune_use_gt: 1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from osdsr.config import ranged
from osdsr.complexity import Parts
from osdsr.methods import full_config
from osdsr.methods.resshift_family import (
    TEACHER_NETWORK,
    StudentMethod,
    StudentOptimizerConfig,
    Teacher,
    TeacherConfig,
    load_teacher,
    meta_teacher,
    teacher_complexity_parts,
    teacher_target,
)
from osdsr.train import DataConfig, Outputs, TrainerConfig

INVERSE_STEP = 0  # the step index that asks the student for the inverse map z0 -> z_T (SinSR release)


@dataclass(frozen=True)
class SinSRLossConfig:
    distill_weight: float = ranged(1.0, "[0, inf)")  # L_distill: student z0 vs the teacher's deterministic output
    inverse_weight: float = ranged(1.0, "[0, inf)")  # inverse consistency: f(z0_teacher, 0) -> z_T
    gt_weight: float = ranged(1.0, "[0, inf)")  # ground-truth consistency: f(sg(f(z0_hr, 0)), T-1) -> z0_hr

    def __post_init__(self) -> None:
        weights = (self.distill_weight, self.inverse_weight, self.gt_weight)
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError(f"loss weights {weights} must be non-negative, at least one positive")


@dataclass(frozen=True)
class SinSRConfig:
    method: Literal["sinsr"] = "sinsr"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: SinSRLossConfig = field(default_factory=SinSRLossConfig)
    optimizer: StudentOptimizerConfig = field(default_factory=StudentOptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)


def training_complexity_parts(size: int) -> dict[str, Parts]:
    """SinSR's training-only network at the full size of ``configs/sinsr.yaml``, on ``meta``, for
    ``osdsr complexity --train``: the frozen teacher's distillation target for a ``size`` x ``size`` output."""
    config: SinSRConfig = full_config("sinsr")
    return {TEACHER_NETWORK: teacher_complexity_parts(meta_teacher(config.teacher.steps), size)}


class SinSRMethod(StudentMethod):
    """The student (a copy of the teacher's denoiser) and SinSR's three loss terms."""

    model_type = "sinsr"

    def __init__(self, config: SinSRConfig, teacher: Teacher | None = None) -> None:
        """``teacher``: a prebuilt one (e.g. on ``meta`` for memory estimates) instead of ``config.teacher.path``."""
        super().__init__(
            teacher if teacher is not None else load_teacher(config.teacher),
            config.optimizer,
            gradient_checkpointing=config.trainer.gradient_checkpointing,
        )
        self.config = config

    def _forward(self, generator: nn.Module, z_T: torch.Tensor, lr_cond: torch.Tensor) -> torch.Tensor:
        """The student's one step z_T -> z0 at step index T-1."""
        schedule = self.teacher.schedule
        last = schedule.num_timesteps - 1
        return generator(schedule.scale_input(z_T, last), schedule.model_t(last, z_T.shape[0], z_T.device), lr_cond)

    def _inverse(self, generator: nn.Module, z0: torch.Tensor, lr_cond: torch.Tensor) -> torch.Tensor:
        """The student's inverse map z0 -> z_T: step index 0, input scaled as at step T-1 (SinSR release)."""
        schedule = self.teacher.schedule
        last = schedule.num_timesteps - 1
        step = schedule.model_t(INVERSE_STEP, z0.shape[0], z0.device)
        return generator(schedule.scale_input(z0, last), step, lr_cond)

    def generator_outputs(self, batch: dict[str, torch.Tensor], generator: nn.Module, rng: torch.Generator) -> Outputs:
        """Each term's student output (with gradients) and its target."""
        loss = self.config.loss
        y, z0_hr, lr_cond, noise = self.encode_batch(batch, rng)
        z_T = self.teacher.schedule.prior_sample(y, noise)
        outputs: Outputs = {}
        if loss.distill_weight or loss.inverse_weight:
            z_teacher = teacher_target(self.teacher, y, lr_cond, noise)
        if loss.distill_weight:
            outputs.update(z_student=self._forward(generator, z_T, lr_cond), z_teacher=z_teacher)
        if loss.inverse_weight:
            outputs.update(z_T_of_teacher=self._inverse(generator, z_teacher, lr_cond), z_T=z_T)
        if loss.gt_weight:
            with torch.no_grad():
                z_T_of_hr = self._inverse(generator, z0_hr, lr_cond)
            outputs.update(z0_of_hr=self._forward(generator, z_T_of_hr, lr_cond), z0_hr=z0_hr)
        return outputs

    def generator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module | None, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        loss = self.config.loss
        terms = self.distillation_terms(outputs, loss.distill_weight)  # Eq. 6
        if loss.inverse_weight:
            terms["inverse"] = loss.inverse_weight * F.mse_loss(outputs["z_T_of_teacher"], outputs["z_T"])
        if loss.gt_weight:
            terms["gt"] = loss.gt_weight * F.mse_loss(outputs["z0_of_hr"], outputs["z0_hr"])
        return terms

    def discriminator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        raise RuntimeError("SinSR has no discriminator")
