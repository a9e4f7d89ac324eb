"""Real-ESRGAN second-order degradation on tensors: batched, CPU or GPU, reproducible under a generator.

Each image of a batch gets its own parameters, drawn from an explicit ``torch.Generator``:

* one or more *stages* (the published x4 recipe has two), each: blur (isotropic / anisotropic /
  generalized / plateau Gaussian kernel, or a sinc kernel) -> random resize (up / down / keep) ->
  Gaussian or Poisson noise (colour or gray) -> JPEG;
* a *final* stage: [resize to LR -> sinc -> JPEG] or [JPEG -> resize to LR -> sinc], the two orders
  of the published recipe, each with probability 1/2;
* quantisation to 8 bit (clamp, round to k/255), as in the recipe.

The defaults of :class:`DegradationConfig` are the published Real-ESRGAN x4plus training options
(``train_realesrnet_x4plus.yml`` / ``realesrgan_model.py`` of Real-ESRGAN, Wang et al. 2021).
The recipe applies it to an unsharp-masked HR image; sharpening the target is a training choice and
is left to the caller. Two small departures, both documented where they happen: every kernel is applied
at its own size instead of being zero-padded to 21x21 (same result away from tiny images), and Poisson
noise always counts 256 intensity levels (the recipe counts the distinct values of each 8-bit image).

The sampled parameters of an image are a plain JSON-ready dict; :func:`apply_degradation` replays
them exactly (noise is drawn from a seed stored in the dict), so a test set can be rebuilt bit for bit.

Smallest input: any ``H, W`` that are multiples of ``scale`` work (tested down to 16x16 HR for x4, and
the default training crop of 64x64): intermediate sizes never drop below 1 pixel, and a kernel wider
than the image it blurs uses replicate instead of reflect borders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import filter2d
from kornia.geometry.transform import resize

from osdsr.precision import exact_dtype

GAUSSIAN_KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
# Real-ESRGAN: kernel sizes 7, 9, ..., 21 drawn uniformly
REALESRGAN_KERNEL_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)
# Real-ESRGAN: a sinc kernel smaller than 13 taps uses a cutoff in [pi/3, pi], a larger one [pi/5, pi]
SINC_SMALL_KERNEL = 13
SINC_CUTOFF_SMALL = (math.pi / 3, math.pi)
SINC_CUTOFF_LARGE = (math.pi / 5, math.pi)
# Poisson noise counts photons on an 8-bit intensity grid
POISSON_LEVELS = 256.0
# a 63-bit seed per image for its noise generator
NOISE_SEED_LIMIT = 2**63 - 1


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} = {value}: a probability must lie in [0, 1]")


def _check_weights(name: str, weights: Sequence[float]) -> None:
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"{name} {tuple(weights)}: need non-negative weights with a positive sum")


def _check_range(name: str, value: tuple[float, float], low: float, high: float = math.inf) -> None:
    if not low <= value[0] <= value[1] <= high:
        raise ValueError(f"{name} {value}: need {low} <= low <= high <= {high}")


def _check_modes(modes: tuple[str, ...]) -> None:
    if not modes or set(modes) - set(RESIZE_MODES):
        raise ValueError(f"resize_modes {modes}: choose from {list(RESIZE_MODES)}")


@dataclass(frozen=True)
class StageConfig:
    """One blur -> resize -> noise -> JPEG stage. Noise sigmas are in 8-bit units (x/255)."""

    blur_prob: float = 1.0
    kernel_sizes: tuple[int, ...] = REALESRGAN_KERNEL_SIZES
    kernel_types: tuple[str, ...] = GAUSSIAN_KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    # "current": factor times the size entering the stage (recipe stage 1);
    # "lr": factor times the final LR size (recipe stage 2)
    resize_reference: Literal["current", "lr"] = "current"
    resize_modes: tuple[str, ...] = RESIZE_MODES
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_prob: float = 1.0
    jpeg_range: tuple[float, float] = (30.0, 95.0)

    def __post_init__(self) -> None:
        for name in ("blur_prob", "sinc_prob", "gaussian_noise_prob", "gray_noise_prob", "jpeg_prob"):
            _check_prob(name, getattr(self, name))
        if not self.kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes {self.kernel_sizes}: need positive odd sizes")
        unknown = sorted(set(self.kernel_types) - set(GAUSSIAN_KERNEL_TYPES))
        if unknown:
            raise ValueError(f"kernel_types: unknown {unknown}; known: {list(GAUSSIAN_KERNEL_TYPES)}")
        if len(self.kernel_probs) != len(self.kernel_types):
            raise ValueError(f"kernel_probs {self.kernel_probs}: need one weight per kernel type")
        _check_weights("kernel_probs", self.kernel_probs)
        _check_weights("resize_probs", self.resize_probs)
        _check_modes(self.resize_modes)
        for name in ("blur_sigma", "betag_range", "betap_range", "resize_range", "noise_range", "poisson_scale_range"):
            _check_range(name, getattr(self, name), low=0.0)
        _check_range("jpeg_range", self.jpeg_range, low=1.0, high=100.0)
        if self.resize_range[0] <= 0:
            raise ValueError(f"resize_range {self.resize_range}: factors must be positive")


@dataclass(frozen=True)
class FinalStageConfig:
    """The last stage: resize to the LR size, sinc filter and JPEG, in one of the two recipe orders."""

    sinc_prob: float = 0.8
    kernel_sizes: tuple[int, ...] = REALESRGAN_KERNEL_SIZES
    resize_modes: tuple[str, ...] = RESIZE_MODES
    jpeg_prob: float = 1.0
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    # probability of [resize -> sinc -> JPEG]; otherwise [JPEG -> resize -> sinc]
    resize_first_prob: float = 0.5

    def __post_init__(self) -> None:
        for name in ("sinc_prob", "jpeg_prob", "resize_first_prob"):
            _check_prob(name, getattr(self, name))
        if not self.kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes {self.kernel_sizes}: need positive odd sizes")
        _check_modes(self.resize_modes)
        _check_range("jpeg_range", self.jpeg_range, low=1.0, high=100.0)


# Real-ESRGAN x4plus, first degradation (kernel_list/kernel_prob/sinc_prob/blur_sigma/..., resize_prob, ...)
REALESRGAN_FIRST_STAGE = StageConfig()
# Real-ESRGAN x4plus, second degradation (second_blur_prob, blur_sigma2, resize_prob2, noise_range2, ...)
REALESRGAN_SECOND_STAGE = StageConfig(
    blur_prob=0.8,
    blur_sigma=(0.2, 1.5),
    resize_probs=(0.3, 0.4, 0.3),
    resize_range=(0.3, 1.2),
    resize_reference="lr",
    noise_range=(1.0, 25.0),
    poisson_scale_range=(0.05, 2.5),
)


@dataclass(frozen=True)
class DegradationConfig:
    """A degradation recipe: its stages in order, then the final stage. Defaults: Real-ESRGAN x4."""

    stages: tuple[StageConfig, ...] = (REALESRGAN_FIRST_STAGE, REALESRGAN_SECOND_STAGE)
    final: FinalStageConfig = field(default_factory=FinalStageConfig)


REALESRGAN_X4 = DegradationConfig()
# A light classical degradation for evaluation and mixed training:
# Gaussian blur sigma 0.2-1.0 -> bicubic x1/scale -> colour Gaussian noise 0-5/255 -> JPEG 50-90.
MILD = DegradationConfig(
    stages=(
        StageConfig(
            blur_prob=1.0,
            kernel_sizes=(7,),
            kernel_types=("iso",),
            kernel_probs=(1.0,),
            sinc_prob=0.0,
            blur_sigma=(0.2, 1.0),
            resize_probs=(0.0, 0.0, 1.0),
            resize_reference="lr",
            resize_modes=("bicubic",),
            gaussian_noise_prob=1.0,
            noise_range=(0.0, 5.0),
            gray_noise_prob=0.0,
            jpeg_prob=1.0,
            jpeg_range=(50.0, 90.0),
        ),
    ),
    final=FinalStageConfig(sinc_prob=0.0, resize_modes=("bicubic",), jpeg_prob=0.0),
)
# Ordinary camera and web photos (default-model training, issue 19): light optical blur (or none) ->
# area / bilinear / bicubic x1/scale -> low Gaussian or Poisson noise -> JPEG 30-95 (or none).
PHOTO = DegradationConfig(
    stages=(
        StageConfig(
            blur_prob=0.6,
            kernel_sizes=(7, 9, 11),
            kernel_types=("iso", "aniso"),
            kernel_probs=(0.7, 0.3),
            sinc_prob=0.0,
            blur_sigma=(0.2, 1.2),
            resize_probs=(0.0, 0.0, 1.0),
            resize_reference="lr",
            gaussian_noise_prob=0.6,
            noise_range=(0.0, 4.0),
            poisson_scale_range=(0.05, 0.5),
            gray_noise_prob=0.3,
            jpeg_prob=0.0,
        ),
    ),
    final=FinalStageConfig(sinc_prob=0.0, jpeg_prob=0.8, jpeg_range=(30.0, 95.0)),
)
# Clean inputs: area / bilinear / bicubic x1/scale only (no blur, noise or JPEG), so a model does not
# smooth texture that a clean photo keeps.
CLEAN = DegradationConfig(
    stages=(
        StageConfig(
            blur_prob=0.0,
            sinc_prob=0.0,
            resize_probs=(0.0, 0.0, 1.0),
            resize_reference="lr",
            gaussian_noise_prob=1.0,
            noise_range=(0.0, 0.0),
            gray_noise_prob=0.0,
            jpeg_prob=0.0,
        ),
    ),
    final=FinalStageConfig(sinc_prob=0.0, jpeg_prob=0.0),
)
DEGRADATION_PRESETS: dict[str, DegradationConfig] = {"realesrgan": REALESRGAN_X4, "mild": MILD, "photo": PHOTO, "clean": CLEAN}


@dataclass(frozen=True)
class DegradationResult:
    """LR images (``[B, 3, H/scale, W/scale]`` in [0, 1], 8-bit levels) and each image's parameters."""

    lr: torch.Tensor
    params: list[dict[str, Any]]


