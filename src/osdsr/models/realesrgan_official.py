"""Official Real-ESRGAN releases -> ``RealESRGANSR``: the PyTorch state dicts and the ncnn graphs.

- A ``.pth`` state dict (``RealESRGAN_x4plus.pth`` under ``params_ema``, ``realesr-general-x4v3.pth``
  under ``params``; the unwrapping is the converter's) names its architecture by its keys; the sizes
  follow from the shapes (``config_from_state_dict``).
- An ncnn graph (``realesrgan-ncnn-vulkan``'s ``.param``/``.bin``) stores the same network with the
  activations fused into the convolutions. ``from_ncnn`` maps its Convolution (and PReLU) layers, in
  file order, onto the official parameter names and checks every layer against what the network
  computes: kernel, padding, stride, channels, bias, fused activation, and the weight-free layers
  (residual sums scaled by 0.2, nearest upsampling, pixel shuffle). Anything else is refused with a
  list of what does not match.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np
import torch

from osdsr.models.realesrgan import LEAKY_SLOPE, RESIDUAL_SCALE, SCALE, RealESRGANConfig, RealESRGANSR
from osdsr.ncnn_format import NcnnLayer
from osdsr.weights_io import KEYS_SHOWN

RRDB_CONVS_PER_BLOCK = 15  # 3 dense blocks x 5 convs
RRDB_OUTER_CONVS = 6  # conv_first, conv_body, conv_up1, conv_up2, conv_hr, conv_last
NCNN_LEAKY_RELU = 2  # Convolution 9= (activation type): 2 is leaky ReLU, slope in array 10=
NCNN_NEAREST = 1  # Interp 0= (resize type): 1 is nearest
NCNN_SUM = 1  # Eltwise 0= (operation): 1 is a (weighted) sum
NCNN_ADD = 0  # BinaryOp 0= (operation): 0 is add
RRDBNET_LAYER_TYPES = frozenset({"Input", "Split", "Concat", "Convolution", "Eltwise", "BinaryOp", "Interp"})
COMPACT_LAYER_TYPES = frozenset({"Input", "Split", "Convolution", "PReLU", "PixelShuffle", "Interp", "BinaryOp"})


def config_from_state_dict(state: Mapping[str, torch.Tensor], source: str) -> RealESRGANConfig:
    """The architecture and sizes an official state dict was saved from."""
    if "conv_first.weight" in state:
        blocks = {int(key.split(".")[1]) for key in state if key.startswith("body.")}
        grow = state.get("body.0.rdb1.conv1.weight")
        if not blocks or grow is None:
            raise ValueError(f"{source}: an RRDBNet state dict needs body.0.rdb1.conv1.weight")
        return RealESRGANConfig(
            arch="rrdbnet", num_feat=state["conv_first.weight"].shape[0], num_block=len(blocks), num_grow_ch=grow.shape[0]
        )
    if "body.0.weight" in state:
        convs = sum(1 for key, value in state.items() if key.startswith("body.") and key.endswith(".weight") and value.ndim == 4)
        return RealESRGANConfig(arch="srvgg_compact", num_feat=state["body.0.weight"].shape[0], num_conv=convs - 2)
    shown = ", ".join(list(state)[:KEYS_SHOWN])
    raise ValueError(f"{source}: neither RRDBNet (conv_first.*) nor SRVGGNetCompact (body.0.*) keys; found {shown}")


def _conv_names(config: RealESRGANConfig) -> list[str]:
    """Official names of the convolutions in forward (and ncnn file) order."""
    if config.arch == "srvgg_compact":
        return [f"body.{2 * i}" for i in range(config.num_conv + 2)]
    body = [f"body.{b}.rdb{r}.conv{c}" for b in range(config.num_block) for r in (1, 2, 3) for c in range(1, 6)]
    return ["conv_first", *body, "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def _leaky(name: str) -> bool:
    """Whether the official network applies LeakyReLU(0.2) right after this conv (ncnn fuses it)."""
    return name in ("conv_up1", "conv_up2", "conv_hr") or name.endswith(("conv1", "conv2", "conv3", "conv4"))


def _ncnn_config(layers: list[NcnnLayer], source: str) -> RealESRGANConfig:
    convs = [layer for layer in layers if layer.type == "Convolution"]
    if not convs:
        raise ValueError(f"{source}: no Convolution layers; not a Real-ESRGAN model")
    if any(layer.type == "PReLU" for layer in layers):
        return RealESRGANConfig(arch="srvgg_compact", num_feat=int(convs[0].param(0)), num_conv=len(convs) - 2)
    blocks, rest = divmod(len(convs) - RRDB_OUTER_CONVS, RRDB_CONVS_PER_BLOCK)
    if rest or blocks < 1 or len(convs) < 2:
        raise ValueError(f"{source}: {len(convs)} convolutions do not make an RRDBNet (6 + 15 per block)")
    return RealESRGANConfig(
        arch="rrdbnet", num_feat=int(convs[0].param(0)), num_block=blocks, num_grow_ch=int(convs[1].param(0))
    )


def _check_conv(layer: NcnnLayer, name: str, weight_shape: torch.Size, leaky: bool) -> list[str]:
    out_channels, in_channels, kernel, _ = weight_shape
    pad_left, pad_top = layer.param(4), layer.param(14, layer.param(4))
    found = {
        "outputs": layer.param(0),
        "kernel": (layer.param(1), layer.param(11, layer.param(1))),
        "padding": (pad_left, pad_top, layer.param(15, pad_left), layer.param(16, pad_top)),
        "stride": (layer.param(3, 1), layer.param(13, layer.param(3, 1))),
        "dilation": (layer.param(2, 1), layer.param(12, layer.param(2, 1))),
        "bias": layer.param(5),
        "weights": layer.param(6),
        "activation": (layer.param(9), layer.param(10, ())),
    }
    wanted = {
        "outputs": out_channels,
        "kernel": (kernel, kernel),
        "padding": (kernel // 2,) * 4,
        "stride": (1, 1),
        "dilation": (1, 1),
        "bias": 1,
        "weights": out_channels * in_channels * kernel * kernel,
        "activation": (NCNN_LEAKY_RELU, (LEAKY_SLOPE,)) if leaky else (0, ()),
    }
    problems = []
    for key, value in wanted.items():
        got = found[key]
        if key == "activation" and got[0] == value[0] and np.allclose(got[1], value[1]):
            continue
        if got != value:
            problems.append(f"{layer.name} ({name}): {key} {got}, expected {value}")
    return problems


def _check_weight_free(layers: list[NcnnLayer], config: RealESRGANConfig) -> list[str]:
    """The weight-free layers the network needs, with their parameters, and no others."""
    allowed = RRDBNET_LAYER_TYPES if config.arch == "rrdbnet" else COMPACT_LAYER_TYPES
    problems = [f"{layer.name}: layer type {layer.type} is not part of {config.arch}" for layer in layers
                if layer.type not in allowed]
    found = Counter()
    for layer in layers:
        if layer.type == "Eltwise":
            coefficients = tuple(round(float(c), 6) for c in layer.param(1, ()))
            found[("Eltwise", layer.param(0), coefficients)] += 1
        elif layer.type == "Interp":
            found[("Interp", layer.param(0), float(layer.param(1, 1.0)), float(layer.param(2, 1.0)))] += 1
        elif layer.type in ("BinaryOp", "PixelShuffle"):
            found[(layer.type, layer.param(0))] += 1
        elif layer.type == "Concat":
            found[("Concat", layer.param(0))] += 1
    if config.arch == "rrdbnet":
        wanted = Counter({
            ("Eltwise", NCNN_SUM, (RESIDUAL_SCALE, 1.0)): 4 * config.num_block,  # 3 dense blocks + the RRDB
            ("Concat", 0): 12 * config.num_block,  # 4 dense concatenations per dense block
            ("Interp", NCNN_NEAREST, 2.0, 2.0): 2,
            ("BinaryOp", NCNN_ADD): 1,  # the long skip around the trunk
        })
    else:
        wanted = Counter({
            ("PixelShuffle", SCALE): 1,
            ("Interp", NCNN_NEAREST, float(SCALE), float(SCALE)): 1,
            ("BinaryOp", NCNN_ADD): 1,  # + the nearest-upsampled input
        })
    for key in sorted(set(found) | set(wanted), key=str):
        if found[key] != wanted[key]:
            problems.append(f"{found[key]} x {key[0]} {key[1:]}, expected {wanted[key]}")
    return problems


def from_ncnn(layers: list[NcnnLayer], blobs: Mapping[str, list[np.ndarray]], source: str) -> RealESRGANSR:
    """The Real-ESRGAN model of an ncnn graph, or a ValueError listing what does not match."""
    config = _ncnn_config(layers, source)
    with torch.device("meta"):
        model = RealESRGANSR(config)
    expected = model.network.state_dict()
    names = _conv_names(config)
    weighted = [layer for layer in layers if layer.type in ("Convolution", "PReLU")]
    problems = _check_weight_free(layers, config)
    state: dict[str, torch.Tensor] = {}
    conv_index = 0
    for position, layer in enumerate(weighted):
        if layer.type == "PReLU":
            name = f"body.{position}"
            if config.arch != "srvgg_compact" or position % 2 == 0 or f"{name}.weight" not in expected:
                problems.append(f"{layer.name}: a PReLU where {config.arch} has none")
                continue
            slopes = blobs[layer.name][0]
            if slopes.shape != tuple(expected[f"{name}.weight"].shape):
                problems.append(f"{layer.name} ({name}): {slopes.size} slopes, expected {config.num_feat}")
                continue
            state[f"{name}.weight"] = torch.from_numpy(slopes)
            continue
        if conv_index >= len(names):
            problems.append(f"{layer.name}: one Convolution more than {config.arch} has")
            continue
        name = names[conv_index]
        conv_index += 1
        if config.arch == "srvgg_compact" and name != f"body.{position}":
            problems.append(f"{layer.name} ({name}): convolutions and PReLUs do not alternate here")
            continue
        weight_shape = expected[f"{name}.weight"].shape
        conv_problems = _check_conv(layer, name, weight_shape, config.arch == "rrdbnet" and _leaky(name))
        problems += conv_problems
        if not conv_problems:
            weight, bias = blobs[layer.name]
            state[f"{name}.weight"] = torch.from_numpy(weight.reshape(weight_shape))
            state[f"{name}.bias"] = torch.from_numpy(bias)
    if conv_index < len(names):
        problems.append(f"{len(names) - conv_index} Convolution layer(s) fewer than {config.arch} needs")
    if problems:
        more = f" (and {len(problems) - KEYS_SHOWN} more)" if len(problems) > KEYS_SHOWN else ""
        raise ValueError(f"{source}: not a Real-ESRGAN graph this converter knows: " + "; ".join(problems[:KEYS_SHOWN]) + more)
    model.network.load_state_dict(state, strict=True, assign=True)
    return model
