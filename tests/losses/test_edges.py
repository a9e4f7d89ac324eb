"""Sobel magnitude (D3SR Eq. 6-7) on hand-computed images."""

from __future__ import annotations

import math

import pytest
import torch

from osdsr.losses.edges import SOBEL_EPS, SOBEL_X, SOBEL_Y, sobel_magnitude

FLAT = math.sqrt(SOBEL_EPS)  # magnitude wherever both responses vanish


def test_kernels_are_d3sr_eq6() -> None:
    assert SOBEL_X == ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1))
    assert SOBEL_Y == ((-1, -2, -1), (0, 0, 0), (1, 2, 1))


def test_vertical_step_edge_by_hand() -> None:
    # columns 0-3 are 0, columns 4-7 are 1. At columns 3 and 4 the G_x window sees 0 on its left
    # column and 1 on its right: (1 - 0) * (1 + 2 + 1) = 4; G_y is 0 (rows are identical).
    # Everywhere else, including the replicate-padded border, both responses are 0.
    x = torch.zeros(1, 1, 5, 8)
    x[..., 4:] = 1.0
    expected = torch.full((1, 1, 5, 8), FLAT)
    expected[..., 3:5] = math.sqrt(16.0 + SOBEL_EPS)
    assert torch.allclose(sobel_magnitude(x), expected, rtol=0, atol=1e-6)


def test_horizontal_step_edge_by_hand() -> None:
    x = torch.zeros(1, 1, 8, 5)
    x[:, :, 4:] = 0.5  # G_y at rows 3 and 4: 0.5 * (1 + 2 + 1) = 2
    expected = torch.full((1, 1, 8, 5), FLAT)
    expected[:, :, 3:5] = math.sqrt(4.0 + SOBEL_EPS)
    assert torch.allclose(sobel_magnitude(x), expected, rtol=0, atol=1e-6)


def test_impulse_by_hand() -> None:
    # A single 1 at (2, 2). At (2, 3) the impulse sits at the G_x weight -2 and G_y weight 0: S = 2.
    # At (3, 3) it sits at weight -1 of both kernels: S = sqrt(2). At (2, 2) both centres are 0.
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    s = sobel_magnitude(x)[0, 0]
    assert s[2, 3].item() == pytest.approx(2.0, abs=1e-6)
    assert s[1, 2].item() == pytest.approx(2.0, abs=1e-6)
    assert s[3, 3].item() == pytest.approx(math.sqrt(2.0), abs=1e-6)
    assert s[2, 2].item() == pytest.approx(FLAT, abs=1e-9)


def test_constant_image_has_no_border_edges_and_finite_zero_gradient() -> None:
    # replicate padding: a zero-padded constant image would show edges along its border.
    # 0.5 is exact in binary, so the responses cancel to exactly 0: without eps the gradient is 0/0.
    x = torch.full((2, 3, 6, 6), 0.5, requires_grad=True)
    s = sobel_magnitude(x)
    assert torch.allclose(s, torch.full_like(s, FLAT), rtol=0, atol=1e-7)
    s.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.count_nonzero(x.grad) == 0


def test_channels_are_independent() -> None:
    x = torch.zeros(1, 3, 5, 8)
    x[:, 1, :, 4:] = 1.0  # step only in channel 1
    s = sobel_magnitude(x)
    assert s.shape == x.shape
    assert torch.allclose(s[:, 0], torch.full_like(s[:, 0], FLAT))
    assert torch.allclose(s[:, 2], torch.full_like(s[:, 2], FLAT))
    assert s[0, 1, 2, 3].item() == pytest.approx(4.0, abs=1e-6)


def test_rejects_non_batched_input() -> None:
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        sobel_magnitude(torch.zeros(3, 8, 8))
