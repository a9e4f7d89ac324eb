"""The ResShift family's model types and eta-schedule settings, importable without torch.

``osdsr schedule`` and ``osdsr convert`` show these in their ``--help``, which must not wait for torch;
the schedule itself (``osdsr.diffusion.resshift``) and the models (``osdsr.models.resshift_sr``) use them.
"""

from __future__ import annotations

from dataclasses import dataclass

from osdsr.config import ranged

TEACHER_TYPE = "resshift"
STUDENT_TYPES = ("sinsr", "tadsr", "tddsr")


@dataclass(frozen=True)
class ResShiftScheduleConfig:
    """Eta schedule; the defaults are the official x4 real-SR release (v1/v2, 15 steps).

    ``min_noise_level`` is the noise std ``kappa * sqrt(eta_1)`` of the first step (for kappa >= 1;
    the official code starts sqrt(eta) at ``min(min_noise_level / kappa, min_noise_level)``) and
    ``etas_end`` is ``sqrt(eta_T)``. The official 4-step release (v3) uses T = 4, min_noise_level 0.2.
    """

    num_timesteps: int = ranged(15, "[1, inf)")
    kappa: float = ranged(2.0, "(0, inf)")
    power: float = ranged(0.3, "(0, inf)")
    min_noise_level: float = ranged(0.04, "(0, 1)")
    etas_end: float = ranged(0.99, "(0, 1)")

    def __post_init__(self) -> None:
        if self.num_timesteps < 2:
            raise ValueError(f"schedule num_timesteps must be at least 2, got {self.num_timesteps}")
        if self.kappa <= 0 or self.power <= 0 or self.min_noise_level <= 0:
            raise ValueError("schedule kappa, power and min_noise_level must be positive")
        if not 0 < self.etas_end <= 1:
            raise ValueError(f"schedule etas_end (sqrt(eta_T)) must be in (0, 1], got {self.etas_end}")
