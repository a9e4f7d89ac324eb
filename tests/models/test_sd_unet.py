"""The diffusers-free UNet: same state dict and bit-identical outputs as diffusers' UNet2DConditionModel."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel

from osdsr.model_loading import default_model_dir
from osdsr.models.sd_unet import SDUNet, native_unet_config
from tiny_sd import TINY_SD_UNET

# the embedded default model's UNet shape, narrowed (two heads of width 8 in the mid block)
SMALL_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 48,
    "out_channels": 48,
    "down_block_types": ["DownBlock2D"] * 3,
    "up_block_types": ["UpBlock2D"] * 3,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "block_out_channels": [8, 16, 16],
    "layers_per_block": 2,
    "cross_attention_dim": 12,
    "attention_head_dim": 2,
    "norm_num_groups": 4,
    "only_cross_attention": True,
}


def _default_unet_config() -> dict[str, Any]:
    folder = default_model_dir()
    assert folder is not None
    return json.loads((folder / "config.json").read_text())["generator"]["unet"]


def _pair(config: dict[str, Any]) -> tuple[UNet2DConditionModel, SDUNet]:
    reference = UNet2DConditionModel(**config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so every parameter matters
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    native_config = native_unet_config(config)
    assert native_config is not None
    with torch.device("meta"):
        native = SDUNet(native_config)
    native.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference, native.eval()


@pytest.mark.parametrize("config", [SMALL_UNET, _default_unet_config()], ids=["small", "default-model"])
@pytest.mark.parametrize("size", [(8, 8), (12, 20), (9, 7)])  # (9, 7): uneven sizes, upsampled to the skips'
def test_outputs_are_identical_to_diffusers(config: dict[str, Any], size: tuple[int, int]) -> None:
    reference, native = _pair(config)
    shapes = {name: tuple(value.shape) for name, value in native.state_dict().items()}
    assert shapes == {name: tuple(value.shape) for name, value in reference.state_dict().items()}
    sample = torch.randn(2, config["in_channels"], *size)
    prompt = torch.randn(2, 8, config["cross_attention_dim"])
    timestep = torch.tensor([50])
    with torch.no_grad():
        expected = reference(sample, timestep, encoder_hidden_states=prompt).sample
        assert torch.equal(native(sample, timestep, encoder_hidden_states=prompt).sample, expected)


@pytest.mark.parametrize(
    "change",
    [
        {"down_block_types": ["CrossAttnDownBlock2D"] + ["DownBlock2D"] * 2},
        {"use_linear_projection": True},
        {"attention_head_dim": [2, 2, 2]},
        {"resnet_time_scale_shift": "scale_shift"},
        {"an_unknown_field": 1},
    ],
)
def test_configs_outside_the_native_part_are_left_to_diffusers(change: dict[str, Any]) -> None:
    assert native_unet_config({**SMALL_UNET, **change}) is None


def test_sd21_shaped_configs_are_left_to_diffusers() -> None:
    assert native_unet_config(TINY_SD_UNET) is None
