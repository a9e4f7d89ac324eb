"""MATLAB-style bicubic imresize: coordinate mapping, antialiasing, mirrored borders."""

from __future__ import annotations

import numpy as np
import pytest

from osdsr.metrics.matlab_resize import imresize, resize_matrix


@pytest.mark.parametrize(("scale", "antialiasing"), [(0.5, True), (0.5, False), (0.25, True), (2.0, True)])
def test_rows_sum_to_one_and_output_size_is_ceil(scale: float, antialiasing: bool) -> None:
    matrix = resize_matrix(37, int(np.ceil(37 * scale)), scale, antialiasing)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
    assert imresize(np.zeros((37, 21)), scale, antialiasing).shape == (np.ceil(37 * scale), np.ceil(21 * scale))


@pytest.mark.parametrize(("scale", "antialiasing"), [(0.5, True), (0.5, False), (0.25, True), (2.0, False)])
def test_linear_ramp_is_sampled_at_matlab_coordinates(scale: float, antialiasing: bool) -> None:
    # A symmetric, normalised kernel reproduces a linear function exactly away from the borders, so the
    # interior outputs reveal where each output pixel sits: MATLAB maps 1-based k to k / scale + (1 - 1/scale) / 2.
    length = 64
    ramp = np.tile(np.arange(1, length + 1, dtype=np.float64)[:, None], (1, 3))
    out = imresize(ramp, scale, antialiasing)[:, 0]
    position = np.arange(1, out.size + 1)
    expected = position / scale + 0.5 * (1 - 1 / scale)
    margin = int(np.ceil(4 / scale)) if scale < 1 else 4
    interior = slice(margin, out.size - margin)
    np.testing.assert_allclose(out[interior], expected[interior], atol=1e-10)


def test_antialiasing_suppresses_frequencies_above_the_output_nyquist() -> None:
    # period 2.5 px: above the Nyquist limit of the half-size output (period 4 px), so it can only alias
    wave = np.cos(2 * np.pi * np.arange(200) / 2.5)[:, None]
    with_aa = np.ptp(imresize(wave, 0.5, antialiasing=True)[10:-10])
    without = np.ptp(imresize(wave, 0.5, antialiasing=False)[10:-10])
    assert with_aa < 0.1 < 0.5 < without


def test_borders_are_mirrored() -> None:
    step = np.zeros((16, 1))
    step[0] = 1.0  # a bright first row: mirroring counts it twice for the first output
    first = resize_matrix(16, 8, 0.5, True)[0]
    assert imresize(step, 0.5)[0, 0] == pytest.approx(first[0])
    assert first[0] > resize_matrix(16, 8, 0.5, True)[1, 0]