def degrade(
    hr: torch.Tensor,
    config: DegradationConfig | Sequence[tuple[DegradationConfig, float]],
    generator: torch.Generator,
    scale: int = 4,
) -> DegradationResult:
    """Degrade a batch of HR images ``[B, 3, H, W]`` in [0, 1] into LR images, one parameter draw each.

    ``config`` is one recipe, or ``(recipe, weight)`` pairs from which each image draws its own
    (so one batch can mix mild and heavy degradations). ``H`` and ``W`` must be multiples of ``scale``.
    """
    _check_hr(hr, scale)
    presets = [(config, 1.0)] if isinstance(config, DegradationConfig) else list(config)
    if not presets or any(not isinstance(c, DegradationConfig) for c, _ in presets):
        raise ValueError("config: expected a DegradationConfig or a list of (DegradationConfig, weight) pairs")
    weights = tuple(float(w) for _, w in presets)
    _check_weights("preset weights", weights)
    lr_images, params = [], []
    for image in hr:
        index = _choice(generator, weights) if len(presets) > 1 else 0
        image_params = {"preset_index": index, **sample_degradation(presets[index][0], generator)}
        lr_images.append(apply_degradation(image[None], image_params, scale))
        params.append(image_params)
    return DegradationResult(lr=torch.cat(lr_images), params=params)


