"""Flat-area grid score on synthetic images with and without a periodic pattern."""

from __future__ import annotations

import math

import numpy as np
import pytest

from osdsr.metrics.flat_grid import flat_area_grid


def sky(seed: int = 0) -> np.ndarray:
    """A smooth gradient in [0, 1] with faint noise: flat everywhere at the 2-level threshold."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.3, 0.5, 256)[None, :].repeat(256, axis=0)
    return np.clip(ramp + rng.normal(0, 0.5 / 255, ramp.shape), 0, 1)


def test_a_repeated_pattern_scores_its_rms_and_smooth_content_nearly_nothing() -> None:
    gray = sky()
    assert flat_area_grid(gray) < 0.1
    pattern = np.zeros((8, 8))
    pattern[::4, ::4] = 1.0  # one level up at every LR pixel of an f4 grid
    gridded = gray + np.tile(pattern, (32, 32)) / 255
    # less its plane fit: the impulses at 0 and 4 of a centred axis tilt the fit by a little
    x = np.arange(8) - 3.5
    basis = [np.ones((8, 8)), np.tile(x, (8, 1)), np.tile(x[:, None], (1, 8))]
    residual = pattern - sum((pattern * b).sum() / (b * b).sum() * b for b in basis)
    assert flat_area_grid(gridded) == pytest.approx(math.sqrt(np.mean(residual**2)), abs=0.05)


def test_rgb_and_gray_of_the_same_picture_score_alike() -> None:
    gray = sky(1)
    assert flat_area_grid(np.repeat(gray[:, :, None], 3, axis=2)) == pytest.approx(flat_area_grid(gray))


def test_textured_images_have_nothing_to_measure() -> None:
    noise = np.random.default_rng(2).random((128, 128))
    assert math.isnan(flat_area_grid(noise))
