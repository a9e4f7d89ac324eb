"""ResShift eta schedule, forward process, posterior and samplers (TAD-SR Eq. 1-3)."""

from __future__ import annotations

import pytest
import torch

from osdsr.diffusion.resshift import (
    ResShiftSchedule,
    ResShiftScheduleConfig,
    resshift_sqrt_etas,
    respaced_indices,
)

# sqrt(eta_t), t = 1..15, printed by the official release's code (github.com/zsyOAOA/ResShift @ 3ce1d81,
# models/gaussian_diffusion.py get_named_eta_schedule("exponential", 15, min_noise_level=0.04,
# etas_end=0.99, kappa=2.0, power=0.3)), the schedule of resshift_realsrx4_s15_v1.pth.
OFFICIAL_SQRT_ETAS_S15 = [
    0.02, 0.11716508229842353, 0.1763045552718477, 0.23362891654933204, 0.2915741277643212,
    0.3510092843173155, 0.41235614430048023, 0.4758577309189876, 0.5416716776269754, 0.609909933449294,
    0.6806580171436284, 0.7539852624945498, 0.8299506624114896, 0.908606387785769, 0.9899999999999998,
]  # fmt: skip
# The same code for the 4-step release (v3): T = 4, min_noise_level 0.2.
OFFICIAL_SQRT_ETAS_S4 = [0.1, 0.5200963722082474, 0.761381990619204, 0.9899999999999998]


@pytest.fixture
def schedule() -> ResShiftSchedule:
    return ResShiftSchedule.from_config(ResShiftScheduleConfig())


def test_schedule_matches_the_official_release_values() -> None:
    ours = resshift_sqrt_etas(ResShiftScheduleConfig())
    torch.testing.assert_close(ours, torch.tensor(OFFICIAL_SQRT_ETAS_S15, dtype=torch.float64), rtol=0, atol=1e-12)
    ours_s4 = resshift_sqrt_etas(ResShiftScheduleConfig(num_timesteps=4, min_noise_level=0.2))
    torch.testing.assert_close(ours_s4, torch.tensor(OFFICIAL_SQRT_ETAS_S4, dtype=torch.float64), rtol=0, atol=1e-12)


def test_schedule_rejects_an_end_below_its_start() -> None:
    with pytest.raises(ValueError, match="etas_end"):
        resshift_sqrt_etas(ResShiftScheduleConfig(min_noise_level=0.5, kappa=0.4, etas_end=0.4))


def test_deterministic_coefficients_sum_to_one(schedule: ResShiftSchedule) -> None:
    like = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    for t in range(schedule.num_timesteps):
        k_t, m_t, j_t = schedule.deterministic_coefficients(t, like)
        assert float(k_t + m_t + j_t) == pytest.approx(1.0, abs=1e-12)
        assert float(m_t) == pytest.approx(float((schedule.etas_prev[t] / schedule.etas[t]).sqrt()))


def test_deterministic_step_from_the_first_step_returns_pred_z0(schedule: ResShiftSchedule) -> None:
    z_t, y, z0_pred = torch.randn(3, 2, 3, 4, 4).unbind(0)
    torch.testing.assert_close(schedule.deterministic_step(z0_pred, 0, z_t, y), z0_pred)
    torch.testing.assert_close(schedule.step(z0_pred, 0, z_t, noise=None), z0_pred)


def test_q_sample_closed_form(schedule: ResShiftSchedule) -> None:
    z0, y, noise = torch.randn(3, 2, 3, 4, 4).unbind(0)
    t = 7
    eta = float(schedule.etas[t])
    expected = z0 + eta * (y - z0) + 2.0 * eta**0.5 * noise  # TAD-SR Eq. 1 with kappa = 2
    torch.testing.assert_close(schedule.q_sample(z0, y, t, noise), expected)
    # per-sample steps broadcast over the batch
    per_sample = schedule.q_sample(z0, y, torch.tensor([0, 14]), noise)
    torch.testing.assert_close(per_sample[1], schedule.q_sample(z0[1:], y[1:], 14, noise[1:])[0])
    # at the last step the mean is almost y: eta_T = 0.99^2
    torch.testing.assert_close(schedule.q_sample(z0, y, 14, torch.zeros_like(z0)), z0 + 0.9801 * (y - z0))


def test_prior_is_centred_on_y_with_the_last_step_noise(schedule: ResShiftSchedule) -> None:
    y, noise = torch.randn(2, 1, 3, 8, 8).unbind(0)
    torch.testing.assert_close(schedule.prior_sample(y, torch.zeros_like(y)), y)
    torch.testing.assert_close(schedule.prior_sample(y, noise) - y, 2.0 * 0.99 * noise)


def test_scale_input_normalises_by_the_marginal_std(schedule: ResShiftSchedule) -> None:
    z = torch.ones(1, 3, 2, 2)
    torch.testing.assert_close(schedule.scale_input(z, 14), z / (4 * 0.9801 + 1) ** 0.5)


