"""PSNR / SSIM on Y against scikit-image on real photographs, and their edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from osdsr.metrics.fidelity import psnr, ssim
from osdsr.metrics.luma import crop_border, rgb_to_y

PHOTOS = ["hr/kodak/kodim01.png", "hr/scikit-image/coffee.png", "hr/scikit-image/camera.png", "hr/kodak/kodim04.png"]


def _hr_and_bicubic(path) -> tuple[np.ndarray, np.ndarray]:
    """The photo and its x4 bicubic down-then-up version (a typical SR baseline), both uint8."""
    hr = Image.open(path)
    width, height = hr.size
    restored = hr.resize((width // 4, height // 4), Image.BICUBIC).resize((width, height), Image.BICUBIC)
    return np.asarray(hr), np.asarray(restored)


@pytest.mark.parametrize("name", PHOTOS)
def test_psnr_and_ssim_match_scikit_image_on_photos(shared_data, name: str) -> None:
    hr, restored = _hr_and_bicubic(shared_data / name)
    y_hr = crop_border(rgb_to_y(hr), 4)
    y_restored = crop_border(rgb_to_y(restored), 4)
    expected_psnr = peak_signal_noise_ratio(y_hr, y_restored, data_range=255)
    expected_ssim = structural_similarity(
        y_hr, y_restored, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert abs(psnr(restored, hr, crop_border=4) - expected_psnr) < 1e-4
    assert abs(ssim(restored, hr, crop_border=4) - expected_ssim) < 1e-4
    assert 15 < expected_psnr < 40 and 0.3 < expected_ssim < 0.99  # a real degradation, not a trivial pair


def test_y_is_bt601_studio_range() -> None:
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(rgb), [[16.0, 235.0, 16 + 65.481, 16 + 128.553]])


def test_gray_equals_rgb_with_equal_channels() -> None:
    rng = np.random.default_rng(0)
    gray_a = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    gray_b = np.clip(gray_a.astype(int) + rng.integers(-9, 10, (40, 40)), 0, 255).astype(np.uint8)
    rgb_a, rgb_b = (np.repeat(g[:, :, None], 3, axis=2) for g in (gray_a, gray_b))
    assert psnr(gray_a, gray_b) == pytest.approx(psnr(rgb_a, rgb_b), abs=1e-9)
    assert ssim(gray_a[:, :, None], gray_b[:, :, None]) == pytest.approx(ssim(rgb_a, rgb_b), abs=1e-12)


def test_float_input_gives_the_uint8_values() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    as_float = [(x.astype(np.float32) / 255.0) for x in (a, b)]
    assert psnr(*as_float) == pytest.approx(psnr(a, b), abs=1e-6)
    assert ssim(*as_float) == pytest.approx(ssim(a, b), abs=1e-6)


def test_identical_images_give_inf_psnr_and_unit_ssim() -> None:
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert psnr(image, image) == float("inf")
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)


def test_crop_border_excludes_the_edges() -> None:
    gt = np.full((32, 32, 3), 128, dtype=np.uint8)
    pred = gt.copy()
    pred[:4] = 0  # damage only the top 4 rows
    assert psnr(pred, gt, crop_border=4) == float("inf")
    assert psnr(pred, gt, crop_border=3) < 30


def test_bad_inputs_raise_clear_errors() -> None:
    a = np.zeros((16, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, np.zeros((16, 17, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        psnr(a.astype(np.float32) + 2.0, a.astype(np.float32))
    with pytest.raises(ValueError, match="SSIM needs at least 11x11"):
        ssim(a, a, crop_border=4)
    with pytest.raises(ValueError, match="HxWx3"):
        psnr(np.zeros((16, 16, 4), dtype=np.uint8), np.zeros((16, 16, 4), dtype=np.uint8))


def test_psnr_rgb_is_the_plain_float64_formula_and_infinite_for_identical_inputs():
    from osdsr.metrics.fidelity import psnr_rgb

    rng = np.random.default_rng(0)
    reference = rng.random((8, 9, 3))
    pred = reference + 0.01  # every sample off by 0.01: MSE 1e-4, 40 dB at peak 1
    assert psnr_rgb(pred, reference) == pytest.approx(40.0, abs=1e-9)
    assert psnr_rgb(pred * 255, reference * 255, peak=255.0) == pytest.approx(40.0, abs=1e-9)
    assert psnr_rgb(reference, reference) == float("inf")
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_rgb(pred[:, :8], reference)
