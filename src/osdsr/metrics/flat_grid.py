"""Flat-area grid: how strongly an SR output draws a fixed pattern with a block period over flat areas.

A generator whose autoencoder decodes each latent token into its own pixel block (pixel-unshuffle
f4 / f8, or a VAE) can leave a faint pattern that repeats with the block period; the eye finds it in
skies and walls long before PSNR or NIQE do. The score needs no ground truth:

    cut the luma (8-bit levels) into ``period x period`` blocks; subtract from each block its best-fit
    plane (mean and slopes: a smooth gradient, as in a sky, is not a grid); keep the flat blocks (what is
    left varies by less than ``flat_std`` levels RMS); average the kept blocks position by position;
    report the RMS of that mean pattern, in 8-bit levels.

Content averages out over many flat blocks; a pattern that is the same in every block does not. A
bicubic upscale scores about 0.02-0.15 (rounding and residual texture); the pattern is visible at
about 0.5. The project's own measure, not a paper's.
"""

from __future__ import annotations

import numpy as np

from osdsr.metrics.luma import Y_FROM_RGB, Y_OFFSET, rgb_to_y

DEFAULT_PERIOD = 8  # a multiple of the f4 and f8 latent grids' periods
DEFAULT_FLAT_STD = 2.0  # 8-bit levels
MIN_FLAT_BLOCKS = 16


def flat_area_grid(image: np.ndarray, period: int = DEFAULT_PERIOD, flat_std: float = DEFAULT_FLAT_STD) -> float:
    """RMS (8-bit levels) of the mean pattern of the flat ``period``-pixel blocks of ``image``'s luma.

    ``image`` is HxWx3 RGB or gray, uint8 / uint16 / float in [0, 1]. Returns NaN when fewer than
    16 blocks are flat (nothing to measure).
    """
    luma = (rgb_to_y(image) - Y_OFFSET) * 255.0 / Y_FROM_RGB.sum()  # full-range 8-bit levels
    height, width = (luma.shape[0] // period) * period, (luma.shape[1] // period) * period
    blocks = luma[:height, :width].reshape(height // period, period, width // period, period)
    blocks = blocks.transpose(0, 2, 1, 3).reshape(-1, period, period)
    blocks = blocks - _plane_fit(blocks)
    flat = np.sqrt(np.mean(blocks**2, axis=(1, 2))) < flat_std
    if flat.sum() < MIN_FLAT_BLOCKS:
        return float("nan")
    pattern = blocks[flat].mean(axis=0)
    return float(np.sqrt(np.mean(pattern**2)))


def _plane_fit(blocks: np.ndarray) -> np.ndarray:
    """Least-squares ``a + b x + c y`` of each ``[N, p, p]`` block (the basis 1, x, y is orthogonal)."""
    period = blocks.shape[-1]
    coords = np.arange(period) - (period - 1) / 2
    x, y = np.meshgrid(coords, coords)  # x varies along columns, y along rows
    fit = blocks.mean(axis=(1, 2), keepdims=True)
    for basis in (x, y):
        fit = fit + (blocks * basis).sum(axis=(1, 2), keepdims=True) / (basis**2).sum() * basis
    return fit
