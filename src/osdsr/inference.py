"""The one inference pipeline for every SR model: pad, tile, blend, colour-fix, crop.

``upscale_tensor`` runs a model that follows ``osdsr.models.sr_model.SRModel`` in three stages,
encode (LR grid -> latent grid), denoise (latent -> latent) and decode (latent -> HR grid). With
tiling on, every stage runs on the same overlapping tiles (placed in LR pixels and mapped onto each
grid) and ``blend_tiles`` — the single tile loop — mixes them with Gaussian weights. Only the
latent canvases and the HR result are image-sized, so memory beyond the result stays flat as images
grow. The output is exactly ``scale`` times the input: the LR image is reflect-padded to a multiple of
``model.lr_multiple`` and the result cropped back.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from osdsr.choices import COLOR_FIXES, DEFAULT_MEMORY_LIMIT_GIB
from osdsr.color_fix import adain_color_fix_, wavelet_color_fix
from osdsr.data.image_io import LoadedImage, image_to_tensor, tensor_to_image
from osdsr.models.classical import bicubic_upsample
from osdsr.models.sr_model import SRModel
from osdsr.precision import exact_dtype

# Tile weights are Gaussians with this standard deviation (as a fraction of the tile side): a tile's
# outer pixels, whose receptive field is cut by the tile border, weigh exp(-8) of its centre.
GAUSSIAN_SIGMA_FRACTION = 0.125
REC601_LUMA = (0.299, 0.587, 0.114)  # RGB -> gray, as Pillow's convert("L")
STATISTICS_BAND_ROWS = 64  # LR rows per band when measuring the bicubic reference for AdaIN
BICUBIC_CONTEXT = 2  # LR pixels on each side that a bicubic output sample reads

ProgressCallback = Callable[[int, int], None]  # (tiles done, tiles in total) over all stages
BYTES_PER_GIB = 1 << 30
MIN_BAND_ROWS = 64  # LR rows: a thinner band would spend most of its work on the context around it


@dataclass(frozen=True)
class TileLayout:
    """Overlapping tiles over an LR-sized grid, as a product of row and column starts (LR pixels)."""

    height: int
    width: int
    tile_height: int
    tile_width: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @classmethod
    def plan(cls, height: int, width: int, tile: int | None, overlap: int, multiple: int = 1) -> TileLayout:
        """Tiles of ``tile`` pixels overlapping by ``overlap`` (``tile`` 0/None: one tile, no tiling).

        ``tile`` is rounded down and ``overlap`` up to a multiple of ``multiple``; with ``height`` and
        ``width`` multiples of it too, every tile starts and ends on that multiple.
        """
        if not tile:
            return cls(height, width, height, width, (0,), (0,))
        if tile < 0 or overlap < 0:
            raise ValueError(f"tile ({tile}) and tile overlap ({overlap}) must not be negative")
        tile = max(multiple, tile // multiple * multiple)
        overlap = -(-overlap // multiple) * multiple
        if overlap >= tile:
            raise ValueError(
                f"tile overlap {overlap} must be smaller than the tile {tile} (both in LR pixels, "
                f"rounded to multiples of {multiple}); lower --tile-overlap or raise --tile"
            )
        tile_height, tile_width = min(tile, height), min(tile, width)
        return cls(
            height,
            width,
            tile_height,
            tile_width,
            _axis_starts(height, tile_height, tile - overlap),
            _axis_starts(width, tile_width, tile - overlap),
        )

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def boxes(self) -> Iterator[tuple[int, int]]:
        """Top-left corners (row, column) of the tiles, row by row."""
        for row in self.row_starts:
            for col in self.col_starts:
                yield row, col


def _axis_starts(length: int, tile: int, step: int) -> tuple[int, ...]:
    if tile >= length:
        return (0,)
    return (*range(0, length - tile, step), length - tile)


def _on_grid(value: int, factor: Fraction) -> int:
    scaled = value * factor
    if scaled.denominator != 1:
        raise ValueError(f"{value} LR pixels are {scaled} pixels on a grid of factor {factor}: not whole")
    return int(scaled)


def gaussian_weights(length: int) -> torch.Tensor:
    """1-D Gaussian window over ``length`` samples, centred, sigma = GAUSSIAN_SIGMA_FRACTION * length."""
    position = torch.arange(length, dtype=torch.float64) - (length - 1) / 2
    sigma = GAUSSIAN_SIGMA_FRACTION * length
    return torch.exp(-0.5 * (position / sigma) ** 2)


def _normalised_axis_weights(starts: Sequence[int], tile: int, length: int, factor: Fraction) -> list[torch.Tensor]:
    """Per-start 1-D weights on a grid, divided by their sum over all tiles covering each sample.

    The layout is a product of row and column starts, so the 2-D weight sum factorises into a row
    sum times a column sum, and the normalised 2-D weight of a tile is the product of these.
    """
    size, extent = _on_grid(tile, factor), _on_grid(length, factor)
    window = gaussian_weights(size)
    total = torch.zeros(extent, dtype=torch.float64)
    for start in starts:
        offset = _on_grid(start, factor)
        total[offset : offset + size] += window
    return [(window / total[_on_grid(s, factor) : _on_grid(s, factor) + size]).float() for s in starts]


def blend_tiles(
    fn: Callable[..., torch.Tensor],
    inputs: Sequence[tuple[torch.Tensor | None, Fraction]],
    layout: TileLayout,
    out_factor: Fraction,
    *,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    on_tile: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run ``fn`` on overlapping tiles of ``inputs`` and blend its outputs with Gaussian weights.

    Each input is (tensor ``[B, C, H, W]`` or None, its grid factor in pixels per LR pixel); ``fn``
    gets the tiles (or None) in the same order and returns a tile on the ``out_factor`` grid. Up to
    ``batch_size`` tiles go through ``fn`` at once. A layout of one tile calls ``fn`` once on the
    whole inputs, so untiled runs are exact, and returns its output as it is (the next stage casts it,
    no float32 round trip); more tiles are blended in float32. On the first input's device.
    """
    expected = (_on_grid(layout.tile_height, out_factor), _on_grid(layout.tile_width, out_factor))
    if len(layout) == 1:
        output = _call(fn, [_cast(x, dtype) for x, _ in inputs], expected)
        if on_tile is not None:
            on_tile(1)
        return output
    images = next(x for x, _ in inputs if x is not None)
    row_weights = _normalised_axis_weights(layout.row_starts, layout.tile_height, layout.height, out_factor)
    col_weights = _normalised_axis_weights(layout.col_starts, layout.tile_width, layout.width, out_factor)
    row_weights = {start: w.to(images.device) for start, w in zip(layout.row_starts, row_weights)}
    col_weights = {start: w.to(images.device) for start, w in zip(layout.col_starts, col_weights)}
    canvas: torch.Tensor | None = None
    boxes = list(layout.boxes())
    for first in range(0, len(boxes), batch_size):
        chunk = boxes[first : first + batch_size]
        tiles = [
            None if x is None else _cast(torch.cat([_crop(x, factor, box, layout) for box in chunk]), dtype)
            for x, factor in inputs
        ]
        outputs = _call(fn, tiles, expected).float().split(images.shape[0])
        if canvas is None:
            height, width = _on_grid(layout.height, out_factor), _on_grid(layout.width, out_factor)
            canvas = torch.zeros(images.shape[0], outputs[0].shape[1], height, width, device=images.device)
        for (row, col), output in zip(chunk, outputs):
            top, left = _on_grid(row, out_factor), _on_grid(col, out_factor)
            weight = row_weights[row][:, None] * col_weights[col][None, :]
            canvas[:, :, top : top + expected[0], left : left + expected[1]] += output * weight
        if on_tile is not None:
            on_tile(len(chunk))
    assert canvas is not None
    return canvas


