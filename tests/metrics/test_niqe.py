"""NIQE against BasicSR's reference values on real photographs, and its basic behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from osdsr.metrics.niqe import niqe, pristine_model

REFERENCE = json.loads((Path(__file__).parent / "niqe_reference_values.json").read_text())


@pytest.mark.parametrize("name", sorted(REFERENCE["images"]))
def test_niqe_matches_basicsr_reference(shared_data, name: str) -> None:
    image = np.asarray(Image.open(shared_data / name))  # gray files stay HxW: the R = G = B path
    value = niqe(image, crop_border=REFERENCE["crop_border"])
    expected = REFERENCE["images"][name]
    # BasicSR's arithmetic in float64 (MATLAB's double): same algorithm, so equal up to rounding noise
    assert abs(value - expected["basicsr_float64"]) < 1e-3
    # BasicSR as shipped computes in float32; its flat-region variances are noisy (up to 0.036 here)
    assert abs(value - expected["basicsr"]) < 0.04


def test_blur_raises_niqe(shared_data) -> None:
    sharp = Image.open(shared_data / "hr/kodak/kodim08.png").crop((0, 0, 384, 288))
    blurred = sharp.filter(ImageFilter.GaussianBlur(radius=3))
    assert niqe(np.asarray(blurred)) > niqe(np.asarray(sharp)) + 2.0


def test_pristine_model_is_the_standard_one() -> None:
    model = pristine_model()
    assert model.mu.shape == (36,) and model.cov.shape == (36, 36) and model.window.shape == (7, 7)
    np.testing.assert_allclose(model.cov, model.cov.T)
    assert model.window.sum() == pytest.approx(1.0)
    assert model.mu[0] == pytest.approx(2.6013136801541448)  # first GGD shape of the MATLAB release


def test_crop_border_changes_the_analysed_region(shared_data) -> None:
    image = np.asarray(Image.open(shared_data / "hr/scikit-image/coffee.png"))
    assert niqe(image, crop_border=4) != pytest.approx(niqe(image, crop_border=0), abs=1e-3)
    assert niqe(image[4:-4, 4:-4]) == pytest.approx(niqe(image, crop_border=4), abs=1e-12)


def test_too_small_or_flat_images_raise() -> None:
    with pytest.raises(ValueError, match="at least two 96x96 blocks"):
        niqe(np.zeros((100, 150, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="flat image"):
        niqe(np.full((192, 192, 3), 0.5, dtype=np.float32))
