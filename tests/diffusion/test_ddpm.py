"""SD's DDPM schedule: hand-computed abar, D3SR Eq. 1 (pred_x0) and Eq. 4 (add_noise) with t = 0 clean."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from osdsr.diffusion.ddpm import SD21_SCHEDULER_CONFIG, DDPMSchedule


def hand_alphas_cumprod() -> np.ndarray:
    """SD's scaled-linear betas: linspace(sqrt(0.00085), sqrt(0.012), 1000)^2, abar = cumprod(1 - beta)."""
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000) ** 2
    return np.cumprod(1.0 - betas)


@pytest.fixture(scope="module")
def schedule() -> DDPMSchedule:
    return DDPMSchedule(SD21_SCHEDULER_CONFIG)


def test_alphas_cumprod_match_the_scaled_linear_formula(schedule: DDPMSchedule) -> None:
    hand = hand_alphas_cumprod()
    assert schedule.alphas_cumprod.shape == (1000,)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), hand, atol=1e-6)
    assert schedule.alphas_cumprod[0].item() == pytest.approx(0.99915, abs=1e-6)  # not clean
    assert schedule.alphas_cumprod[50].item() == pytest.approx(0.951577, abs=1e-6)


def test_add_noise_is_eq4_in_diffusion_steps(schedule: DDPMSchedule) -> None:
    z = torch.tensor([[1.5, -0.5]], dtype=torch.float64).view(2, 1)
    noise = torch.tensor([0.25, 2.0], dtype=torch.float64).view(2, 1)
    t = torch.tensor([51, 1000])
    abar = hand_alphas_cumprod()[[50, 999]]  # step t uses alphas_cumprod[t - 1]
    expected = np.sqrt(abar) * z.squeeze(1).numpy() + np.sqrt(1 - abar) * noise.squeeze(1).numpy()
    np.testing.assert_allclose(schedule.add_noise(z, t, noise).squeeze(1).numpy(), expected, atol=1e-7)
    # D3SR Eq. 4 by hand at step 51: sqrt(0.951577) * 1.5 + sqrt(0.048423) * 0.25
    assert schedule.add_noise(z[:1], t[:1], noise[:1]).item() == pytest.approx(1.463232 + 0.055013, abs=1e-5)


def test_add_noise_at_step_zero_returns_the_clean_latent(schedule: DDPMSchedule) -> None:
    z = torch.randn(3, 4, 5, 5)
    noise = torch.randn(3, 4, 5, 5)
    out = schedule.add_noise(z, torch.zeros(3, dtype=torch.long), noise)
    assert torch.equal(out, z)
    mixed = schedule.add_noise(z, torch.tensor([0, 1, 1000]), noise)
    assert torch.equal(mixed[0], z[0]) and not torch.allclose(mixed[1], z[1]) and not torch.allclose(mixed[2], z[2])


def test_add_noise_refuses_steps_outside_0_to_T(schedule: DDPMSchedule) -> None:
    z = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 1000\]"):
        schedule.add_noise(z, torch.tensor([1001]), z)
    with pytest.raises(ValueError, match=r"\[0, 1000\]"):
        schedule.add_noise(z, torch.tensor([-1]), z)


def test_unet_index_of_a_diffusion_step(schedule: DDPMSchedule) -> None:
    assert schedule.unet_index(torch.tensor([0, 1, 2, 51, 1000])).tolist() == [0, 0, 1, 50, 999]


def test_pred_x0_is_eq1_at_a_unet_index(schedule: DDPMSchedule) -> None:
    z_lr = torch.tensor([2.0], dtype=torch.float64).view(1, 1)
    eps = torch.tensor([0.5], dtype=torch.float64).view(1, 1)
    # D3SR Eq. 1 at T_L = 50 (UNet index): (2 - sqrt(1 - 0.951577) * 0.5) / sqrt(0.951577)
    z_hr = schedule.pred_x0(z_lr, eps, torch.tensor([50]))
    assert z_hr.item() == pytest.approx((2.0 - 0.220053 * 0.5) / 0.975488, abs=1e-5)
    # one network evaluation at UNet index i inverts F(z, i + 1) for the true noise
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    noise = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    step = torch.tensor([51, 700])
    noisy = schedule.add_noise(z, step, noise)
    torch.testing.assert_close(schedule.pred_x0(noisy, noise, schedule.unet_index(step)), z)


def test_v_prediction_recovers_x0() -> None:
    schedule = DDPMSchedule({**SD21_SCHEDULER_CONFIG, "prediction_type": "v_prediction"})
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    noise = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    index = torch.tensor([10, 900])
    abar = schedule.alphas_cumprod[index].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * z + (1 - abar).sqrt() * noise
    v = abar.sqrt() * noise - (1 - abar).sqrt() * z
    torch.testing.assert_close(schedule.pred_x0(noisy, v, index), z)


def test_unknown_prediction_type_is_refused() -> None:
    with pytest.raises(ValueError, match="prediction_type"):
        DDPMSchedule({**SD21_SCHEDULER_CONFIG, "prediction_type": "flow"})


@pytest.mark.parametrize(
    "config",
    [
        SD21_SCHEDULER_CONFIG,
        {},  # diffusers' defaults: linear 1e-4 .. 0.02
        {"beta_schedule": "linear", "beta_start": 0.001, "beta_end": 0.03, "num_train_timesteps": 500},
        {**SD21_SCHEDULER_CONFIG, "_class_name": "PNDMScheduler", "skip_prk_steps": True},  # SD-2.1's own file
        {"beta_schedule": "squaredcos_cap_v2"},  # taken from diffusers
    ],
)
def test_schedule_is_diffusers_ddpm_scheduler_exactly(config: dict) -> None:
    from diffusers import DDPMScheduler

    expected = DDPMScheduler.from_config(config)
    schedule = DDPMSchedule(config)
    assert torch.equal(schedule.alphas_cumprod, expected.alphas_cumprod.double())
    assert schedule.config == {k: expected.config[k] for k in SD21_SCHEDULER_CONFIG}
