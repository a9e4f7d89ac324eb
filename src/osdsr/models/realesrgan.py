"""Real-ESRGAN's generators (Wang et al. 2021) as SR models: ``RRDBNet`` and ``SRVGGNetCompact``.

Written from the published architecture description (ESRGAN, Wang et al. 2018, Sec. 3.1; the
Real-ESRGAN compact models), with the module and parameter names of the official releases, so
their state dicts load strictly:

- ``RRDBNet`` (``RealESRGAN_x4plus``: 64 features, 23 blocks, growth 32): ``conv_first``, then
  ``body.N`` residual-in-residual dense blocks of three dense blocks ``rdb1..rdb3`` (five 3x3 convs
  ``conv1..conv5`` each, densely connected, LeakyReLU 0.2 after the first four, output scaled by
  ``RESIDUAL_SCALE`` and added to the input; the same scaled residual around each RRDB), ``conv_body``
  plus a long skip, then two nearest x2 upsamplings each followed by a conv (``conv_up1``,
  ``conv_up2``), ``conv_hr`` and ``conv_last``.
- ``SRVGGNetCompact`` (``realesr-general-x4v3``: 64 features, 32 convs; the anime video v3 models:
  16): ``body`` alternates 3x3 convs and per-channel PReLUs, the last conv gives 3 x 4^2 channels,
  pixel shuffle x4, plus the nearest-upsampled input.

A model folder holds ``config.json`` (``RealESRGANConfig``) and ``model.safetensors`` (the network's
state dict under the official names). Served through ``osdsr.models.sr_model``: the latent is the
LR image (identity ``encode``/``denoise``), ``decode`` runs the network and clips to [0, 1] as the
official inference does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from osdsr.config import from_dict, to_dict
from osdsr.model_loading import LoadOptions
from osdsr.weights_io import MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE, load_weights, read_safetensors, save_model_folder

SCALE = 4
IMAGE_CHANNELS = 3
LEAKY_SLOPE = 0.2  # ESRGAN: LeakyReLU(0.2) throughout
RESIDUAL_SCALE = 0.2  # ESRGAN Sec. 3.1: residual scaling of each dense block and each RRDB
MODEL_TYPE = "realesrgan"
Arch = Literal["rrdbnet", "srvgg_compact"]


@dataclass(frozen=True)
class RealESRGANConfig:
    """Which generator, and its sizes; the defaults are ``RealESRGAN_x4plus``.

    ``num_block`` and ``num_grow_ch`` size an ``rrdbnet``, ``num_conv`` an ``srvgg_compact``.
    """

    model_type: Literal["realesrgan"] = MODEL_TYPE
    arch: Arch = "rrdbnet"
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32
    num_conv: int = 32

    @classmethod
    def tiny(cls, arch: Arch = "rrdbnet") -> RealESRGANConfig:
        """Test-sized: 8 features, 2 blocks of growth 4, or 3 compact convs (other fields at their defaults)."""
        if arch == "rrdbnet":
            return cls(arch=arch, num_feat=8, num_block=2, num_grow_ch=4)
        return cls(arch=arch, num_feat=8, num_conv=3)


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; returns ``x + RESIDUAL_SCALE * conv5(...)``."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(num_feat, num_grow_ch)
        self.conv2 = _conv3x3(num_feat + num_grow_ch, num_grow_ch)
        self.conv3 = _conv3x3(num_feat + 2 * num_grow_ch, num_grow_ch)
        self.conv4 = _conv3x3(num_feat + 3 * num_grow_ch, num_grow_ch)
        self.conv5 = _conv3x3(num_feat + 4 * num_grow_ch, num_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), LEAKY_SLOPE))
        return x + RESIDUAL_SCALE * self.conv5(torch.cat(features, dim=1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks inside a scaled residual."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN's x4 generator: RRDB trunk on the LR grid, two nearest x2 upsampling convs."""

    def __init__(self, num_feat: int = 64, num_block: int = 23, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv_first = _conv3x3(IMAGE_CHANNELS, num_feat)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = _conv3x3(num_feat, num_feat)
        self.conv_up1 = _conv3x3(num_feat, num_feat)
        self.conv_up2 = _conv3x3(num_feat, num_feat)
        self.conv_hr = _conv3x3(num_feat, num_feat)
        self.conv_last = _conv3x3(num_feat, IMAGE_CHANNELS)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        features = self.conv_first(lr)
        features = features + self.conv_body(self.body(features))
        for conv in (self.conv_up1, self.conv_up2):
            features = F.leaky_relu(conv(F.interpolate(features, scale_factor=2, mode="nearest")), LEAKY_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(features), LEAKY_SLOPE))


class SRVGGNetCompact(nn.Module):
    """Plain conv + PReLU stack on the LR grid, pixel shuffle x4, plus the nearest-upsampled input."""

    def __init__(self, num_feat: int = 64, num_conv: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv3x3(IMAGE_CHANNELS, num_feat), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [_conv3x3(num_feat, num_feat), nn.PReLU(num_feat)]
        layers.append(_conv3x3(num_feat, IMAGE_CHANNELS * SCALE**2))
        self.body = nn.ModuleList(layers)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        features = lr
        for layer in self.body:
            features = layer(features)
        return F.pixel_shuffle(features, SCALE) + F.interpolate(lr, scale_factor=SCALE, mode="nearest")


def build_network(config: RealESRGANConfig) -> nn.Module:
    if config.arch == "rrdbnet":
        return RRDBNet(config.num_feat, config.num_block, config.num_grow_ch)
    return SRVGGNetCompact(config.num_feat, config.num_conv)


class RealESRGANSR(nn.Module):
    """A Real-ESRGAN generator behind the SR-model contract (latent = the LR image)."""

    scale = SCALE
    latent_stride = SCALE
    lr_multiple = 1
    noise_channels = 0

    def __init__(self, config: RealESRGANConfig, network: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.network = build_network(config) if network is None else network

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        return lr

    def denoise(self, condition: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return condition

    def decode(self, z_hr: torch.Tensor) -> torch.Tensor:
        return self.network(z_hr).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"arch={self.config.arch!r}"


def save_realesrgan_model(directory: str | Path, model: RealESRGANSR, overwrite: bool = False) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (official key names) into ``directory``."""
    metadata = {"format": "pt", "model_type": MODEL_TYPE, "arch": model.config.arch}
    return save_model_folder(directory, model.network.state_dict(), to_dict(model.config), metadata, overwrite)


def load_realesrgan_model(path: Path, options: LoadOptions) -> RealESRGANSR:
    """Loader for ``osdsr.model_loading``: a model folder -> eval-mode model on ``options.device``."""
    config_path = path / MODEL_CONFIG_FILE
    try:
        config = from_dict(RealESRGANConfig, json.loads(config_path.read_text()))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path}: not valid JSON ({exc.msg}, line {exc.lineno}); fix or re-convert it") from None
    except ValueError as exc:
        raise ValueError(f"{config_path}: {exc}") from None
    with torch.device("meta"):
        model = RealESRGANSR(config)
    state, _ = read_safetensors(path / MODEL_WEIGHTS_FILE)
    load_weights(model.network, state, str(path / MODEL_WEIGHTS_FILE))
    return model.eval().to(device=options.device, dtype=options.dtype)