def sample_degradation(config: DegradationConfig, generator: torch.Generator) -> dict[str, Any]:
    """Draw the parameters of one image (JSON-ready); :func:`apply_degradation` applies them."""
    final = config.final
    return {
        "stages": [_sample_stage(stage, generator) for stage in config.stages],
        "final": {
            "order": "resize_first" if _uniform(generator, 0.0, 1.0) < final.resize_first_prob else "jpeg_first",
            "resize_mode": final.resize_modes[_choice(generator, (1.0,) * len(final.resize_modes))],
            "sinc": _sample_sinc(final.kernel_sizes, generator, cutoff=SINC_CUTOFF_SMALL)
            if _uniform(generator, 0.0, 1.0) < final.sinc_prob
            else None,
            "jpeg": _sample_jpeg(final.jpeg_prob, final.jpeg_range, generator),
        },
    }


def apply_degradation(hr: torch.Tensor, params: dict[str, Any], scale: int = 4) -> torch.Tensor:
    """Apply sampled parameters to HR images ``[N, 3, H, W]`` (all with these parameters) -> 8-bit LR."""
    _check_hr(hr, scale)
    lr_size = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    out = hr
    for stage in params["stages"]:
        if stage["blur"] is not None:
            out = _blur(out, blur_kernel(stage["blur"]).to(out))
        reference = out.shape[-2:] if stage["resize"]["reference"] == "current" else lr_size
        factor = stage["resize"]["factor"]
        size = (max(1, int(reference[0] * factor)), max(1, int(reference[1] * factor)))
        out = _resize(out, size, stage["resize"]["mode"])
        out = _add_noise(out, stage["noise"])
        if stage["jpeg"] is not None:
            out = _jpeg(out, stage["jpeg"]["quality"])
    final = params["final"]
    sinc = None if final["sinc"] is None else blur_kernel(final["sinc"]).to(out)
    if final["order"] == "resize_first":
        out = _resize(out, lr_size, final["resize_mode"])
        out = out if sinc is None else _blur(out, sinc)
        out = out if final["jpeg"] is None else _jpeg(out, final["jpeg"]["quality"])
    else:
        out = out if final["jpeg"] is None else _jpeg(out, final["jpeg"]["quality"])
        out = _resize(out, lr_size, final["resize_mode"])
        out = out if sinc is None else _blur(out, sinc)
    # Real-ESRGAN: the LR image is quantised to 8 bit
    return torch.clamp((out * 255.0).round(), 0, 255) / 255.0


