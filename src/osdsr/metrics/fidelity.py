"""Full-reference fidelity: PSNR and SSIM on the Y channel, with BasicSR's conventions.

Both images go to BT.601 Y in [16, 235] (``osdsr.metrics.luma``), lose ``crop_border`` pixels on each side
(the SR scale, 4, by default), and are compared in float64 with a peak value of 255. Float inputs are used as
they are (no rounding to 8 bits); 8-bit files read as floats give the same values as their uint8 arrays.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from osdsr.metrics.luma import crop_border as crop_plane
from osdsr.metrics.luma import rgb_to_y

DEFAULT_CROP_BORDER = 4  # the x4 SR scale, BasicSR's crop_border convention
PEAK = 255.0  # PSNR / SSIM dynamic range on Y (BasicSR: the [0, 255] scale, although Y spans [16, 235])

# SSIM (Wang et al. 2004, Eq. 13) constants and window: 11x11 Gaussian, sigma 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * PEAK) ** 2
SSIM_C2 = (0.03 * PEAK) ** 2


def _y_pair(pred: np.ndarray, gt: np.ndarray, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth differ in shape: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    return crop_plane(rgb_to_y(pred), crop_border), crop_plane(rgb_to_y(gt), crop_border)


def psnr(pred: np.ndarray, gt: np.ndarray, crop_border: int = DEFAULT_CROP_BORDER) -> float:
    """PSNR in dB on Y (peak 255). Identical images give ``inf`` (the MSE is zero), as in BasicSR."""
    y_pred, y_gt = _y_pair(pred, gt, crop_border)
    mse = float(np.mean((y_pred - y_gt) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(PEAK**2 / mse))


def psnr_rgb(pred: np.ndarray, reference: np.ndarray, peak: float = 1.0) -> float:
    """PSNR in dB over every pixel and channel as given (no Y conversion, no border crop), in float64.

    For comparing two renderings of one result (runtimes, precisions, file formats); identical inputs give ``inf``.
    """
    pred, reference = np.asarray(pred, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if pred.shape != reference.shape:
        raise ValueError(f"the two images differ in shape: {pred.shape} vs {reference.shape}")
    mse = float(np.mean((pred - reference) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(peak**2 / mse))


def _gaussian_window() -> np.ndarray:
    offsets = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
    window = np.exp(-(offsets**2) / (2.0 * SSIM_SIGMA**2))
    return window / window.sum()


def _filter_valid(plane: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable correlation keeping only positions where the whole window fits (no border padding)."""
    rows = sliding_window_view(plane, window.size, axis=0) @ window
    return sliding_window_view(rows, window.size, axis=1) @ window


def ssim(pred: np.ndarray, gt: np.ndarray, crop_border: int = DEFAULT_CROP_BORDER) -> float:
    """Mean SSIM on Y: Gaussian-weighted local statistics over the valid region (BasicSR's ``_ssim``)."""
    y_pred, y_gt = _y_pair(pred, gt, crop_border)
    if min(y_pred.shape) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after cropping {crop_border} per side, "
            f"got {y_pred.shape[1]}x{y_pred.shape[0]}"
        )
    window = _gaussian_window()
    mu_pred = _filter_valid(y_pred, window)
    mu_gt = _filter_valid(y_gt, window)
    var_pred = _filter_valid(y_pred**2, window) - mu_pred**2
    var_gt = _filter_valid(y_gt**2, window) - mu_gt**2
    cov = _filter_valid(y_pred * y_gt, window) - mu_pred * mu_gt
    # Wang et al. 2004, Eq. 13
    ssim_map = ((2 * mu_pred * mu_gt + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_pred**2 + mu_gt**2 + SSIM_C1) * (var_pred + var_gt + SSIM_C2)
    )
    return float(ssim_map.mean())
