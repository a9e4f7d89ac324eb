"""What the one-step students of ResShift (SinSR, TAD-SR, TDDSR) share: teacher, student, targets, export.

Every student starts from the same z_T as the teacher and is trained towards (at least) the
teacher's multi-step deterministic output:

- ``load_teacher(TeacherConfig)`` -> ``Teacher``: the frozen ResShift model folder (denoiser,
  autoencoder, eta schedule, the folder's config);
- ``student_from_teacher(teacher)``: a trainable copy of the teacher's denoiser (the student is
  initialised from the teacher, TAD-SR Sec. V-A);
- ``encode_pair(teacher, lr, hr) -> (y, z0, lr_cond)``: latents of the bicubic-upsampled LR image
  and of the HR image, and the LR image in [-1, 1] that the denoiser takes as its condition;
- ``teacher_target(teacher, y, lr_cond, noise, steps)``: the teacher's deterministic sampler (SinSR,
  TAD-SR Eq. 3) run from z_T = y + kappa sqrt(eta_T) noise, without gradients;
- ``student_z0(student, schedule, y, lr_cond, noise)``: the student's one step from the same z_T at
  t = T-1 (TAD-SR Eq. 6, the student side);
- ``export_student(student, teacher, path, model_type)``: a model folder that ``osdsr upscale
  --model`` runs in one deterministic step;
- ``StudentOptimizerConfig`` / ``StudentMethod``: the optimiser settings and the generic method parts
  (optimisers, SR model for validation, export) that the three methods would otherwise repeat.
- ``official_teacher(steps)``: the official architecture with random weights (memory estimates);
- ``meta_teacher(steps)`` / ``teacher_complexity_parts(teacher, size)``: the official full-size teacher on
  ``meta`` and its distillation target as a part, for ``osdsr complexity --train``.

Tensor conventions: batches hold ``lr`` [B, 3, h, w] and ``hr`` [B, 3, 4h, 4w] in [0, 1]; latents
live on the LR grid (f4 autoencoder, x4 SR).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from osdsr.config import ranged
from osdsr.complexity import ComplexityPart, Parts, meta_zeros
from osdsr.diffusion.resshift import ResShiftSchedule
from osdsr.losses.distillation import vanilla_distillation_loss
from osdsr.models.classical import bicubic_upsample
from osdsr.models.resshift_sr import (
    CONFIG_FILE,
    SCALE,
    STUDENT_TYPES,
    TEACHER_TYPE,
    ResShiftModelConfig,
    ResShiftSR,
    build_resshift_sr_model,
    complexity_latent_side,
    save_resshift_model,
)
from osdsr.models.resshift_unet import SwinUNet


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen ResShift teacher.

    ``path``: a ResShift model folder (``"model_type": "resshift"``), e.g. written by ``osdsr convert
    resshift`` from the official release or by ``osdsr train configs/resshift-tiny.yaml``.
    ``steps``: deterministic sampling steps of the teacher's target, 1..T; fewer than T run a shorter
    chain through evenly spaced steps that still starts at t = T (``distillation_chain``).
    """

    path: str | None = None
    steps: int = ranged(15, "[1, inf)")


@dataclass(frozen=True)
class StudentOptimizerConfig:
    """Adam(W) for the student (TDDSR: Adam, lr 5e-5; the SinSR/TAD-SR releases: lr 5e-5)."""

    lr: float = ranged(5e-5, "[0, 1]")
    betas: tuple[float, float] = ranged((0.9, 0.999), "[0, 1)")
    weight_decay: float = ranged(0.0, "[0, 1]")
    warmup_steps: int = ranged(0, "[0, inf)")  # linear warm-up of the student's lr (trainer steps)