def blur_kernel(blur: dict[str, Any]) -> torch.Tensor:
    """The normalised ``[size, size]`` float64 kernel described by a sampled ``blur`` dict."""
    size = blur["size"]
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    if blur["type"] == "sinc":
        # circularly symmetric ideal low-pass: omega * J1(omega r) / (2 pi r), limit omega^2 / (4 pi) at r = 0
        omega = blur["omega_c"]
        r = torch.sqrt(x**2 + y**2)
        kernel = omega * torch.special.bessel_j1(omega * r) / (2 * math.pi * r.clamp_min(1e-12))
        kernel = torch.where(r == 0, torch.full_like(r, omega**2 / (4 * math.pi)), kernel)
        return kernel / kernel.sum()
    # quadratic form [x y] Sigma^-1 [x y]^T with Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T
    cos, sin = math.cos(blur["theta"]), math.sin(blur["theta"])
    u = cos * x + sin * y
    v = -sin * x + cos * y
    quad = (u / blur["sigma_x"]) ** 2 + (v / blur["sigma_y"]) ** 2
    family = blur["type"].split("_")[0]
    if family in ("iso", "aniso"):
        kernel = torch.exp(-0.5 * quad)
    elif family == "generalized":
        kernel = torch.exp(-0.5 * quad ** blur["beta"])
    else:  # plateau
        kernel = 1.0 / (quad ** blur["beta"] + 1.0)
    return kernel / kernel.sum()


def _sample_stage(stage: StageConfig, generator: torch.Generator) -> dict[str, Any]:
    blur = None
    if _uniform(generator, 0.0, 1.0) < stage.blur_prob:
        if _uniform(generator, 0.0, 1.0) < stage.sinc_prob:
            blur = _sample_sinc(stage.kernel_sizes, generator, cutoff=None)
        else:
            blur = _sample_gaussian_kernel(stage, generator)
    direction = ("up", "down", "keep")[_choice(generator, stage.resize_probs)]
    if direction == "up":
        factor = _uniform(generator, 1.0, stage.resize_range[1])
    elif direction == "down":
        factor = _uniform(generator, stage.resize_range[0], 1.0)
    else:
        factor = 1.0
    mode = stage.resize_modes[_choice(generator, (1.0,) * len(stage.resize_modes))]
    if _uniform(generator, 0.0, 1.0) < stage.gaussian_noise_prob:
        noise: dict[str, Any] = {"type": "gaussian", "sigma": _uniform(generator, *stage.noise_range)}
    else:
        noise = {"type": "poisson", "scale": _uniform(generator, *stage.poisson_scale_range)}
    noise["gray"] = _uniform(generator, 0.0, 1.0) < stage.gray_noise_prob
    noise["seed"] = int(torch.randint(NOISE_SEED_LIMIT, (1,), generator=generator, device=generator.device).item())
    return {
        "blur": blur,
        "resize": {"direction": direction, "factor": factor, "mode": mode, "reference": stage.resize_reference},
        "noise": noise,
        "jpeg": _sample_jpeg(stage.jpeg_prob, stage.jpeg_range, generator),
    }


