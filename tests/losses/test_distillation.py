"""Vanilla distillation and HSD (TAD-SR Eq. 6-8): hand-computed values, zero at equality, stop-gradient,
and the authors' release on fixed inputs.

``tadsr_release_hsd.npz`` holds inputs and outputs of the release's HSD (github.com/LearningHx/TAD-SR,
commit 8b0373f, ``TAD-SR/models/gaussian_diffusion.py``: ``GaussianDiffusion.training_losses_distill``
with ``distill_type='HSD'``, ``uniform_sampling=False``, ``score_distill_target='teacher'``, and the
methods it calls). They were made outside this repository: those functions, copied unchanged into a
throwaway virtual environment (torch 2.13 CPU, the release files alone on its path), ran with the
schedule of ``configs/TAD-SR.yaml`` (T = 15, kappa 2, p 0.3), a stand-in teacher
``tanh(conv3x3([z, lq])) * (1 + t / 20)`` (``teacher_weight`` / ``teacher_bias``), a stand-in first
stage that averages 4x4 blocks, the LR image ``lq`` (also the teacher's condition), ``y`` = its
latent, the prior ``noise`` and the student's output ``z_student``. Its own draws (``t_hsd``, chain
indices, and the uniform ``noise_hsd``) were recorded; ``z_teacher`` is its 15-step deterministic
target, ``loss_distill`` / ``loss_hsd`` its per-sample terms and ``grad_hsd`` the gradient of the HSD
term's batch mean with respect to ``z_student``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from osdsr.diffusion.resshift import ResShiftSchedule, ResShiftScheduleConfig
from osdsr.losses.distillation import hsd_loss, sample_hsd_steps, vanilla_distillation_loss

RELEASE_HSD = Path(__file__).parent / "tadsr_release_hsd.npz"

KAPPA = 2.0


def two_step_schedule() -> ResShiftSchedule:
    """sqrt(eta) = (0.5, 0.8): step index 0 has eta = 0.25, kappa sqrt(eta) = 1, scale 1/sqrt(2)."""
    return ResShiftSchedule(torch.tensor([0.5, 0.8], dtype=torch.float64), KAPPA)


def identity_teacher(z_scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return z_scaled


def test_vanilla_distillation_is_the_mean_squared_error() -> None:
    z_student = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    z_teacher = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss = vanilla_distillation_loss(z_student, z_teacher)
    assert loss.item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    loss.backward()
    assert torch.allclose(z_student.grad, z_student.detach() / 2)  # d/dz mean((z - 0)^2) = 2 z / 4
    assert z_teacher.grad is None


def test_hsd_matches_the_hand_computed_value_and_gradient_with_an_identity_teacher() -> None:
    # eta = 0.25 at index 0: z_t^stu - z_t^tch = 0.75 d, F = z_t / sqrt(2), so per element
    # g / omega = (1 - eta) / (kappa sqrt(eta)) * (d - 0.75 d / sqrt(2)) = 0.75 (1 - 0.75 / sqrt(2)) d
    schedule = two_step_schedule()
    z_teacher = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])
    d = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]])
    z_student = (z_teacher + d).requires_grad_(True)
    y = torch.full_like(z_teacher, 0.3)
    noise = torch.tensor([[[[0.1, 0.2], [-0.3, 0.4]]]])
    t = torch.tensor([0])
    loss = hsd_loss(z_student, z_teacher, y, noise, t, schedule, identity_teacher)
    gap_per_d = 0.75 * (1 - 0.75 / math.sqrt(2))
    assert loss.item() == pytest.approx(0.5 * gap_per_d**2 * (1 + 4 + 0.25 + 0) / 4, rel=1e-6)
    loss.backward()
    omega = 1 / 4  # one channel, 2 x 2 latent pixels
    assert torch.allclose(z_student.grad, omega * gap_per_d * d, atol=1e-7)


def test_hsd_weight_depends_on_the_step_like_eq_8() -> None:
    schedule = two_step_schedule()
    z_teacher = torch.zeros(1, 1, 1, 1)
    z_student = torch.ones(1, 1, 1, 1, requires_grad=True)
    y, noise = torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    hsd_loss(z_student, z_teacher, y, noise, torch.tensor([1]), schedule, identity_teacher).backward()
    eta = 0.64  # index 1: (1 - eta) / (kappa sqrt(eta)) = 0.36 / 1.6, scale 1 / sqrt(4 * 0.64 + 1)
    expected = 0.36 / 1.6 * (1 - 0.36 / math.sqrt(4 * eta + 1))
    assert z_student.grad.item() == pytest.approx(expected, rel=1e-6)


def test_hsd_is_exactly_zero_with_zero_gradient_when_student_equals_teacher() -> None:
    schedule = two_step_schedule()
    teacher = nn.Conv2d(3, 3, 3, padding=1)
    z = torch.randn(2, 3, 8, 8)
    z_student = z.clone().requires_grad_(True)
    loss = hsd_loss(
        z_student, z, torch.randn_like(z), torch.randn_like(z), torch.tensor([0, 1]), schedule,
        lambda z_scaled, t: teacher(z_scaled),
    )
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(z_student.grad) == 0


def test_hsd_sends_no_gradient_into_the_teacher_or_its_output() -> None:
    schedule = two_step_schedule()
    teacher = nn.Conv2d(3, 3, 3, padding=1)
    z_teacher = torch.randn(2, 3, 8, 8, requires_grad=True)
    z_student = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss = hsd_loss(
        z_student, z_teacher, torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), schedule,
        lambda z_scaled, t: teacher(z_scaled),
    )
    assert loss.item() > 0
    loss.backward()
    assert z_student.grad is not None and z_student.grad.abs().sum() > 0
    assert z_teacher.grad is None
    assert all(p.grad is None for p in teacher.parameters())


def test_hsd_steps_are_uniform_over_the_papers_1_to_3() -> None:
    rng = torch.Generator().manual_seed(0)
    steps = sample_hsd_steps(600, rng)
    assert steps.dtype == torch.long
    assert sorted(steps.unique().tolist()) == [0, 1, 2]  # chain indices of t' = 1, 2, 3
    assert torch.bincount(steps).min() > 150
    with pytest.raises(ValueError, match="first <= last"):
        sample_hsd_steps(1, rng, first=3, last=2)


@pytest.fixture(scope="module")
def release() -> dict[str, torch.Tensor]:
    with np.load(RELEASE_HSD) as data:
        return {k: torch.from_numpy(v) for k, v in data.items()}


def release_teacher(release: dict[str, torch.Tensor]):
    """The reference's stand-in teacher: z0 = tanh(conv3x3([z_scaled, lq])) * (1 + t / 20)."""

    def denoise(z_scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(torch.cat([z_scaled, release["lq"]], 1), release["teacher_weight"], release["teacher_bias"], padding=1)
        return torch.tanh(h) * (1 + t[:, None, None, None] / 20)

    return denoise


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def test_teacher_target_and_distillation_match_the_release(release: dict[str, torch.Tensor]) -> None:
    schedule = ResShiftSchedule.from_config(ResShiftScheduleConfig())  # configs/TAD-SR.yaml's schedule
    z_teacher = schedule.sample(release_teacher(release), release["y"], release["noise"], deterministic=True)
    assert relative_error(z_teacher, release["z_teacher"]) < 1e-5
    distill = vanilla_distillation_loss(release["z_student"], release["z_teacher"])
    assert relative_error(distill, release["loss_distill"].mean()) < 1e-5


def test_hsd_gradient_matches_the_release_with_its_double_input_scaling(release: dict[str, torch.Tensor]) -> None:
    schedule = ResShiftSchedule.from_config(ResShiftScheduleConfig())
    gradients = {}
    for twice in (True, False):
        z_student = release["z_student"].clone().requires_grad_(True)
        hsd_loss(
            z_student, release["z_teacher"], release["y"], release["noise_hsd"], release["t_hsd"], schedule,
            release_teacher(release), scale_teacher_input_twice=twice,
        ).backward()
        gradients[twice] = z_student.grad
    assert relative_error(gradients[True], release["grad_hsd"]) < 1e-5
    assert relative_error(gradients[False], release["grad_hsd"]) > 1e-3  # the paper's single scaling differs
