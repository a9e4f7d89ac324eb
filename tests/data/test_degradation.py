"""Real-ESRGAN degradation: reproducibility, shapes, kernels, presets."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from osdsr.config import from_dict, to_dict
from osdsr.data.degradation import (
    CLEAN,
    DEGRADATION_PRESETS,
    GAUSSIAN_KERNEL_TYPES,
    MILD,
    PHOTO,
    REALESRGAN_X4,
    DegradationConfig,
    StageConfig,
    apply_degradation,
    blur_kernel,
    degrade,
    sample_degradation,
)


def _photo_like(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images (a coarse noise field upsampled 32x, bicubic)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, size // 32), max(2, size // 32), generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def test_same_seed_gives_identical_bytes_and_different_seeds_differ() -> None:
    hr = _photo_like(3, 32)
    a = degrade(hr, REALESRGAN_X4, torch.Generator().manual_seed(7))
    b = degrade(hr, REALESRGAN_X4, torch.Generator().manual_seed(7))
    c = degrade(hr, REALESRGAN_X4, torch.Generator().manual_seed(8))
    assert a.lr.numpy().tobytes() == b.lr.numpy().tobytes()
    assert a.params == b.params
    assert not torch.equal(a.lr, c.lr)


def test_output_shape_range_and_8bit_levels() -> None:
    hr = _photo_like(3, 64)
    result = degrade(hr, REALESRGAN_X4, torch.Generator().manual_seed(0))
    assert result.lr.shape == (3, 3, 16, 16)
    assert result.lr.dtype == hr.dtype
    assert 0.0 <= result.lr.min() and result.lr.max() <= 1.0
    levels = result.lr * 255
    assert torch.equal(levels, levels.round())
    assert len(result.params) == 3
    json.dumps(result.params)  # JSON-ready


@pytest.mark.parametrize("size", [16, 64])
def test_small_crops_work(size: int) -> None:
    result = degrade(_photo_like(8, size), REALESRGAN_X4, torch.Generator().manual_seed(1))
    assert result.lr.shape == (8, 3, size // 4, size // 4)


def test_size_not_multiple_of_scale_is_rejected() -> None:
    with pytest.raises(ValueError, match="multiple of scale"):
        degrade(torch.rand(1, 3, 66, 64), REALESRGAN_X4, torch.Generator().manual_seed(0))


def test_params_replay_exactly() -> None:
    hr = _photo_like(2, 64)
    result = degrade(hr, REALESRGAN_X4, torch.Generator().manual_seed(3))
    replayed = apply_degradation(hr[1:], json.loads(json.dumps(result.params[1])))
    assert torch.equal(replayed, result.lr[1:])


@pytest.mark.parametrize("kind", GAUSSIAN_KERNEL_TYPES)
def test_gaussian_kernels_sum_to_one_and_peak_at_centre(kind: str) -> None:
    params = {"type": kind, "size": 13, "sigma_x": 2.0, "sigma_y": 1.0, "theta": 0.5, "beta": 1.5}
    kernel = blur_kernel(params)
    assert kernel.shape == (13, 13)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert kernel[6, 6] == kernel.max()
    assert torch.allclose(kernel, kernel.flip(0, 1))  # point symmetric


def test_isotropic_gaussian_matches_closed_form() -> None:
    kernel = blur_kernel({"type": "iso", "size": 7, "sigma_x": 1.2, "sigma_y": 1.2, "theta": 0.0})
    axis = torch.arange(7, dtype=torch.float64) - 3
    g1 = torch.exp(-(axis**2) / (2 * 1.2**2))
    expected = torch.outer(g1, g1) / torch.outer(g1, g1).sum()
    assert torch.allclose(kernel, expected)


def test_anisotropic_kernel_is_elongated_along_theta() -> None:
    horizontal = blur_kernel({"type": "aniso", "size": 15, "sigma_x": 3.0, "sigma_y": 0.5, "theta": 0.0})
    vertical = blur_kernel({"type": "aniso", "size": 15, "sigma_x": 3.0, "sigma_y": 0.5, "theta": math.pi / 2})
    assert horizontal[7, 10] > 10 * horizontal[10, 7]
    assert torch.allclose(vertical, horizontal.T, atol=1e-12)


def test_sinc_kernel_sums_to_one_and_is_radially_symmetric() -> None:
    kernel = blur_kernel({"type": "sinc", "size": 21, "omega_c": math.pi / 4})
    assert kernel.shape == (21, 21)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(kernel, kernel.T) and torch.allclose(kernel, kernel.flip(0))
    assert kernel.min() < 0  # ringing lobes of an ideal low-pass


def test_mild_is_milder_than_realesrgan() -> None:
    hr = _photo_like(8, 128, seed=5)
    reference = F.interpolate(hr, scale_factor=0.25, mode="bicubic", align_corners=False).clamp(0, 1)

    def psnr(lr: torch.Tensor) -> float:
        return (10 * torch.log10(1 / ((lr - reference) ** 2).mean(dim=(1, 2, 3)))).mean().item()

    mild = degrade(hr, MILD, torch.Generator().manual_seed(0)).lr
    heavy = degrade(hr, REALESRGAN_X4, torch.Generator().manual_seed(0)).lr
    assert psnr(mild) > psnr(heavy) + 3
    assert psnr(mild) > 28


def test_presets_mix_per_image_by_weight() -> None:
    hr = _photo_like(12, 16)
    mixed = degrade(hr, [(MILD, 1.0), (REALESRGAN_X4, 1.0)], torch.Generator().manual_seed(0))
    chosen = [p["preset_index"] for p in mixed.params]
    assert 0 in chosen and 1 in chosen
    mild_params = next(p for p in mixed.params if p["preset_index"] == 0)
    assert len(mild_params["stages"]) == 1
    only_mild = degrade(hr, [(MILD, 1.0), (REALESRGAN_X4, 0.0)], torch.Generator().manual_seed(0))
    assert {p["preset_index"] for p in only_mild.params} == {0}


def test_published_defaults() -> None:
    first, second = REALESRGAN_X4.stages
    assert first.kernel_probs == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    assert (first.blur_sigma, second.blur_sigma) == ((0.2, 3.0), (0.2, 1.5))
    assert (first.resize_probs, second.resize_probs) == ((0.2, 0.7, 0.1), (0.3, 0.4, 0.3))
    assert (first.resize_range, second.resize_range) == ((0.15, 1.5), (0.3, 1.2))
    assert (first.noise_range, second.noise_range) == ((1.0, 30.0), (1.0, 25.0))
    assert second.blur_prob == 0.8 and REALESRGAN_X4.final.sinc_prob == 0.8
    assert DEGRADATION_PRESETS == {"realesrgan": REALESRGAN_X4, "mild": MILD, "photo": PHOTO, "clean": CLEAN}


def test_config_round_trips_through_the_yaml_loader_and_rejects_bad_values() -> None:
    assert from_dict(DegradationConfig, to_dict(MILD)) == MILD
    with pytest.raises(ValueError, match="blur_prob"):
        StageConfig(blur_prob=1.5)
    with pytest.raises(ValueError, match="kernel_probs"):
        StageConfig(kernel_types=("iso",), kernel_probs=(0.5, 0.5))


def test_clean_preset_is_a_plain_downsampling():
    """'clean' draws only the resize mode: its LR is the 8-bit resize of the HR, nothing else."""
    hr = _photo_like(1, 32)
    params = sample_degradation(CLEAN, torch.Generator().manual_seed(3))
    mode = params["stages"][0]["resize"]["mode"]
    lr = apply_degradation(hr, params)
    plain = torch.clamp((_plain_resize(hr, mode) * 255).round(), 0, 255) / 255
    assert torch.equal(lr, plain)


def _plain_resize(hr: torch.Tensor, mode: str) -> torch.Tensor:
    from osdsr.data.degradation import _resize

    return _resize(hr, (8, 8), mode)


def test_photo_preset_is_lighter_than_realesrgan():
    """On the same photo-like crops, the 'photo' LR stays closer to a plain bicubic LR than Real-ESRGAN's."""
    hr = _photo_like(4, 64, seed=1)
    reference = F.interpolate(hr, size=16, mode="bicubic", antialias=True)
    gaps = {}
    for name in ("photo", "realesrgan"):
        lr = degrade(hr, DEGRADATION_PRESETS[name], torch.Generator().manual_seed(2)).lr
        gaps[name] = (lr - reference).abs().mean().item()
    assert gaps["photo"] < gaps["realesrgan"]