def _sample_gaussian_kernel(stage: StageConfig, generator: torch.Generator) -> dict[str, Any]:
    kind = stage.kernel_types[_choice(generator, stage.kernel_probs)]
    size = stage.kernel_sizes[_choice(generator, (1.0,) * len(stage.kernel_sizes))]
    sigma_x = _uniform(generator, *stage.blur_sigma)
    if kind.endswith("_iso") or kind == "iso":
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y, theta = _uniform(generator, *stage.blur_sigma), _uniform(generator, -math.pi, math.pi)
    blur = {"type": kind, "size": size, "sigma_x": sigma_x, "sigma_y": sigma_y, "theta": theta}
    if kind.startswith(("generalized", "plateau")):
        low, high = stage.betag_range if kind.startswith("generalized") else stage.betap_range
        # Real-ESRGAN: beta below or above 1 with probability 1/2 each
        below_one = _uniform(generator, 0.0, 1.0) < 0.5
        blur["beta"] = _uniform(generator, low, 1.0) if below_one else _uniform(generator, 1.0, high)
    return blur


def _sample_sinc(
    kernel_sizes: tuple[int, ...], generator: torch.Generator, cutoff: tuple[float, float] | None
) -> dict[str, Any]:
    size = kernel_sizes[_choice(generator, (1.0,) * len(kernel_sizes))]
    if cutoff is None:
        cutoff = SINC_CUTOFF_SMALL if size < SINC_SMALL_KERNEL else SINC_CUTOFF_LARGE
    return {"type": "sinc", "size": size, "omega_c": _uniform(generator, *cutoff)}


def _sample_jpeg(prob: float, quality_range: tuple[float, float], generator: torch.Generator) -> dict[str, Any] | None:
    if _uniform(generator, 0.0, 1.0) < prob:
        return {"quality": _uniform(generator, *quality_range)}
    return None


def _blur(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    # reflect borders as in the recipe; a kernel wider than the image (tiny crops after a strong
    # downscale) cannot reflect, so it uses replicate borders instead
    border = "reflect" if min(image.shape[-2:]) > kernel.shape[-1] // 2 else "replicate"
    return filter2d(image, kernel[None], border_type=border)


def _resize(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image  # the interpolation is exactly the identity at the same size
    return resize(image, size, interpolation=mode)


def _add_noise(image: torch.Tensor, noise: dict[str, Any]) -> torch.Tensor:
    rng = torch.Generator(device=image.device).manual_seed(noise["seed"])
    channels = 1 if noise["gray"] else image.shape[1]
    if noise["type"] == "gaussian":
        shape = (image.shape[0], channels, *image.shape[-2:])
        delta = torch.randn(shape, generator=rng, device=image.device, dtype=image.dtype) * (noise["sigma"] / 255.0)
    else:
        base = image.mean(dim=1, keepdim=True) if noise["gray"] else image
        # photon counts on the 8-bit grid (the recipe counts distinct values; 8-bit images have up to 256)
        base = torch.clamp((base * 255.0).round(), 0, 255) / 255.0
        delta = (torch.poisson(base * POISSON_LEVELS, generator=rng) / POISSON_LEVELS - base) * noise["scale"]
    return torch.clamp(image + delta, 0.0, 1.0)


def _jpeg(image: torch.Tensor, quality: float) -> torch.Tensor:
    quality_t = torch.full((image.shape[0],), quality, dtype=image.dtype, device=image.device)
    return jpeg_codec_differentiable(torch.clamp(image, 0.0, 1.0), quality_t)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    u = torch.rand((), generator=generator, device=generator.device, dtype=exact_dtype(generator.device)).item()
    return low + (high - low) * u


def _choice(generator: torch.Generator, weights: Sequence[float]) -> int:
    """Index drawn with probability proportional to ``weights``."""
    u = _uniform(generator, 0.0, sum(weights))
    total = 0.0
    for i, w in enumerate(weights):
        total += w
        if u < total and w > 0:
            return i
    return max(i for i, w in enumerate(weights) if w > 0)


def _check_hr(hr: torch.Tensor, scale: int) -> None:
    if hr.ndim != 4 or hr.shape[1] != 3 or not hr.is_floating_point():
        raise ValueError(f"hr: expected a float tensor [B, 3, H, W] in [0, 1], got {tuple(hr.shape)} {hr.dtype}")
    if scale < 1 or hr.shape[-2] % scale or hr.shape[-1] % scale:
        raise ValueError(f"hr size {tuple(hr.shape[-2:])} is not a multiple of scale {scale}; crop it first")
