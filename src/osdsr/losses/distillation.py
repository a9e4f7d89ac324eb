"""Distillation losses of the one-step ResShift students: vanilla distillation and TAD-SR's HSD.

- ``vanilla_distillation_loss``: MSE between the student's one-step z0 and the teacher's multi-step
  deterministic output from the same z_T (TAD-SR Eq. 6, TDDSR Eq. 6, SinSR's L_distill).
- ``hsd_loss``: high-frequency-enhanced score distillation (TAD-SR Eq. 7-8): both outputs are noised
  with the same noise to a small step t' and scored by the frozen teacher; the student is pulled
  along the difference of the two scores, without the teacher's Jacobian.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from osdsr.diffusion.resshift import ResShiftSchedule

# denoise_fn(z_t scaled by ``scale_input``, network step indices [B]) -> the frozen teacher's z0 prediction
TeacherDenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

HSD_FIRST_STEP = 1  # t' ~ U[1, 3]: TAD-SR Sec. IV-B ("uniformly sampled in [1, 3]")
HSD_LAST_STEP = 3


def vanilla_distillation_loss(z_student: torch.Tensor, z_teacher: torch.Tensor) -> torch.Tensor:
    """||F_phi(z_T, T, y) - f_theta(z_T, T, y)||^2, averaged over all elements   (TAD-SR Eq. 6).

    The teacher's output is a target: no gradient flows into it.
    """
    return F.mse_loss(z_student, z_teacher.detach())


def sample_hsd_steps(
    batch_size: int, rng: torch.Generator, first: int = HSD_FIRST_STEP, last: int = HSD_LAST_STEP
) -> torch.Tensor:
    """Step indices of t' ~ U{first, ..., last} (paper steps, 1 = least noise) on ``rng``'s device.

    Returned as chain indices ``t' - 1`` (index 0 is the paper's t = 1), as ``ResShiftSchedule`` takes them.
    """
    if not 1 <= first <= last:
        raise ValueError(f"HSD steps [{first}, {last}]: need 1 <= first <= last")
    return torch.randint(first - 1, last, (batch_size,), generator=rng, device=rng.device)


def hsd_loss(
    z_student: torch.Tensor,
    z_teacher: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    schedule: ResShiftSchedule,
    teacher_denoise: TeacherDenoiseFn,
    scale_teacher_input_twice: bool = False,
) -> torch.Tensor:
    """High-frequency-enhanced score distillation, stop-gradient form   (TAD-SR Eq. 7-8).

    Both outputs are noised with the same ``noise`` to step ``t`` (chain indices, [B]) by Eq. 1,
    ``z_t'^stu = q(z_student)`` and ``z_t'^tch = q(z_teacher)``, and the frozen teacher F predicts
    z0 from each. With the teacher's noise prediction eps = (z_t - z0_pred - eta (y - z0_pred)) /
    (kappa sqrt(eta)) (Eq. 14), Eq. 7 ``omega (eps(z_t'^stu) - eps(z_t'^tch))`` becomes (Eq. 8)

        g = omega * (1 - eta_t') / (kappa sqrt(eta_t')) * (z_stu - z_tch + F(z_t'^tch) - F(z_t'^stu)),

    with omega = 1 / (C * S) (C channels, S latent pixels). Like SDS, the loss omits the teacher's
    Jacobian: g is a constant (no gradient into the teacher or through its input). The returned value
    is the surrogate ``omega * 0.5 * ||z_stu - sg(z_stu - g / omega)||^2 = 0.5 ||g||^2 / omega``
    (batch mean), whose gradient with respect to ``z_student`` is exactly g (divided by the batch
    size). It is exactly zero when the student's and the teacher's outputs are equal, and no gradient
    reaches ``z_teacher``.

    ``scale_teacher_input_twice``: the release's quirk (TAD-SR release, gaussian_diffusion.py:844-845
    scale z_t' and hand it to ``ddim_sample``, whose ``p_mean_variance`` scales it again, l. 286): the
    teacher sees ``z_t' / std_t'^2`` instead of ``z_t' / std_t'``, std_t' = sqrt(kappa^2 eta_t' + 1).
    """
    z_teacher = z_teacher.detach()
    with torch.no_grad():
        z_student_const = z_student.detach()
        z_t_student = schedule.q_sample(z_student_const, y, t, noise)  # TAD-SR Eq. 1
        z_t_teacher = schedule.q_sample(z_teacher, y, t, noise)
        model_t = torch.as_tensor(schedule.model_timesteps, device=t.device)[t]

        def teacher_z0(z_t: torch.Tensor) -> torch.Tensor:
            z_scaled = schedule.scale_input(z_t, t)
            if scale_teacher_input_twice:
                z_scaled = schedule.scale_input(z_scaled, t)
            return teacher_denoise(z_scaled, model_t)

        z0_of_student = teacher_z0(z_t_student)
        z0_of_teacher = teacher_z0(z_t_teacher)
        eta = schedule.etas.to(device=t.device, dtype=z_student.dtype)[t].reshape(-1, *[1] * (z_student.ndim - 1))
        score_scale = (1 - eta) / (schedule.kappa * eta.sqrt())  # TAD-SR Eq. 8, omega_2 / omega
        score_gap = score_scale * (z_student_const - z_teacher + z0_of_teacher - z0_of_student)
    # TAD-SR Eq. 8 (stop-gradient form): d/dz_student of 0.5 * ||z - sg(z - g)||^2 is g
    surrogate = 0.5 * (z_student - (z_student_const - score_gap)).pow(2)
    return surrogate.flatten(1).mean(dim=1).mean()  # omega = 1 / (C * S), then the batch mean
