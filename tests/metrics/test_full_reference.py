"""MS-SSIM, GMSD and HaarPSI against piq's values on real photographs, and their basic behaviour.

The reference values (``full_reference_piq_values.json``, its ``about`` says how they were made) are
piq 0.8.0's, computed once in a throwaway environment; piq is not a dependency of the project.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osdsr.metrics.full_reference import gmsd, haarpsi, ms_ssim
from osdsr.metrics.registry import METRICS

REFERENCE = json.loads((Path(__file__).parent / "full_reference_piq_values.json").read_text())
FUNCTIONS = {"ms_ssim": ms_ssim, "gmsd": gmsd, "haarpsi": haarpsi}


def _pair(shared_data: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The degraded crop and its ground truth, exactly as the reference values were made."""
    width, height = REFERENCE["crop"]
    image = Image.open(shared_data / name)
    image = image.convert("L") if image.mode in ("L", "I;16", "I") else image.convert("RGB")
    left, top = (image.width - width) // 2, (image.height - height) // 2
    gt = image.crop((left, top, left + width, top + height))
    pred = gt.resize((width // 4, height // 4), Image.BICUBIC).resize((width, height), Image.BICUBIC)
    return np.asarray(pred).astype(np.float64) / 255, np.asarray(gt).astype(np.float64) / 255


@pytest.mark.parametrize("name", sorted(REFERENCE["images"]))
def test_metrics_match_piq_on_real_photographs(shared_data: Path, name: str) -> None:
    pred, gt = _pair(shared_data, name)
    for metric, expected in REFERENCE["images"][name].items():
        assert FUNCTIONS[metric](pred, gt) == pytest.approx(expected, abs=1e-4), metric


def test_reference_covers_ten_photographs_in_colour_and_gray() -> None:
    images = REFERENCE["images"]
    assert len(images) >= 10 and {"hr/scikit-image/camera.png", "hr/kodak/kodim01.png"} <= set(images)


def test_identical_images_score_perfectly_and_noise_scores_worse() -> None:
    rng = np.random.default_rng(0)
    gt = rng.random((170, 181, 3)) * 0.5 + np.linspace(0, 0.5, 181)[None, :, None]
    noisy = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
    noisier = np.clip(gt + rng.normal(0, 0.2, gt.shape), 0, 1)
    assert ms_ssim(gt, gt) == pytest.approx(1.0) and haarpsi(gt, gt) == pytest.approx(1.0)
    assert gmsd(gt, gt) == pytest.approx(0.0, abs=1e-12)
    assert ms_ssim(noisier, gt) < ms_ssim(noisy, gt) < 1.0
    assert haarpsi(noisier, gt) < haarpsi(noisy, gt) < 1.0
    assert gmsd(noisier, gt) > gmsd(noisy, gt) > 0.0


def test_too_small_or_mismatched_images_raise() -> None:
    with pytest.raises(ValueError, match="at least 161x161"):
        ms_ssim(np.zeros((160, 200, 3)), np.zeros((160, 200, 3)))
    with pytest.raises(ValueError, match="differ in shape"):
        gmsd(np.zeros((32, 32, 3)), np.zeros((32, 33, 3)))


def test_registered_in_eval_with_their_direction() -> None:
    assert METRICS["ms_ssim"].needs_gt and METRICS["ms_ssim"].higher_is_better
    assert METRICS["gmsd"].needs_gt and not METRICS["gmsd"].higher_is_better
    assert METRICS["haarpsi"].higher_is_better
