"""The inference pipeline: tiling agrees with untiled runs, sizes are exact, channels and colour fixes."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from osdsr import inference
from osdsr.color_fix import channel_statistics
from osdsr.data.image_io import LoadedImage
from osdsr.inference import (
    TileLayout,
    bicubic_statistics,
    blend_tiles,
    preferred_dtype,
    upscale_image,
    upscale_image_to_samples,
    upscale_tensor,
)
from osdsr.models.classical import ClassicalUpsampler, bicubic_upsample
from osdsr.models.sr_model import SRModel


class TinyConvSR(nn.Module):
    """A stochastic SR model with 3x3 convolutions only (receptive field of a few pixels per stage).

    ``latent_stride`` 4: the latent has LR size; 8: half LR size (encode downsamples by 2).
    """

    scale = 4
    lr_multiple = 2
    noise_channels = 2

    def __init__(self, latent_stride: int = 4) -> None:
        super().__init__()
        self.latent_stride = latent_stride
        down = 2 if latent_stride == 8 else 1
        self.encoder = nn.Conv2d(3, 4, 3, stride=down, padding=1)
        self.denoiser = nn.Conv2d(4 + self.noise_channels, 4, 3, padding=1)
        self.decoder = nn.Conv2d(4, 3 * latent_stride**2, 3, padding=1)

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        return self.encoder(lr * 2 - 1)

    def denoise(self, condition: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return condition + 0.1 * self.denoiser(torch.cat([condition, noise], dim=1))

    def decode(self, z_hr: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.pixel_shuffle(self.decoder(z_hr), self.latent_stride))


def _lr(batch: int = 1, channels: int = 3, height: int = 40, width: int = 56) -> torch.Tensor:
    return torch.rand(batch, channels, height, width, generator=torch.Generator().manual_seed(1))


def test_tiny_model_follows_the_contract() -> None:
    assert isinstance(TinyConvSR(), SRModel) and isinstance(ClassicalUpsampler("bicubic"), SRModel)


@pytest.mark.parametrize("latent_stride", [4, 8])
@pytest.mark.parametrize("color_fix", ["none", "wavelet", "adain"])
def test_tiled_matches_untiled(latent_stride: int, color_fix: str) -> None:
    model = TinyConvSR(latent_stride).eval()
    lr = _lr()
    untiled = upscale_tensor(model, lr, tile=0, color_fix=color_fix, generator=torch.Generator().manual_seed(3))
    tiled = upscale_tensor(
        model, lr, tile=16, tile_overlap=8, color_fix=color_fix, generator=torch.Generator().manual_seed(3)
    )
    assert len(TileLayout.plan(40, 56, 16, 8, model.lr_multiple)) > 4
    assert (tiled - untiled).abs().mean() < 1 / 255


def test_noise_comes_from_the_generator() -> None:
    model = TinyConvSR().eval()
    lr = _lr()
    first = upscale_tensor(model, lr, generator=torch.Generator().manual_seed(0), color_fix="none")
    again = upscale_tensor(model, lr, generator=torch.Generator().manual_seed(0), color_fix="none")
    other = upscale_tensor(model, lr, generator=torch.Generator().manual_seed(1), color_fix="none")
    assert torch.equal(first, again) and not torch.allclose(first, other)


@pytest.mark.parametrize("tile", [0, 6])
@pytest.mark.parametrize("size", [(13, 7), (1, 1), (9, 2)])
def test_output_is_exactly_four_times_for_odd_sizes(tile: int, size: tuple[int, int]) -> None:
    lr = _lr(height=size[0], width=size[1])
    for model in (TinyConvSR(8).eval(), ClassicalUpsampler("lanczos")):
        hr = upscale_tensor(model, lr, tile=tile, tile_overlap=2)
        assert hr.shape == (1, 3, 4 * size[0], 4 * size[1])
        assert hr.min() >= 0 and hr.max() <= 1


def test_bicubic_model_is_bicubic_and_tiling_is_seamless() -> None:
    lr = _lr()
    model = ClassicalUpsampler("bicubic")
    expected = bicubic_upsample(lr).clamp(0, 1)
    untiled = upscale_tensor(model, lr, tile=0, color_fix="none")
    tiled = upscale_tensor(model, lr, tile=12, tile_overlap=6, color_fix="none")
    torch.testing.assert_close(untiled, expected)
    assert (tiled - expected).abs().mean() < 0.1 / 255 and (tiled - expected).abs().max() < 2 / 255


def test_blend_of_identity_reconstructs_input_exactly() -> None:
    """Gaussian weights are a partition of unity: blending exact tiles returns the input."""
    image = _lr(height=30, width=45)
    layout = TileLayout.plan(30, 45, tile=10, overlap=4)
    calls = []

    def identity_x2(tile: torch.Tensor) -> torch.Tensor:
        calls.append(tile.shape[0])
        return tile.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    out = blend_tiles(identity_x2, [(image, Fraction(1))], layout, Fraction(2), batch_size=3)
    torch.testing.assert_close(out, image.repeat_interleave(2, 2).repeat_interleave(2, 3), atol=1e-6, rtol=0)
    assert sum(calls) == len(layout) and max(calls) == 3


def test_tile_layout_covers_image_on_multiples() -> None:
    layout = TileLayout.plan(50, 34, tile=17, overlap=5, multiple=2)
    assert layout.tile_height == 16 and layout.tile_width == 16
    covered = torch.zeros(50, 34)
    for row, col in layout.boxes():
        assert row % 2 == 0 and col % 2 == 0
        covered[row : row + 16, col : col + 16] += 1
    assert covered.min() >= 1
    with pytest.raises(ValueError, match="overlap"):
        TileLayout.plan(50, 34, tile=8, overlap=8)


def test_batched_tiles_equal_single_tiles() -> None:
    model = TinyConvSR().eval()
    lr = _lr()
    one = upscale_tensor(model, lr, tile=16, tile_overlap=8, batch_size=1)
    many = upscale_tensor(model, lr, tile=16, tile_overlap=8, batch_size=5)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)


def test_progress_reports_every_tile_of_every_stage() -> None:
    reports = []
    upscale_tensor(ClassicalUpsampler("bicubic"), _lr(), tile=16, tile_overlap=4, progress=lambda d, t: reports.append((d, t)))
    layout = TileLayout.plan(40, 56, 16, 4)
    assert reports[-1] == (3 * len(layout), 3 * len(layout))
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)


def test_gray_stays_gray_and_alpha_is_bicubic() -> None:
    gray_alpha = _lr(channels=2, height=9, width=11)
    hr = upscale_tensor(TinyConvSR().eval(), gray_alpha, color_fix="none")
    assert hr.shape == (1, 2, 36, 44)
    torch.testing.assert_close(hr[:, 1:], bicubic_upsample(gray_alpha[:, 1:]).clamp(0, 1))
    gray = gray_alpha[:, :1]
    torch.testing.assert_close(
        upscale_tensor(ClassicalUpsampler("bicubic"), gray, color_fix="none"), bicubic_upsample(gray).clamp(0, 1)
    )


def test_upscale_image_keeps_depth_alpha_and_format() -> None:
    rng = np.random.default_rng(0)
    image = LoadedImage(rng.random((5, 6, 3), dtype=np.float32), rng.random((5, 6), dtype=np.float32), 16, "PNG")
    result = upscale_image(ClassicalUpsampler("bicubic"), image)
    assert result.pixels.shape == (20, 24, 3) and result.alpha.shape == (20, 24)
    assert result.bit_depth == 16 and result.format == "PNG"


class ColourShift(nn.Module):
    """Bicubic plus a colour cast: what the colour fixes are there to remove."""

    scale, latent_stride, lr_multiple, noise_channels = 4, 4, 1, 0

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        return lr

    def denoise(self, condition: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return condition

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        cast = torch.tensor([0.15, -0.1, 0.05], device=z.device).view(1, 3, 1, 1)
        return bicubic_upsample(z * 0.5 + 0.25) + cast


def test_colour_fixes_remove_a_colour_cast() -> None:
    lr = _lr()
    reference = bicubic_upsample(lr)
    ref_mean, ref_std = channel_statistics(reference)
    for fix in ("wavelet", "adain"):
        hr = upscale_tensor(ColourShift(), lr, color_fix=fix)
        mean, std = channel_statistics(hr)
        assert (mean - ref_mean).abs().max() < 0.01, fix
    plain_mean, _ = channel_statistics(upscale_tensor(ColourShift(), lr, color_fix="none"))
    assert (plain_mean - ref_mean).abs().max() > 0.05
    _, adain_std = channel_statistics(upscale_tensor(ColourShift(), lr, color_fix="adain"))
    assert (adain_std - ref_std).abs().max() < 0.01


def test_bicubic_statistics_match_the_full_upsample() -> None:
    lr = _lr(batch=2, height=150, width=20)  # several bands of STATISTICS_BAND_ROWS
    mean, std = bicubic_statistics(lr, 4)
    full_mean, full_std = channel_statistics(bicubic_upsample(lr))
    torch.testing.assert_close(mean, full_mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(std, full_std, atol=1e-5, rtol=0)


def test_invalid_arguments_are_clear_errors() -> None:
    model = ClassicalUpsampler("bicubic")
    with pytest.raises(ValueError, match="colour fix"):
        upscale_tensor(model, _lr(), color_fix="sepia")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        upscale_tensor(model, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="overlap"):
        upscale_tensor(model, _lr(), tile=8, tile_overlap=8)


def test_bf16_compute_is_close_to_fp32() -> None:
    model = TinyConvSR().eval()
    lr = _lr()
    reference = upscale_tensor(model, lr, tile=16, tile_overlap=8)
    fast = upscale_tensor(model.to(torch.bfloat16), lr, tile=16, tile_overlap=8, dtype=torch.bfloat16)
    assert fast.dtype == torch.float32 and (fast - reference).abs().mean() < 2 / 255


def test_bf16_on_a_model_loaded_in_fp32_autocasts_it() -> None:
    """Issue 21: ``dtype=torch.bfloat16`` on fp32 weights used to fail (mat1 and mat2 dtypes differ)."""
    model = TinyConvSR().eval()
    lr = _lr()
    reference = upscale_tensor(model, lr)
    fast = upscale_tensor(model, lr, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was
    assert not torch.equal(fast, reference)  # the network did run in bf16
    assert fast.dtype == torch.float32 and (fast - reference).abs().mean() < 2 / 255


def test_the_wavelet_reference_is_the_bicubic_of_the_float32_lr(monkeypatch: pytest.MonkeyPatch) -> None:
    """In bf16 only the model runs in bf16: the colour reference is not taken from a rounded LR."""
    seen = []

    def spy(image: torch.Tensor, scale: int = 4) -> torch.Tensor:
        seen.append(image)
        return bicubic_upsample(image, scale)

    monkeypatch.setattr(inference, "bicubic_upsample", spy)
    for tile in (0, 16):
        upscale_tensor(TinyConvSR().to(torch.bfloat16).eval(), _lr(), tile=tile, tile_overlap=8, dtype=torch.bfloat16)
    assert len(seen) > 2  # the untiled run and each tile
    for image in seen:  # random LR values are not bf16 numbers: none was rounded on the way
        assert image.dtype == torch.float32 and not torch.equal(image, image.bfloat16().float())


def test_one_tile_stage_outputs_stay_in_the_compute_dtype() -> None:
    """No float32 round trip between stages of an untiled bf16 run; tiles are blended in float32."""
    image = torch.rand(1, 3, 8, 8)
    for tile, dtype in ((0, torch.bfloat16), (4, torch.float32)):
        layout = TileLayout.plan(8, 8, tile, 2)
        out = blend_tiles(lambda x: x, [(image, Fraction(1))], layout, Fraction(1), dtype=torch.bfloat16)
        assert out.dtype == dtype


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_refuses_any_nan_or_inf(bad: float) -> None:
    hr = torch.rand(1, 3, 16, 16)
    inference.check_finite(hr)
    hr[0, 1, 7, 3] = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        inference.check_finite(hr)


def test_preferred_dtype_is_bf16_only_on_cpus_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    for capabilities, expected in (({"avx512_bf16": True}, torch.bfloat16), ({"amx_bf16": True}, torch.bfloat16),
                                   ({"avx512_bf16": False, "avx2": True}, torch.float32), ({}, torch.float32)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=capabilities: caps)
        assert preferred_dtype("cpu") is expected
    assert preferred_dtype("meta") is torch.float32  # other devices: fp32


class CountingBicubic(ClassicalUpsampler):
    """Bicubic that records the LR height of every piece it encodes."""

    def __init__(self) -> None:
        super().__init__("bicubic")
        self.heights: list[int] = []

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        self.heights.append(lr.shape[2])
        return super().encode(lr)


def test_the_result_is_written_as_samples_band_by_band_exactly_as_in_one_piece() -> None:
    rng = np.random.default_rng(3)
    image = LoadedImage(rng.random((300, 40, 3), dtype=np.float32), rng.random((300, 40), dtype=np.float32), 8, "PNG")
    floats = upscale_image(ClassicalUpsampler("bicubic"), image, color_fix="none")
    expected = np.rint(np.clip(np.concatenate([floats.pixels, floats.alpha[..., None]], axis=2), 0, 1) * 255)

    whole, banded = CountingBicubic(), CountingBicubic()
    one_piece = upscale_image_to_samples(whole, image, color_fix="none", tile=0)
    per_row = 40 * inference._working_bytes_per_lr_pixel(banded, 4, "cpu", None)
    fixed = 300 * 40 * 4 * (16 + 12)
    limit = (fixed + per_row * (100 + 2 * 32)) / inference.BYTES_PER_GIB  # room for bands of 100 rows
    banded.heights.clear()
    in_bands = upscale_image_to_samples(banded, image, color_fix="none", tile=0, memory_limit_gib=limit)

    assert whole.heights[1:] == [300] and banded.heights[1:] == [132, 164, 132]  # after the probe: 100-row bands + context
    for result in (one_piece, in_bands):
        assert result.pixels.dtype == np.uint8 and result.pixels.shape == (1200, 160, 3)
        np.testing.assert_array_equal(np.concatenate([result.pixels, result.alpha[..., None]], axis=2), expected)


def test_an_image_whose_result_cannot_fit_is_one_clear_error_before_anything_is_allocated() -> None:
    image = LoadedImage(np.zeros((300, 400, 3), np.float32))
    with pytest.raises(ValueError, match=r"400x300 needs about 0.0\d+ GiB for its 1600x1200 result .* above the memory "
                                         r"limit of 0.001 GiB; raise --max-memory .* or split the image"):
        upscale_image_to_samples(ClassicalUpsampler("bicubic"), image, memory_limit_gib=0.001)
    with pytest.raises(ValueError, match="--color-fix adain needs the whole result at once"):
        upscale_image_to_samples(ClassicalUpsampler("bicubic"), image, memory_limit_gib=0.04, color_fix="adain")