def test_posterior_is_consistent_with_the_marginals(schedule: ResShiftSchedule) -> None:
    """z_t ~ q(z_t | z_0), then z_{t-1} ~ q(z_{t-1} | z_t, z_0) must have the marginal q(z_{t-1} | z_0)."""
    z0, y = torch.randn(2, 1, 1, 1, 1, dtype=torch.float64).unbind(0)
    kappa = schedule.kappa
    for t in range(1, schedule.num_timesteps):
        eta_t, eta_prev = schedule.etas[t], schedule.etas_prev[t]
        mean_at_zero, variance = schedule.posterior_mean_variance(z0, torch.zeros_like(z0), t)
        slope = schedule.posterior_mean_variance(z0, torch.ones_like(z0), t)[0] - mean_at_zero
        marginal_mean = z0 + eta_t * (y - z0)
        torch.testing.assert_close(slope * marginal_mean + mean_at_zero, z0 + eta_prev * (y - z0))
        torch.testing.assert_close(slope**2 * kappa**2 * eta_t + variance, kappa**2 * eta_prev * torch.ones_like(z0))


def oracle(schedule: ResShiftSchedule, z0: torch.Tensor, calls: list[tuple[torch.Tensor, torch.Tensor]]):
    def denoise_fn(z_scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append((z_scaled, t))
        return z0

    return denoise_fn


def test_deterministic_step_keeps_the_noise_of_the_forward_trajectory(schedule: ResShiftSchedule) -> None:
    """With the true z_0, SinSR's step maps q_sample(z0, y, t, eps) onto q_sample(z0, y, t-1, eps)."""
    z0, y, eps = torch.randn(3, 1, 3, 4, 4, dtype=torch.float64).unbind(0)
    for t in range(1, schedule.num_timesteps):
        z_t = schedule.q_sample(z0, y, t, eps)
        torch.testing.assert_close(schedule.deterministic_step(z0, t, z_t, y), schedule.q_sample(z0, y, t - 1, eps))


def test_sampler_runs_every_step_from_the_prior_with_an_oracle(schedule: ResShiftSchedule) -> None:
    z0, y, eps = torch.randn(3, 1, 3, 4, 4, dtype=torch.float64).unbind(0)
    for deterministic in (True, False):
        calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        step_noise = None if deterministic else list(torch.randn(14, 1, 3, 4, 4, dtype=torch.float64).unbind(0))
        out = schedule.sample(oracle(schedule, z0, calls), y, eps, deterministic=deterministic, step_noise=step_noise)
        torch.testing.assert_close(out, z0)
        assert [int(t) for _, t in calls] == list(range(14, -1, -1))
        torch.testing.assert_close(calls[0][0], schedule.scale_input(schedule.prior_sample(y, eps), 14))


def test_stochastic_sampler_uses_the_given_noise_and_is_reproducible(schedule: ResShiftSchedule) -> None:
    y, eps = torch.randn(2, 1, 3, 4, 4).unbind(0)

    def denoise_fn(z_scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * z_scaled + 0.01 * t.view(-1, 1, 1, 1)

    step_noise = list(torch.randn(14, 1, 3, 4, 4).unbind(0))
    first = schedule.sample(denoise_fn, y, eps, step_noise=step_noise)
    again = schedule.sample(denoise_fn, y, eps, step_noise=step_noise)
    other = schedule.sample(denoise_fn, y, eps, step_noise=[n.flip(-1) for n in step_noise])
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    from_generator = [schedule.sample(denoise_fn, y, eps, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    torch.testing.assert_close(from_generator[0], from_generator[1])
    with pytest.raises(ValueError, match="step_noise or a generator"):
        schedule.sample(denoise_fn, y, eps)
    with pytest.raises(ValueError, match="14 noise tensors"):
        schedule.sample(denoise_fn, y, eps, step_noise=step_noise[:3])


def test_stochastic_step_adds_the_posterior_std(schedule: ResShiftSchedule) -> None:
    z0, z_t, noise = torch.randn(3, 1, 3, 2, 2).unbind(0)
    mean, variance = schedule.posterior_mean_variance(z0, z_t, 5)
    torch.testing.assert_close(schedule.step(z0, 5, z_t, noise), mean + variance.sqrt() * noise)
    with pytest.raises(ValueError, match="noise"):
        schedule.step(z0, 5, z_t, None)


def test_respacing_keeps_the_official_indices(schedule: ResShiftSchedule) -> None:
    assert respaced_indices(15, 15) == list(range(15))
    assert respaced_indices(15, 5) == [0, 3, 6, 9, 12]
    assert respaced_indices(15, 4) == [0, 3, 7, 11]
    with pytest.raises(ValueError, match="1..15"):
        respaced_indices(15, 16)
    short = schedule.respace(5)
    assert short.num_timesteps == 5 and short.model_timesteps == [0, 3, 6, 9, 12]
    torch.testing.assert_close(short.etas, schedule.etas[[0, 3, 6, 9, 12]])
    z0, y, eps = torch.randn(3, 1, 3, 4, 4).unbind(0)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    short.sample(oracle(short, z0, calls), y, eps, deterministic=True)
    assert [int(t) for _, t in calls] == [12, 9, 6, 3, 0]  # the network sees the original indices


def test_one_step_chain_evaluates_once_at_the_last_index(schedule: ResShiftSchedule) -> None:
    one = schedule.last_step_only()
    y, eps = torch.randn(2, 1, 3, 4, 4).unbind(0)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    prediction = torch.randn(1, 3, 4, 4)
    out = one.sample(oracle(one, prediction, calls), y, eps, deterministic=True)
    torch.testing.assert_close(out, prediction)
    assert len(calls) == 1 and int(calls[0][1]) == 14
    torch.testing.assert_close(calls[0][0], schedule.scale_input(schedule.prior_sample(y, eps), 14))