class Teacher(nn.Module):
    """A frozen ResShift model: ``denoiser``, ``autoencoder``, the full eta ``schedule`` and ``config``."""

    def __init__(self, config: ResShiftModelConfig, denoiser: SwinUNet, autoencoder: nn.Module, steps: int) -> None:
        super().__init__()
        self.config = config
        self.denoiser = denoiser
        self.autoencoder = autoencoder
        self.schedule = ResShiftSchedule.from_config(config.schedule)
        self.steps = steps
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """Always in eval mode: the teacher never trains."""
        return super().train(False)


def load_teacher(config: TeacherConfig) -> Teacher:
    """The frozen teacher of ``config.path`` on the CPU (move it with ``.to``), in eval mode."""
    from osdsr.model_loading import LoadOptions
    from osdsr.models.resshift_sr import load_resshift_sr_model, read_resshift_config

    if config.path is None:
        raise ValueError(
            "teacher.path is not set: point it at a ResShift model folder (osdsr convert resshift ..., "
            "or runs/resshift-tiny/model from osdsr train configs/resshift-tiny.yaml) with --set teacher.path=DIR"
        )
    folder = Path(config.path)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"teacher.path {folder}: no ResShift model folder there ({CONFIG_FILE} missing); convert the "
            "official checkpoint with osdsr convert resshift or train one with configs/resshift-tiny.yaml"
        )
    folder_config = read_resshift_config(folder / CONFIG_FILE)
    if folder_config.model_type != TEACHER_TYPE:
        raise ValueError(
            f"teacher.path {folder}: holds a one-step {folder_config.model_type!r} model; the teacher must be "
            f"a multi-step {TEACHER_TYPE!r} model folder"
        )
    total = folder_config.schedule.num_timesteps
    if not 1 <= config.steps <= total:
        raise ValueError(f"teacher.steps {config.steps}: the teacher's schedule has T = {total}; use 1..{total}")
    model = load_resshift_sr_model(folder, LoadOptions())
    return Teacher(model.config, model.denoiser, model.autoencoder, config.steps)


def student_from_teacher(teacher: Teacher) -> SwinUNet:
    """A trainable copy of the teacher's denoiser, in train mode (built and loaded rather than deep-copied,
    which also works on the fake tensors of memory estimates)."""
    student = SwinUNet(teacher.denoiser.config)
    student.load_state_dict(teacher.denoiser.state_dict())
    student.requires_grad_(True)
    return student.train()


def encode_lr(autoencoder: nn.Module, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, lr_cond): y = E(bicubic_x4(2 lr - 1)) and the denoiser's condition lr_cond = 2 lr - 1.

    As ``ResShiftSR.encode`` makes them; the latent is scaled by the autoencoder's scaling factor.
    """
    lr_cond = lr * 2 - 1
    with torch.no_grad():
        y = autoencoder.encode(bicubic_upsample(lr_cond, SCALE)) * autoencoder.scaling_factor
    return y, lr_cond


def encode_hr(autoencoder: nn.Module, hr: torch.Tensor) -> torch.Tensor:
    """z0 = E(2 hr - 1), scaled by the autoencoder's scaling factor: the HR latent."""
    with torch.no_grad():
        return autoencoder.encode(hr * 2 - 1) * autoencoder.scaling_factor


