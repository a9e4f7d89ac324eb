"""NIQE, the "completely blind" natural image quality evaluator (Mittal, Soundararajan and Bovik, IEEE SPL 2013).

Lower is better. The image's Y channel (``osdsr.metrics.luma``, cropped and rounded to integers as MATLAB sees an
8-bit image) is cut into 96x96 blocks; at two scales (full, and MATLAB-bicubic half size) every block's
locally normalised (MSCN) coefficients are summarised by 18 parameters of generalised Gaussian fits. A
multivariate Gaussian fitted to the image's block features is compared with the one fitted to pristine natural
images (``niqe_pristine.json``). The steps follow the official MATLAB release as BasicSR reimplements it,
including its details: the 7x7 window with replicated borders, the 1e-3 grid for the shape parameter, and the
products of neighbours taken with wrap-around inside each block. Vectorised over blocks.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

import numpy as np
from scipy.ndimage import correlate
from scipy.special import gamma

from osdsr.metrics.luma import crop_border as crop_plane
from osdsr.metrics.luma import rgb_to_y
from osdsr.metrics.matlab_resize import imresize

NIQE_BLOCK = 96  # block side in pixels at full scale (official release, no overlap)
MSCN_STABILITY = 1.0  # C in Mittal et al. Eq. 1, for Y on the [0, 255] scale
# Shape-parameter grid searched by the moment-matching fit (official release: 0.2:0.001:10).
SHAPE_GRID = np.arange(0.2, 10.001, 0.001)
# Neighbour directions whose products are modelled (Mittal et al. Sec. II-B): horizontal, vertical, two diagonals.
NEIGHBOUR_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


class PristineModel(NamedTuple):
    mu: np.ndarray  # (36,)
    cov: np.ndarray  # (36, 36)
    window: np.ndarray  # (7, 7), sums to 1


@lru_cache(maxsize=1)
def pristine_model() -> PristineModel:
    """The standard pristine MVG model and Gaussian window shipped as package data (source in the file)."""
    text = resources.files("osdsr.metrics").joinpath("niqe_pristine.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return PristineModel(
        mu=np.asarray(data["mu_pris_param"], dtype=np.float64),
        cov=np.asarray(data["cov_pris_param"], dtype=np.float64),
        window=np.asarray(data["gaussian_window"], dtype=np.float64),
    )


def _shape_ratio(shape: np.ndarray) -> np.ndarray:
    """rho(alpha) = Gamma(2/alpha)^2 / (Gamma(1/alpha) Gamma(3/alpha)), strictly increasing in alpha."""
    return gamma(2.0 / shape) ** 2 / (gamma(1.0 / shape) * gamma(3.0 / shape))


def _fit_aggd(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moment-matching AGGD fit (Mittal et al. Eq. 7) of each row of ``samples`` (N, M) -> alpha, beta_l, beta_r.

    Blocks with no negative (or no positive) samples get NaN scales, which the final model fit skips,
    and alpha = 0.2 (the first grid value), as in the official code.
    """
    negative = samples < 0
    positive = samples > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt((samples**2 * negative).sum(axis=1) / negative.sum(axis=1))
        right_std = np.sqrt((samples**2 * positive).sum(axis=1) / positive.sum(axis=1))
        gamma_hat = left_std / right_std
        r_hat = np.mean(np.abs(samples), axis=1) ** 2 / np.mean(samples**2, axis=1)
        r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    # nearest grid value of rho (rho is increasing, so compare the two neighbours of the insertion point;
    # on a tie the smaller alpha wins, like argmin)
    grid_ratio = _shape_ratio(SHAPE_GRID)
    upper = np.clip(np.searchsorted(grid_ratio, r_hat_norm), 1, grid_ratio.size - 1)
    lower = upper - 1
    take_upper = (grid_ratio[upper] - r_hat_norm) ** 2 < (grid_ratio[lower] - r_hat_norm) ** 2
    alpha = SHAPE_GRID[np.where(take_upper, upper, lower)]
    alpha = np.where(np.isnan(r_hat_norm), SHAPE_GRID[0], alpha)
    spread = np.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    return alpha, left_std * spread, right_std * spread


def _block_features(blocks: np.ndarray) -> np.ndarray:
    """The 18 NSS features of each MSCN block in ``blocks`` (N, b, b) -> (N, 18)."""
    flat = blocks.reshape(blocks.shape[0], -1)
    alpha, beta_l, beta_r = _fit_aggd(flat)
    features = [alpha, (beta_l + beta_r) / 2]  # GGD fit of the coefficients (shape, spread)
    for shift in NEIGHBOUR_SHIFTS:
        products = (blocks * np.roll(blocks, shift, axis=(1, 2))).reshape(blocks.shape[0], -1)
        alpha, beta_l, beta_r = _fit_aggd(products)
        mean = (beta_r - beta_l) * gamma(2.0 / alpha) / gamma(1.0 / alpha)  # Mittal et al. Eq. 8
        features += [alpha, mean, beta_l, beta_r]
    return np.stack(features, axis=1)


def _mscn(y: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (Mittal et al. Eq. 1), replicated borders."""
    mu = correlate(y, window, mode="nearest")
    sigma = np.sqrt(np.abs(correlate(y * y, window, mode="nearest") - mu * mu))
    return (y - mu) / (sigma + MSCN_STABILITY)


def _blocks(plane: np.ndarray, block: int) -> np.ndarray:
    rows, cols = plane.shape[0] // block, plane.shape[1] // block
    return plane.reshape(rows, block, cols, block).transpose(0, 2, 1, 3).reshape(rows * cols, block, block)


def niqe_of_y(y: np.ndarray) -> float:
    """NIQE of a Y plane on the [0, 255] scale (already cropped and rounded)."""
    rows, cols = y.shape[0] // NIQE_BLOCK, y.shape[1] // NIQE_BLOCK
    if rows * cols < 2:
        raise ValueError(
            f"NIQE needs at least two {NIQE_BLOCK}x{NIQE_BLOCK} blocks, got an image of {y.shape[1]}x{y.shape[0]} "
            "pixels after cropping"
        )
    model = pristine_model()
    y = y[: rows * NIQE_BLOCK, : cols * NIQE_BLOCK]
    full_scale = _block_features(_blocks(_mscn(y, model.window), NIQE_BLOCK))
    half = imresize(y / 255.0, 0.5, antialiasing=True) * 255.0
    half_scale = _block_features(_blocks(_mscn(half, model.window), NIQE_BLOCK // 2))
    features = np.concatenate([full_scale, half_scale], axis=1)  # (blocks, 36)

    complete = features[~np.isnan(features).any(axis=1)]
    if complete.shape[0] < 2:
        raise ValueError("NIQE is undefined for this image: fewer than two blocks have any texture (flat image?)")
    mu = np.nanmean(features, axis=0)
    cov = np.cov(complete, rowvar=False)
    # Mittal et al. Eq. 10
    delta = model.mu - mu
    return float(np.sqrt(delta @ np.linalg.pinv((model.cov + cov) / 2.0) @ delta))


def niqe(image: np.ndarray, crop_border: int = 0) -> float:
    """NIQE of an RGB or gray image (uint8, uint16, or float in [0, 1]); ``crop_border`` pixels cut per side."""
    # the official code sees 8-bit Y values: round, as BasicSR does for MATLAB-consistent results
    y = np.round(crop_plane(rgb_to_y(image), crop_border))
    return niqe_of_y(y)
