"""The ResShift family as SR models: the ResShift teacher and its one-step students (SinSR, TAD-SR, TDDSR).

All four share one network layout (``SwinUNet`` denoiser + an f4 autoencoder) and the eta schedule
of ``osdsr.diffusion.resshift``; they differ in how they sample:
- ``resshift`` (teacher): the T-step stochastic posterior sampler (TAD-SR Eq. 2), or a respaced
  chain of ``steps`` < T steps (``osdsr.diffusion.resshift.respaced_indices``);
- ``sinsr`` / ``tadsr`` / ``tddsr`` (students): one evaluation from z_T = y + kappa sqrt(eta_T) eps
  at step index T-1, whose prediction is the output.

A model folder holds ``config.json`` (``ResShiftModelConfig``, with ``"model_type"``) and
``model.safetensors`` (``denoiser.*`` and ``autoencoder.*`` keys under the official ResShift
names). The config's ``autoencoder`` is either the settings of the official VQGAN-f4 (3 latent
channels; the default) or ``"pixel_unshuffle"`` (the parameter-free f4 space of small embedded
models, 48 latent channels). Either way the latent grid is the LR grid (x4 SR, f4 autoencoder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from osdsr.config import from_dict, to_dict
from osdsr.model_loading import LoadOptions
from osdsr.diffusion.resshift import ResShiftSchedule, ResShiftScheduleConfig
from osdsr.diffusion.resshift_config import STUDENT_TYPES, TEACHER_TYPE
from osdsr.models.autoencoders import PixelUnshuffleAutoencoder, VQAutoencoderConfig, VQAutoencoderF4
from osdsr.models.classical import bicubic_upsample
from osdsr.models.resshift_unet import SwinUNet, SwinUNetConfig
from osdsr.weights_io import load_weights, read_safetensors, save_model_folder

logger = logging.getLogger(__name__)

SCALE = 4
LATENT_STRIDE = 4  # f4 autoencoders: one latent pixel per LR pixel
ModelType = Literal["resshift", "sinsr", "tadsr", "tddsr"]
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


PIXEL_UNSHUFFLE = "pixel_unshuffle"


@dataclass(frozen=True)
class ResShiftModelConfig:
    """What a ResShift-family model folder is; the defaults are the official x4 real-SR release (v1).

    ``autoencoder`` is the VQGAN-f4's settings, or ``"pixel_unshuffle"`` for the parameter-free f4 space.
    """

    model_type: ModelType = TEACHER_TYPE
    autoencoder: VQAutoencoderConfig | Literal["pixel_unshuffle"] = field(default_factory=VQAutoencoderConfig)
    denoiser: SwinUNetConfig = field(default_factory=SwinUNetConfig)
    schedule: ResShiftScheduleConfig = field(default_factory=ResShiftScheduleConfig)

    def __post_init__(self) -> None:
        if self.denoiser.latent_channels != self.latent_channels:
            raise ValueError(
                f"config: denoiser.latent_channels is {self.denoiser.latent_channels} but the "
                f"{self.autoencoder_name} autoencoder has {self.latent_channels} latent channels"
            )

    @property
    def autoencoder_name(self) -> str:
        return "vq_f4" if isinstance(self.autoencoder, VQAutoencoderConfig) else PIXEL_UNSHUFFLE

    @property
    def latent_channels(self) -> int:
        if isinstance(self.autoencoder, VQAutoencoderConfig):
            return self.autoencoder.embed_dim
        return 3 * LATENT_STRIDE**2

    @classmethod
    def tiny(cls, model_type: ModelType = TEACHER_TYPE) -> ResShiftModelConfig:
        """Tiny VQ-f4 + denoiser for tests (LR sides multiples of 16)."""
        return cls(model_type=model_type, autoencoder=VQAutoencoderConfig.tiny(), denoiser=SwinUNetConfig.tiny())


def build_autoencoder(config: ResShiftModelConfig) -> nn.Module:
    """The f4 autoencoder the config names; both map [-1, 1] images to latents on the LR grid."""
    if isinstance(config.autoencoder, VQAutoencoderConfig):
        return VQAutoencoderF4(config.autoencoder)
    return PixelUnshuffleAutoencoder(factor=LATENT_STRIDE)


class ResShiftSR(nn.Module):
    """A ResShift-family model behind the SR-model contract (``osdsr.models.sr_model.SRModel``).

    ``encode`` returns [y | LR] on the LR grid: y, the latent of the bicubic x4 upsample of the LR
    image in [-1, 1], and the LR image itself, which the denoiser takes as its condition.
    The noise tensor carries every random draw of the sampler, so tiled runs see the same noise:
    the prior noise of z_T, then (stochastic teacher) one chunk per step above t = 0.
    """

    scale = SCALE
    latent_stride = LATENT_STRIDE

    def __init__(
        self,
        config: ResShiftModelConfig,
        denoiser: SwinUNet,
        autoencoder: nn.Module,
        steps: int | None = None,
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.denoiser = denoiser
        self.autoencoder = autoencoder
        full_chain = ResShiftSchedule.from_config(config.schedule)
        if config.model_type in STUDENT_TYPES:
            if steps not in (None, 1):
                logger.warning("%s samples in one step: ignoring steps=%s", config.model_type, steps)
            self.schedule = full_chain.last_step_only()
            self.deterministic = True
        else:
            self.schedule = full_chain if steps in (None, full_chain.num_timesteps) else full_chain.respace(steps)
            self.deterministic = deterministic
        self.lr_multiple = denoiser.size_multiple
        draws = 1 if self.deterministic else self.schedule.num_timesteps
        self.noise_channels = config.latent_channels * draws

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        lq = lr * 2 - 1
        y = self.autoencoder.encode(bicubic_upsample(lq, SCALE)) * self.autoencoder.scaling_factor
        return torch.cat([y, lq], dim=1)

    def denoise(self, condition: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None or noise.shape[1] != self.noise_channels:
            raise ValueError(f"{self.config.model_type} needs a noise tensor of {self.noise_channels} channels")
        channels = self.config.latent_channels
        y, lq = condition[:, :channels], condition[:, channels:]
        draws = noise.split(channels, dim=1)

        def denoise_fn(z_scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.denoiser(z_scaled, t, lq)

        step_noise = None if self.deterministic else draws[1:]
        return self.schedule.sample(denoise_fn, y, draws[0], deterministic=self.deterministic, step_noise=step_noise)

    def decode(self, z_hr: torch.Tensor) -> torch.Tensor:
        image = self.autoencoder.decode(z_hr / self.autoencoder.scaling_factor)
        return ((image + 1) / 2).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        steps = self.schedule.num_timesteps
        return f"model_type={self.config.model_type!r}, steps={steps}, deterministic={self.deterministic}"


def build_resshift_sr_model(
    config: ResShiftModelConfig, steps: int | None = None, deterministic: bool = False
) -> ResShiftSR:
    """A freshly initialised model (build it under ``torch.device("meta")`` to skip initialisation)."""
    denoiser, autoencoder = SwinUNet(config.denoiser), build_autoencoder(config)
    return ResShiftSR(config, denoiser, autoencoder, steps=steps, deterministic=deterministic)


def read_resshift_config(path: Path) -> ResShiftModelConfig:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); fix or re-export it") from None
    try:
        return from_dict(ResShiftModelConfig, data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def save_resshift_model(directory: str | Path, model: ResShiftSR, overwrite: bool = False) -> Path:
    """Write ``config.json`` and ``model.safetensors`` of ``model`` into ``directory`` (atomically, file by file)."""
    metadata = {"format": "pt", "model_type": model.config.model_type}
    save_model_folder(directory, model.state_dict(), to_dict(model.config), metadata, overwrite)
    logger.info("wrote %s model to %s", model.config.model_type, directory)
    return directory


def load_resshift_sr_model(path: Path, options: LoadOptions) -> ResShiftSR:
    """Loader for ``osdsr.model_loading``: a model folder -> eval-mode model on ``options.device``."""
    config = read_resshift_config(path / CONFIG_FILE)
    with torch.device("meta"):
        model = build_resshift_sr_model(config, steps=options.steps)
    state, _ = read_safetensors(path / WEIGHTS_FILE)
    load_weights(model, state, str(path / WEIGHTS_FILE))
    return model.eval().to(device=options.device, dtype=options.dtype)


def complexity_latent_side(size: int, denoiser: SwinUNetConfig) -> int:
    """Latent side of a ``size`` x ``size`` output for a complexity report; refuses sizes the denoiser cannot take."""
    size_multiple = LATENT_STRIDE * denoiser.size_multiple
    if size % size_multiple:
        raise ValueError(f"size {size}: the ResShift denoiser needs multiples of {size_multiple}")
    return size // LATENT_STRIDE


def resshift_complexity_parts(
    size: int, model_type: ModelType = TEACHER_TYPE
) -> dict[str, tuple[nn.Module, Callable[[], tuple[torch.Tensor, ...]]]]:
    """The official full-size model on ``meta`` as (stage, input builder) parts for an HR output of ``size``.

    Data-flow order: "encoder" (bicubic x4 + VQ encoder), "denoiser" (the whole sampler: T = 15
    network evaluations for the teacher, one for the students), "decoder" (quantise + VQ decoder).
    """
    from osdsr.complexity import ComplexityPart

    config = dataclasses.replace(ResShiftModelConfig(), model_type=model_type)
    latent = complexity_latent_side(size, config.denoiser)
    with torch.device("meta"):
        model = build_resshift_sr_model(config)
    ae = model.autoencoder.requires_grad_(False)  # frozen in every ResShift-family method: only the denoiser trains
    meta = torch.device("meta")

    def lr_image() -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, 3, latent, latent, device=meta),)

    def condition_and_noise() -> tuple[torch.Tensor, ...]:
        condition = torch.zeros(1, config.latent_channels + 3, latent, latent, device=meta)
        return condition, torch.zeros(1, model.noise_channels, latent, latent, device=meta)

    def latent_code() -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, config.latent_channels, latent, latent, device=meta),)

    return {
        "encoder": (ComplexityPart(model.encode, [ae.encoder, ae.quant_conv]), lr_image),
        "denoiser": (ComplexityPart(model.denoise, [model.denoiser]), condition_and_noise),
        "decoder": (ComplexityPart(model.decode, [ae.quantize, ae.post_quant_conv, ae.decoder]), latent_code),
    }