def _cast(x: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    return x if x is None or dtype is None else x.to(dtype)


def _crop(x: torch.Tensor, factor: Fraction, box: tuple[int, int], layout: TileLayout) -> torch.Tensor:
    top, left = _on_grid(box[0], factor), _on_grid(box[1], factor)
    height, width = _on_grid(layout.tile_height, factor), _on_grid(layout.tile_width, factor)
    return x[:, :, top : top + height, left : left + width]


def _call(fn: Callable[..., torch.Tensor], tiles: list[torch.Tensor | None], expected: tuple[int, int]) -> torch.Tensor:
    output = fn(*tiles)
    if tuple(output.shape[-2:]) != expected:
        name = getattr(fn, "__qualname__", repr(fn))
        raise ValueError(f"{name} returned spatial size {tuple(output.shape[-2:])}, expected {expected}")
    return output


def upscale_tensor(
    model: SRModel,
    lr: torch.Tensor,
    *,
    tile: int | None = None,
    tile_overlap: int = 32,
    color_fix: str = "wavelet",
    generator: torch.Generator | None = None,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Upscale ``lr`` ``[B, C, h, w]`` in [0, 1] to ``[B, C, scale*h, scale*w]`` in [0, 1].

    C = 3 is RGB; C = 1 gray (replicated to RGB for the model, back to gray by Rec. 601 luma);
    C = 2 or 4 carry alpha last, upscaled separately with bicubic. ``tile`` and ``tile_overlap`` are
    in LR pixels (None/0: no tiling). ``color_fix`` is one of ``COLOR_FIXES``, against the bicubic
    upsample of the LR. ``generator`` draws the noise of stochastic models (once, over the whole
    latent; a fresh generator seeded 0 when None). ``batch_size`` tiles go through the model at
    once; ``dtype`` is the compute dtype: inputs are cast to it, and a model whose weights are in
    another dtype (loaded in fp32, run in bf16) runs under autocast (``osdsr upscale`` casts the model
    when it loads it instead, which is faster). None: the model's own dtype.
    """
    _check_inputs(model, lr, color_fix, batch_size)
    batch, channels, height, width = lr.shape
    gray = channels in (1, 2)
    rgb = lr[:, :1].expand(-1, 3, -1, -1) if gray else lr[:, :3]
    alpha = lr[:, channels - 1 :] if channels in (2, 4) else None

    multiple = model.lr_multiple
    latent_factor = Fraction(model.scale, model.latent_stride)
    hr_factor = Fraction(model.scale)
    if (multiple * latent_factor).denominator != 1:
        raise ValueError(
            f"{type(model).__name__}: lr_multiple {multiple} x scale {model.scale} is not a multiple of "
            f"latent_stride {model.latent_stride}, so LR tiles would not map onto whole latent pixels"
        )
    # The contract of ``lr_multiple``: pad (reflect) to a multiple, crop the result back below.
    padded = _pad_to_multiple(rgb.float(), multiple)
    layout = TileLayout.plan(padded.shape[2], padded.shape[3], tile, tile_overlap, multiple)

    stages = 3
    done = 0

    def on_tile(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, stages * len(layout))

    blend = dict(layout=layout, batch_size=batch_size, dtype=dtype, on_tile=on_tile)
    with torch.inference_mode(), _autocast(model, dtype, lr.device):
        noise = _draw_noise(model, padded, latent_factor, generator)
        condition = blend_tiles(model.encode, [(padded, Fraction(1))], out_factor=latent_factor, **blend)
        z_hr = blend_tiles(
            model.denoise, [(condition, latent_factor), (noise, latent_factor)], out_factor=latent_factor, **blend
        )
        del condition, noise
        if color_fix == "wavelet":

            def decode(z_tile: torch.Tensor, lr_tile: torch.Tensor) -> torch.Tensor:
                # the reference from the float32 LR, not from its rounding to the compute dtype
                reference = bicubic_upsample(lr_tile, model.scale)
                return wavelet_color_fix(model.decode(_cast(z_tile, dtype)).float(), reference)

            hr = blend_tiles(
                decode, [(z_hr, latent_factor), (padded, Fraction(1))], out_factor=hr_factor, **{**blend, "dtype": None}
            )
        else:
            hr = blend_tiles(model.decode, [(z_hr, latent_factor)], out_factor=hr_factor, **blend).float()
        del z_hr
        hr = hr[:, :, : height * model.scale, : width * model.scale]
        check_finite(hr)
        if color_fix == "adain":
            adain_color_fix_(hr, bicubic_statistics(rgb.float(), model.scale))
        hr = hr.clamp_(0.0, 1.0)
        if gray:
            luma = torch.tensor(REC601_LUMA, device=hr.device).view(1, 3, 1, 1)
            hr = (hr * luma).sum(dim=1, keepdim=True)
        if alpha is not None:
            hr = torch.cat([hr, bicubic_upsample(alpha.float(), model.scale).clamp_(0.0, 1.0)], dim=1)
        return hr.contiguous()


def _autocast(model: SRModel, dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` when the model's weights are floats of another dtype, else nothing."""
    parameters = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
    weights = next((p for p in parameters if p.is_floating_point()), None)
    if dtype is None or weights is None or weights.dtype == dtype:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def preferred_dtype(device: torch.device | str) -> torch.dtype:
    """What ``--dtype auto`` runs a network in: bf16 on CPUs with native bf16 arithmetic (AVX512-BF16,
    AMX), where it is about twice as fast as fp32 (``benchmarks/out/speed.md``; the default model's output
    is 58 dB PSNR from fp32's), and fp32 everywhere else."""
    if torch.device(device).type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        if capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"):
            return torch.bfloat16
    return torch.float32


def check_finite(hr: torch.Tensor) -> None:
    """A model whose weights are ruined (or a half-precision overflow) gives NaN/inf: refuse to write it.

    One reduction: the min and max propagate NaN and are infinite when any value is (``isfinite(hr).all()``
    makes four passes and a mask of the image)."""
    if not bool(torch.isfinite(torch.stack(torch.aminmax(hr))).all()):
        raise ValueError(
            "the model's output has NaN/inf values; its weights are broken (export an earlier checkpoint) or, "
            "with --dtype bf16/fp16, the computation overflowed (use --dtype fp32)"
        )


def _check_inputs(model: SRModel, lr: torch.Tensor, color_fix: str, batch_size: int) -> None:
    if lr.dim() != 4 or lr.shape[1] not in (1, 2, 3, 4):
        raise ValueError(f"expected LR images [B, C, H, W] with C in 1..4, got shape {tuple(lr.shape)}")
    if not lr.is_floating_point():
        raise ValueError(f"expected a float LR tensor in [0, 1], got {lr.dtype}")
    if color_fix not in COLOR_FIXES:
        raise ValueError(f"colour fix {color_fix!r} is not one of {list(COLOR_FIXES)}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")


def _pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad bottom/right to a multiple (replicate where the image is too small to reflect)."""
    pad_h = -image.shape[2] % multiple
    pad_w = -image.shape[3] % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < image.shape[2] and pad_w < image.shape[3] else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


def _draw_noise(
    model: SRModel, padded: torch.Tensor, latent_factor: Fraction, generator: torch.Generator | None
) -> torch.Tensor | None:
    """Noise over the whole latent grid, drawn once so tiled and untiled runs see the same values."""
    if model.noise_channels == 0:
        return None
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    shape = (
        padded.shape[0],
        model.noise_channels,
        _on_grid(padded.shape[2], latent_factor),
        _on_grid(padded.shape[3], latent_factor),
    )
    return torch.randn(shape, generator=generator, device=generator.device).to(padded.device)


def bicubic_statistics(lr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) of the bicubic x``scale`` upsample of ``lr``, upsampled band by band.

    Each band of LR rows is upsampled with ``BICUBIC_CONTEXT`` rows of context on both sides, which
    makes its rows identical to those of the full upsample, without holding an HR-sized image.
    """
    batch, channels, height, width = lr.shape
    total = torch.zeros(batch, channels, 1, 1, dtype=exact_dtype(lr.device), device=lr.device)
    total_sq = torch.zeros_like(total)
    for top in range(0, height, STATISTICS_BAND_ROWS):
        bottom = min(height, top + STATISTICS_BAND_ROWS)
        first, last = max(0, top - BICUBIC_CONTEXT), min(height, bottom + BICUBIC_CONTEXT)
        band = bicubic_upsample(lr[:, :, first:last], scale)
        band = band[:, :, (top - first) * scale : (bottom - first) * scale].to(total.dtype)
        total += band.sum(dim=(2, 3), keepdim=True)
        total_sq += band.square().sum(dim=(2, 3), keepdim=True)
    count = height * width * scale * scale
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    return mean.float(), std.float()


def upscale_image(model: SRModel, image: LoadedImage, *, device: torch.device | str = "cpu", **options) -> LoadedImage:
    """Upscale a loaded image (gray/RGB, optional alpha); ``options`` go to ``upscale_tensor``.

    The result keeps the source's bit depth, format and colour profile, so it can be saved alike.
    """
    planes = image.pixels if image.alpha is None else np.concatenate([image.pixels, image.alpha[..., None]], axis=2)
    hr = tensor_to_image(upscale_tensor(model, image_to_tensor(planes).to(device), **options))
    color_channels = image.pixels.shape[2]
    alpha = hr[..., color_channels] if image.alpha is not None else None
    return dataclasses.replace(image, pixels=np.ascontiguousarray(hr[..., :color_channels]), alpha=alpha)


def upscale_image_to_samples(
    model: SRModel,
    image: LoadedImage,
    *,
    bit_depth: int = 8,
    memory_limit_gib: float = DEFAULT_MEMORY_LIMIT_GIB,
    device: torch.device | str = "cpu",
    tile_overlap: int = 32,
    **options,
) -> LoadedImage:
    """``upscale_image`` with the result as ``bit_depth`` samples (uint8 / uint16), written into one canvas.

    No image-sized float copy of the result is made: an image whose working buffers (latent canvases,
    the float result) would exceed ``memory_limit_gib`` with its result runs in horizontal bands, each
    through the whole pipeline with ``tile_overlap`` LR rows of context above and below that are cut
    away (exact for models that see no farther; others differ from one piece only at band seams, as at
    tile seams). An image whose result cannot fit raises a ``ValueError`` saying what it needs; so does
    ``color_fix="adain"`` on a banded image (its statistics are over the whole result).
    """
    planes = image.pixels if image.alpha is None else np.concatenate([image.pixels, image.alpha[..., None]], axis=2)
    height, width, channels = planes.shape
    scale = model.scale
    sample_type = np.uint16 if bit_depth == 16 else np.uint8
    fixed = height * width * channels * (scale * scale * np.dtype(sample_type).itemsize + 3 * 4)  # result, input x3
    per_row = width * _working_bytes_per_lr_pixel(model, channels, device, options.get("dtype"))
    context = -(-tile_overlap // model.lr_multiple) * model.lr_multiple
    limit = memory_limit_gib * BYTES_PER_GIB
    rows = height
    if fixed + per_row * height > limit:  # in bands of rows, each with its context
        rows = (int((limit - fixed) // per_row) - 2 * context) // model.lr_multiple * model.lr_multiple
    if rows < min(height, MIN_BAND_ROWS):
        need = (fixed + per_row * min(height, MIN_BAND_ROWS + 2 * context)) / BYTES_PER_GIB
        raise ValueError(
            f"{width}x{height} needs about {need:.3g} GiB for its {width * scale}x{height * scale} result and working "
            f"buffers, above the memory limit of {memory_limit_gib:g} GiB; raise --max-memory if this machine has "
            "the memory, or split the image into parts"
        )
    if rows < height and options.get("color_fix") == "adain":
        raise ValueError(
            f"{width}x{height}: --color-fix adain needs the whole result at once, about "
            f"{(fixed + per_row * height) / BYTES_PER_GIB:.3g} GiB, above the memory limit of {memory_limit_gib:g} GiB; "
            "use --color-fix wavelet or raise --max-memory"
        )
    canvas = np.empty((height * scale, width * scale, channels), dtype=sample_type)
    lr = image_to_tensor(planes).to(device)
    for top in range(0, height, rows):
        first, last = max(0, top - context), min(height, top + rows + context)
        hr = upscale_tensor(model, lr[:, :, first:last], tile_overlap=tile_overlap, **options)
        keep = hr[0, :, (top - first) * scale : (min(height, top + rows) - first) * scale]
        canvas[top * scale : top * scale + keep.shape[1]] = _samples(keep, bit_depth)
        del hr, keep
    color_channels = image.pixels.shape[2]
    pixels = canvas if image.alpha is None else np.ascontiguousarray(canvas[..., :color_channels])
    alpha = None if image.alpha is None else np.ascontiguousarray(canvas[..., color_channels])
    return dataclasses.replace(image, pixels=pixels, alpha=alpha, bit_depth=bit_depth)


def _working_bytes_per_lr_pixel(
    model: SRModel, channels: int, device: torch.device | str, dtype: torch.dtype | None
) -> int:
    """Float32 bytes per LR pixel of one piece's image-sized buffers: the condition and denoised latent
    canvases, the noise, and the result with one copy of it (gray, alpha); the model's latent width is
    read from one encode of its smallest input."""
    side = model.lr_multiple
    with torch.inference_mode():
        latent = model.encode(torch.zeros(1, 3, side, side, device=device, dtype=dtype or torch.float32))
    latent_pixels = latent.shape[2] * latent.shape[3] / (side * side)
    per_pixel = (2 * latent.shape[1] + model.noise_channels) * latent_pixels + 2 * max(channels, 3) * model.scale**2
    return int(4 * per_pixel)


def _samples(hr: torch.Tensor, bit_depth: int) -> np.ndarray:
    """``[C, h, w]`` float in [0, 1] -> ``h x w x C`` samples, rounded as ``save_image`` rounds floats."""
    top = 65535.0 if bit_depth == 16 else 255.0
    values = hr.float().clamp(0.0, 1.0).mul_(top).round_()
    return values.to(torch.int32 if bit_depth == 16 else torch.uint8).permute(1, 2, 0).cpu().numpy()
