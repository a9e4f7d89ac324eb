"""Classical baselines: Lanczos-3 equals Pillow's float Lanczos, bicubic equals torch's, both keep constants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from osdsr.models.classical import ClassicalUpsampler, lanczos_phase_weights, lanczos_upsample


def test_lanczos_matches_pillow_away_from_the_border() -> None:
    gray = np.random.default_rng(0).random((16, 20)).astype(np.float32)
    expected = np.asarray(Image.fromarray(gray, mode="F").resize((80, 64), Image.Resampling.LANCZOS))
    ours = lanczos_upsample(torch.from_numpy(gray).double()[None, None])[0, 0].numpy()
    border = 4 * 3  # Pillow renormalises taps at the border, we replicate edge samples
    np.testing.assert_allclose(ours[border:-border, border:-border], expected[border:-border, border:-border], atol=1e-4)


def test_lanczos_phases_are_normalised() -> None:
    weights = lanczos_phase_weights()
    assert weights.shape == (4, 7)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4, dtype=weights.dtype))


@pytest.mark.parametrize("method", ["bicubic", "lanczos"])
def test_constant_stays_constant(method: str) -> None:
    model = ClassicalUpsampler(method)
    hr = model.decode(model.denoise(model.encode(torch.full((1, 3, 5, 7), 0.3)), None))
    assert hr.shape == (1, 3, 20, 28)
    torch.testing.assert_close(hr, torch.full_like(hr, 0.3))


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="bicubic"):
        ClassicalUpsampler("nearest")
