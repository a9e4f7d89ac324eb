"""ResShift's residual-shifting diffusion: the eta schedule, q(z_t | z_0, y), its posterior and samplers.

Notation (TAD-SR Sec. 3, after ResShift and SinSR): ``z_0`` is the HR latent, ``y`` the latent of the
bicubic-upsampled LR image, and the forward process shifts ``z_0`` towards ``y`` while adding noise::

    q(z_t | z_0, y) = N(z_0 + eta_t (y - z_0), kappa^2 eta_t I)        (TAD-SR Eq. 1)

Steps are indexed as in the official release and as the network sees them: index ``i`` in
``[0, T-1]`` is the paper's step ``t = i + 1``; the paper's ``eta_0 = 0`` (the clean end) has no index.
The network predicts ``z_0`` from ``(z_t / sqrt(kappa^2 eta_t + 1), i, LR image)``.

This module imports no network: samplers take the denoiser as a callable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from osdsr.diffusion.resshift_config import ResShiftScheduleConfig

# denoise_fn(z_t scaled by ``scale_input``, raw step indices [B] (long)) -> predicted z_0
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def resshift_sqrt_etas(config: ResShiftScheduleConfig) -> torch.Tensor:
    """sqrt(eta_t), t = 1..T, float64: geometric between its end points in the warped time ((t-1)/(T-1))^p.

    sqrt(eta_t) = s_1 * (s_T / s_1) ** (((t - 1) / (T - 1)) ** p), with s_1 = min(mnl / kappa, mnl) and
    s_T = etas_end: the "exponential" schedule of the ResShift paper and release.
    """
    sqrt_eta_start = min(config.min_noise_level / config.kappa, config.min_noise_level)
    if sqrt_eta_start >= config.etas_end:
        raise ValueError(
            f"schedule: sqrt(eta_1) = {sqrt_eta_start} must be below etas_end = {config.etas_end}; "
            "lower min_noise_level or raise etas_end"
        )
    warped_time = torch.linspace(0, 1, config.num_timesteps, dtype=torch.float64, device="cpu") ** config.power
    return sqrt_eta_start * torch.exp(warped_time * math.log(config.etas_end / sqrt_eta_start))


def respaced_indices(num_timesteps: int, steps: int) -> list[int]:
    """The step indices kept when sampling with ``steps`` < T: floor(T / steps * k), k = 0..steps-1.

    This is the official release's respacing (``space_timesteps``): the kept steps form a shorter
    chain of the same process, and the network still sees the original indices. The last kept
    index is below T-1 unless ``steps`` divides evenly (T=15, steps=5 keeps 0, 3, 6, 9, 12).
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"--steps {steps}: the schedule has T = {num_timesteps} steps; use 1..{num_timesteps}")
    return sorted({int(num_timesteps / steps * k) for k in range(steps)})