def encode_pair(
    teacher: Teacher, lr: torch.Tensor, hr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents of the bicubic-upsampled LR image (y) and of the HR image (z0), and the LR condition."""
    y, lr_cond = encode_lr(teacher.autoencoder, lr)
    return y, encode_hr(teacher.autoencoder, hr), lr_cond


def distillation_chain(schedule: ResShiftSchedule, steps: int) -> ResShiftSchedule:
    """The teacher's chain for a ``steps``-step target: evenly spaced steps from T-1 down to 0.

    All T steps for ``steps`` = T. Unlike the release's respacing (``ResShiftSchedule.respace``), the
    shortened chain always keeps step T-1, so the teacher starts from the student's z_T.
    """
    total = schedule.num_timesteps
    if not 1 <= steps <= total:
        raise ValueError(f"teacher steps {steps}: the schedule has T = {total}; use 1..{total}")
    if steps == total:
        return schedule
    if steps == 1:
        return schedule.last_step_only()
    kept = sorted({round(k * (total - 1) / (steps - 1)) for k in range(steps)})
    return schedule.subchain(kept)


@torch.no_grad()
def teacher_target(
    teacher: Teacher, y: torch.Tensor, lr_cond: torch.Tensor, noise: torch.Tensor, steps: int | None = None
) -> torch.Tensor:
    """The teacher's multi-step deterministic output z0 from z_T = y + kappa sqrt(eta_T) noise.

    SinSR's deterministic sampler z_{t-1} = k_t z0_pred + m_t z_t + j_t y (TAD-SR Eq. 3) over
    ``distillation_chain(teacher.schedule, steps)`` (``steps`` defaults to ``teacher.steps``); no
    gradients. The same ``noise`` gives the same target.
    """
    chain = distillation_chain(teacher.schedule, teacher.steps if steps is None else steps)

    def denoise_fn(z_scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return teacher.denoiser(z_scaled, t, lr_cond)

    return chain.sample(denoise_fn, y, noise, deterministic=True)


def student_z0(
    student: nn.Module, schedule: ResShiftSchedule, y: torch.Tensor, lr_cond: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """The student's one-step z0 from z_T = y + kappa sqrt(eta_T) noise at t = T-1 (with gradients).

    ``schedule`` is the full chain (``teacher.schedule``): its last step is z_T.
    """
    last = schedule.num_timesteps - 1
    z_T = schedule.prior_sample(y, noise)
    return student(schedule.scale_input(z_T, last), schedule.model_t(last, y.shape[0], y.device), lr_cond)


def draw_prior_noise(like: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` from ``rng`` (on ``rng``'s device), moved to ``like``'s."""
    return torch.randn(like.shape, generator=rng, device=rng.device, dtype=like.dtype).to(like.device)


def student_sr_model(student: nn.Module, teacher: Teacher, model_type: str) -> ResShiftSR:
    """The student behind the SR-model contract (in eval mode): one deterministic step, the teacher's autoencoder."""
    if model_type not in STUDENT_TYPES:
        raise ValueError(f"model_type {model_type!r}: a student is one of {list(STUDENT_TYPES)}")
    config = dataclasses.replace(teacher.config, model_type=model_type)
    return ResShiftSR(config, student, teacher.autoencoder).eval()


def export_student(student: nn.Module, teacher: Teacher, path: str | Path, model_type: str) -> Path:
    """Write the student as a ``model_type`` (sinsr / tadsr / tddsr) model folder, replacing one there.

    The student's train / eval mode is left as it was.
    """
    was_training = student.training
    try:
        return save_resshift_model(path, student_sr_model(student, teacher, model_type), overwrite=True)
    finally:
        student.train(was_training)


TEACHER_NETWORK = "teacher (ResShift denoiser, frozen)"  # its name in osdsr complexity --train


def official_teacher(steps: int) -> Teacher:
    """The official full-size ResShift teacher's architecture (``ResShiftModelConfig()``), random weights."""
    model = build_resshift_sr_model(ResShiftModelConfig())
    return Teacher(model.config, model.denoiser, model.autoencoder, steps)


def meta_teacher(steps: int) -> Teacher:
    """``official_teacher(steps)`` on ``meta``: nothing is allocated."""
    with torch.device("meta"):
        return official_teacher(steps)


def teacher_complexity_parts(teacher: Teacher, size: int) -> Parts:
    """The teacher's distillation target (``teacher_target``: ``teacher.steps`` denoiser evaluations, no
    gradients) for an output of ``size`` x ``size``, as a part on ``meta``."""
    latent = complexity_latent_side(size, teacher.config.denoiser)
    channels = teacher.config.latent_channels

    def y_lr_and_noise() -> tuple[torch.Tensor, ...]:
        return meta_zeros(channels, latent), meta_zeros(3, latent), meta_zeros(channels, latent)

    target = ComplexityPart(functools.partial(teacher_target, teacher), [teacher.denoiser])
    return {f"distillation target ({teacher.steps} steps)": (target, y_lr_and_noise)}


@dataclass
class DistillationBatch:
    """One batch in latent space: y, the HR latent z0, the LR condition, the prior noise, and z_T's target."""

    y: torch.Tensor
    z0: torch.Tensor
    lr_cond: torch.Tensor
    noise: torch.Tensor
    z_teacher: torch.Tensor


class StudentMethod:
    """The parts every ResShift student method shares; a method subclasses it and adds its loss terms.

    Subclasses set ``model_type`` and ``discriminator`` and define ``generator_outputs`` and
    ``generator_losses`` (and ``discriminator_losses`` when they have a discriminator) for
    ``osdsr.train.Trainer``.
    """

    model_type: str
    discriminator: nn.Module | None = None

    def __init__(
        self,
        teacher: Teacher,
        optimizer: StudentOptimizerConfig,
        discriminator_lr: float | None = None,
        discriminator_warmup_steps: int = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        self.teacher = teacher
        self.generator = student_from_teacher(teacher)
        # the teacher too: a generator step back-propagates through it when it judges the student (TAD-SR)
        for denoiser in (self.generator, teacher.denoiser):
            denoiser.gradient_checkpointing = gradient_checkpointing
        self.optimizer_config = optimizer
        self.discriminator_lr = discriminator_lr
        self.warmup_steps = {"generator": optimizer.warmup_steps, "discriminator": discriminator_warmup_steps}

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def optimizers(self, generator: nn.Module, discriminator: nn.Module | None) -> dict[str, torch.optim.Optimizer]:
        opt = self.optimizer_config
        trainable = [p for p in generator.parameters() if p.requires_grad]
        optimizers = {"generator": torch.optim.AdamW(trainable, opt.lr, opt.betas, weight_decay=opt.weight_decay)}
        if discriminator is not None:
            d_params = [p for p in discriminator.parameters() if p.requires_grad]
            d_lr = opt.lr if self.discriminator_lr is None else self.discriminator_lr
            optimizers["discriminator"] = torch.optim.AdamW(d_params, d_lr, opt.betas, weight_decay=opt.weight_decay)
        return optimizers

    def encode_batch(
        self, batch: dict[str, torch.Tensor], rng: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(y, z0, lr_cond, noise): the batch's latents and the prior noise drawn from ``rng``."""
        y, z0, lr_cond = encode_pair(self.teacher, batch["lr"], batch["hr"])
        return y, z0, lr_cond, draw_prior_noise(y, rng)

    def distillation_batch(self, batch: dict[str, torch.Tensor], rng: torch.Generator) -> DistillationBatch:
        """Encode the batch, draw the prior noise from ``rng`` and run the teacher (no gradients)."""
        y, z0, lr_cond, noise = self.encode_batch(batch, rng)
        z_teacher = teacher_target(self.teacher, y, lr_cond, noise)
        return DistillationBatch(y, z0, lr_cond, noise, z_teacher)

    def distillation_terms(self, outputs: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
        """``{"distill": weight * MSE(z_student, z_teacher)}`` (TAD-SR Eq. 6, TDDSR Eq. 6); none for weight 0."""
        if not weight:
            return {}
        return {"distill": weight * vanilla_distillation_loss(outputs["z_student"], outputs["z_teacher"])}

    def student_z0(self, generator: nn.Module, latents: DistillationBatch) -> torch.Tensor:
        return student_z0(generator, self.teacher.schedule, latents.y, latents.lr_cond, latents.noise)

    def sr_model(self, generator: nn.Module) -> ResShiftSR:
        return student_sr_model(generator, self.teacher, self.model_type)

    def export(self, generator: nn.Module, path: Path) -> Path:
        return export_student(generator, self.teacher, path, self.model_type)
