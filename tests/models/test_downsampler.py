"""TDDSR's learnable downsampler: starts as area downsampling, learns a degradation, checks its input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from osdsr.models.downsampler import LearnableDownsampler


def test_starts_as_area_downsampling() -> None:
    hr = torch.rand(2, 3, 32, 16) * 2 - 1
    lr = LearnableDownsampler(scale=4, channels=8)(hr)
    assert lr.shape == (2, 3, 8, 4)
    torch.testing.assert_close(lr, F.avg_pool2d(hr, 4))


def test_learns_a_different_degradation() -> None:
    torch.manual_seed(0)
    down = LearnableDownsampler(scale=4, channels=16)
    optimizer = torch.optim.Adam(down.parameters(), lr=3e-3)
    hr = torch.rand(4, 3, 16, 16) * 2 - 1
    target = hr[..., 1::4, 2::4]  # point sampling: not what area downsampling gives
    losses = []
    for _ in range(60):
        loss = F.mse_loss(down(hr), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_refuses_bad_scale_and_sizes() -> None:
    with pytest.raises(ValueError, match="power of two"):
        LearnableDownsampler(scale=3)
    with pytest.raises(ValueError, match="multiples of 4"):
        LearnableDownsampler(scale=4, channels=4)(torch.zeros(1, 3, 10, 12))