class ResShiftSchedule:
    """One ResShift chain: eta values of its steps, kappa, and the network's index for each step."""

    def __init__(self, sqrt_etas: torch.Tensor, kappa: float, model_timesteps: Sequence[int] | None = None) -> None:
        self.sqrt_etas = sqrt_etas.to(device="cpu", dtype=torch.float64)  # small tables, on the CPU always
        self.etas = self.sqrt_etas**2
        self.etas_prev = torch.cat([self.etas.new_zeros(1), self.etas[:-1]])  # eta_{t-1}; eta_0 = 0
        self.alphas = self.etas - self.etas_prev  # alpha_t = eta_t - eta_{t-1} (TAD-SR Eq. 2)
        self.kappa = float(kappa)
        n = len(self.etas)
        self.model_timesteps = list(range(n)) if model_timesteps is None else list(model_timesteps)
        if len(self.model_timesteps) != n:
            raise ValueError("model_timesteps must give one network index per step")

    @classmethod
    def from_config(cls, config: ResShiftScheduleConfig) -> ResShiftSchedule:
        return cls(resshift_sqrt_etas(config), config.kappa)

    @property
    def num_timesteps(self) -> int:
        return len(self.etas)

    @property
    def timesteps(self) -> list[int]:
        """Sampling order: step indices from T-1 down to 0."""
        return list(range(self.num_timesteps - 1, -1, -1))

    def subchain(self, kept: Sequence[int]) -> ResShiftSchedule:
        """The chain through the given steps only (ascending indices); the network keeps their indices."""
        return ResShiftSchedule(self.sqrt_etas[list(kept)], self.kappa, [self.model_timesteps[i] for i in kept])

    def respace(self, steps: int) -> ResShiftSchedule:
        """A shorter chain over the steps ``respaced_indices`` keeps (see there)."""
        return self.subchain(respaced_indices(self.num_timesteps, steps))

    def last_step_only(self) -> ResShiftSchedule:
        """The one-step chain of the distilled students: z_T -> z_0 in one evaluation at t = T-1."""
        return self.subchain([self.num_timesteps - 1])

    def model_t(self, t: int, batch_size: int, device: torch.device) -> torch.Tensor:
        """The network's raw step input for chain step ``t``, as a ``[B]`` long tensor."""
        return torch.full((batch_size,), self.model_timesteps[t], dtype=torch.long, device=device)

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """values[t] broadcast to ``like`` (t: an int or a ``[B]`` tensor of step indices)."""
        index = torch.as_tensor(t, device=values.device).long()
        picked = values[index].to(like.dtype).to(like.device)  # cast first: some devices have no float64
        return picked.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, z0: torch.Tensor, y: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """z_t = z_0 + eta_t (y - z_0) + kappa sqrt(eta_t) eps   (TAD-SR Eq. 1)."""
        eta_t = self._at(self.etas, t, z0)
        return z0 + eta_t * (y - z0) + self.kappa * eta_t.sqrt() * noise

    def prior_sample(self, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z_T = y + kappa sqrt(eta_T) eps: the start of sampling (Eq. 1 at t = T with z_0 -> y)."""
        return y + self.kappa * float(self.sqrt_etas[-1]) * noise

    def scale_input(self, z_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Network input z_t / sqrt(kappa^2 eta_t + 1): unit variance for unit-variance latents."""
        return z_t / (self.kappa**2 * self._at(self.etas, t, z_t) + 1).sqrt()

    def posterior_mean_variance(
        self, z0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(z_{t-1} | z_t, z_0, y)   (TAD-SR Eq. 2).

        mean = eta_{t-1}/eta_t z_t + alpha_t/eta_t z_0,  var = kappa^2 eta_{t-1}/eta_t alpha_t.
        """
        eta_t = self._at(self.etas, t, z_t)
        eta_prev = self._at(self.etas_prev, t, z_t)
        alpha_t = self._at(self.alphas, t, z_t)
        mean = eta_prev / eta_t * z_t + alpha_t / eta_t * z0
        variance = self.kappa**2 * eta_prev / eta_t * alpha_t
        return mean, variance

    def step(self, z0_pred: torch.Tensor, t: int, z_t: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Stochastic ancestral step: a sample of q(z_{t-1} | z_t, z0_pred)   (TAD-SR Eq. 2).

        ``noise`` (standard normal, shaped like ``z_t``) is needed for t > 0; the last step returns the mean.
        """
        mean, variance = self.posterior_mean_variance(z0_pred, z_t, t)
        if t == 0:
            return mean
        if noise is None:
            raise ValueError("a stochastic step above t = 0 needs a noise tensor")
        return mean + variance.sqrt() * noise

    def deterministic_coefficients(
        self, t: torch.Tensor | int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k_t, m_t, j_t) of SinSR's deterministic step, broadcast to ``like``   (TAD-SR Eq. 3).

        m_t = sqrt(eta_{t-1} / eta_t), j_t = eta_{t-1} - sqrt(eta_{t-1} eta_t), k_t = 1 - j_t - m_t.
        """
        eta_t = self._at(self.etas, t, like)
        eta_prev = self._at(self.etas_prev, t, like)
        m_t = (eta_prev / eta_t).sqrt()
        j_t = eta_prev - (eta_prev * eta_t).sqrt()
        k_t = 1 - j_t - m_t
        return k_t, m_t, j_t

    def deterministic_step(
        self, z0_pred: torch.Tensor, t: torch.Tensor | int, z_t: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """z_{t-1} = k_t z_0 + m_t z_t + j_t y   (TAD-SR Eq. 3, SinSR's deterministic sampler)."""
        k_t, m_t, j_t = self.deterministic_coefficients(t, z_t)
        return k_t * z0_pred + m_t * z_t + j_t * y

    def sample(
        self,
        denoise_fn: DenoiseFn,
        y: torch.Tensor,
        prior_noise: torch.Tensor,
        *,
        deterministic: bool = False,
        step_noise: Sequence[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Run the chain from z_T = y + kappa sqrt(eta_T) eps down to z_0.

        Stochastic sampling needs one noise tensor for each of the T-1 steps above t = 0, given as
        ``step_noise`` or drawn from ``generator``.
        """
        noisy_steps = self.num_timesteps - 1
        if not deterministic and step_noise is None:
            if generator is None:
                raise ValueError("stochastic sampling needs step_noise or a generator")
            step_noise = [
                torch.randn(y.shape, generator=generator, device=generator.device, dtype=y.dtype).to(y.device)
                for _ in range(noisy_steps)
            ]
        if not deterministic and len(step_noise) != noisy_steps:
            raise ValueError(f"stochastic sampling with {self.num_timesteps} steps needs {noisy_steps} noise tensors")
        z_t = self.prior_sample(y, prior_noise)
        for k, t in enumerate(self.timesteps):
            z0_pred = denoise_fn(self.scale_input(z_t, t), self.model_t(t, z_t.shape[0], z_t.device))
            if deterministic:
                z_t = self.deterministic_step(z0_pred, t, z_t, y)
            else:
                z_t = self.step(z0_pred, t, z_t, step_noise[k] if t > 0 else None)
        return z_t  # the step from t = 0 returns z0_pred itself (eta_0 = 0)
