"""Lattice loss: the error pattern with the latent grid's period, by hand."""

from __future__ import annotations

import pytest
import torch

from osdsr.losses.lattice import lattice_loss


def tiled(pattern: torch.Tensor, blocks: int) -> torch.Tensor:
    """A ``[p, p]`` pattern repeated over ``blocks x blocks`` blocks, as a [1, 1, H, W] image."""
    return pattern.repeat(blocks, blocks)[None, None]


def test_a_grid_costs_its_energy_inside_the_block() -> None:
    pattern = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # block mean 0.25: deviations 0.75, -0.25 x 3
    target = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    loss = lattice_loss(target + tiled(pattern, 8), target, period=2, window=4)
    expected = (0.75**2 + 3 * 0.25**2) / 4  # the same pattern in every window of blocks
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_block_constant_errors_cost_nothing() -> None:
    target = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    offsets = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))  # one value per 4x4 block
    blocky = offsets.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    assert lattice_loss(target + blocky, target, period=4).item() == pytest.approx(0.0, abs=1e-12)


def test_a_grid_whose_sign_flips_between_neighbouring_blocks_averages_out() -> None:
    # texture-like error: the block pattern changes sign from block to block and cancels in the window
    pattern = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    signs = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4)  # a checkerboard of blocks
    error = (pattern.repeat(8, 8) * signs.repeat_interleave(2, 0).repeat_interleave(2, 1))[None, None]
    assert lattice_loss(error, torch.zeros_like(error), period=2, window=2).item() == pytest.approx(0.0, abs=1e-12)
    assert lattice_loss(error, torch.zeros_like(error), period=2, window=1).item() == pytest.approx(1.0)


def test_the_window_is_clipped_to_the_image() -> None:
    error = tiled(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), 3)
    assert lattice_loss(error, torch.zeros_like(error), period=2, window=8).item() == pytest.approx(1.0)


@pytest.mark.parametrize(("pred_shape", "target_shape", "message"), [
    ((1, 1, 8, 8), (1, 1, 8, 4), "one shape"),
    ((8, 8), (8, 8), "one shape"),
    ((1, 1, 6, 8), (1, 1, 6, 8), "not a multiple of the period 4"),
])
def test_bad_shapes_are_refused(pred_shape: tuple[int, ...], target_shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lattice_loss(torch.zeros(pred_shape), torch.zeros(target_shape), period=4)
