"""VGG16 with torchvision's state-dict keys, the feature network of the LPIPS and DISTS losses.

``VGG16().state_dict()`` has exactly the keys and shapes of torchvision's ``vgg16`` (``features.0.weight``
... ``features.28.bias``, ``classifier.{0,3,6}.{weight,bias}``), so a user's torchvision ImageNet
checkpoint loads with ``strict=True`` through :func:`load_vgg16`; torchvision itself is not needed.

``stage_features`` returns the five stage outputs the perceptual losses compare (relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3), with max pooling between stages (LPIPS) or L2 pooling (DISTS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

VGG16_CHANNELS = (64, 128, 256, 512, 512)  # output channels of the five conv stages
VGG16_CONVS_PER_STAGE = (2, 2, 3, 3, 3)
VGG16_HIDDEN = 4096  # width of the two hidden classifier layers
VGG16_POOLED_SIZE = 7  # the classifier reads a 7x7 adaptive average pool of the last stage
IMAGENET_CLASSES = 1000
VGG16_STAGE_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")

# DISTS L2 pooling (Ding et al. 2020): the 5-tap Hann window without its zero ends, [0.5, 1, 0.5],
# normalised to sum 1; applied separably as a 3x3 kernel, stride 2, padding 1.
L2_POOL_TAPS = (0.25, 0.5, 0.25)
L2_POOL_EPS = 1e-12  # inside the square root, as in the DISTS reference, so its gradient is finite at 0

Pooling = Literal["max", "l2"]

# Wrapper keys under which training scripts commonly nest a state dict.
_STATE_DICT_WRAPPERS = ("state_dict", "model", "model_state_dict", "params_ema", "params", "net")


class VGG16(nn.Module):
    """VGG16 (configuration D, no batch norm) laid out exactly like torchvision's ``vgg16``.

    ``width_divisor`` divides every channel count and the classifier width; it exists only for tiny
    test models. The default, 1, is the real ImageNet network (138M parameters).
    """

    def __init__(self, width_divisor: int = 1) -> None:
        super().__init__()
        if width_divisor < 1 or any(c % width_divisor for c in (*VGG16_CHANNELS, VGG16_HIDDEN)):
            raise ValueError(f"VGG16 width_divisor={width_divisor}: must be a power of two from 1 to 64")
        channels = [c // width_divisor for c in VGG16_CHANNELS]
        hidden = VGG16_HIDDEN // width_divisor

        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels, n_convs in zip(channels, VGG16_CONVS_PER_STAGE):
            for _ in range(n_convs):
                layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]
                in_channels = out_channels
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(VGG16_POOLED_SIZE)
        self.classifier = nn.Sequential(
            nn.Linear(channels[-1] * VGG16_POOLED_SIZE**2, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(hidden, IMAGENET_CLASSES),
        )
        self.stage_channels = tuple(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits ``[B, 1000]`` of an ImageNet-normalised image batch."""
        h = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(h, 1))

    def stage_features(self, x: torch.Tensor, pooling: Pooling = "max") -> list[torch.Tensor]:
        """The five stage outputs (``VGG16_STAGE_NAMES``) of ``x``; see :func:`stage_features`."""
        return stage_features(self.features, x, pooling)


def l2_pool(x: torch.Tensor) -> torch.Tensor:
    """DISTS L2 pooling: ``sqrt(conv(x^2, hann) + eps)`` per channel, 3x3 kernel, stride 2, zero padding 1."""
    taps = torch.tensor(L2_POOL_TAPS, dtype=x.dtype, device=x.device)
    kernel = torch.outer(taps, taps).expand(x.shape[1], 1, 3, 3)
    return (F.conv2d(x * x, kernel, stride=2, padding=1, groups=x.shape[1]) + L2_POOL_EPS).sqrt()


def stage_features(features: nn.Sequential, x: torch.Tensor, pooling: Pooling = "max") -> list[torch.Tensor]:
    """Outputs of the five VGG16 stages (the ReLU before each pooling layer) of ``features``.

    ``features`` is a ``VGG16().features`` sequence. Between stages the network's max pooling is used
    (``pooling="max"``, LPIPS) or replaced by :func:`l2_pool` (``pooling="l2"``, DISTS). The final
    pooling layer is not applied.
    """
    if pooling not in ("max", "l2"):
        raise ValueError(f"pooling={pooling!r}: expected 'max' or 'l2'")
    outputs: list[torch.Tensor] = []
    h = x
    for layer in features:
        if isinstance(layer, nn.MaxPool2d):
            outputs.append(h)
            if len(outputs) == len(VGG16_STAGE_NAMES):
                break
            h = layer(h) if pooling == "max" else l2_pool(h)
        else:
            h = layer(h)
    return outputs


def read_state_dict(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth``/``.pt`` file (``torch.load(weights_only=True)``).

    Common wrappers are unwrapped: a dict nesting the state dict under one of ``state_dict``,
    ``model``, ``model_state_dict``, ``params_ema``, ``params``, ``net``, and a ``module.`` prefix on
    every key (DataParallel). ``what`` names the file in error messages.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            loaded: object = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle / zip errors, or objects weights_only refuses
            raise ValueError(
                f"{path}: cannot read {what} with torch.load(weights_only=True) ({exc.__class__.__name__}); "
                "save a plain state dict (model.state_dict()) or a .safetensors file"
            ) from None
    state = _unwrap(loaded)
    if state is None:
        raise ValueError(f"{path}: {what} file does not hold a state dict of tensors")
    return state


def _unwrap(loaded: object) -> dict[str, torch.Tensor] | None:
    """A plain ``{key: tensor}`` dict from a state dict or one of its common wrappers, else None."""
    while isinstance(loaded, Mapping) and not _is_tensor_dict(loaded):
        inner = next((loaded[k] for k in _STATE_DICT_WRAPPERS if isinstance(loaded.get(k), Mapping)), None)
        if inner is None:
            return None
        loaded = inner
    if not isinstance(loaded, Mapping) or not loaded:
        return None
    state = {k: v.detach() for k, v in loaded.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _is_tensor_dict(mapping: Mapping) -> bool:
    items = mapping.items()
    return bool(mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in items)


def check_state_dict(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], where: str, hint: str
) -> None:
    """Raise one ValueError listing missing, unexpected and mis-shaped keys of ``given``, if any."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mis_shaped = [
        f"{k} {tuple(given[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    labelled = (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", mis_shaped))
    problems = [f"{label} {_listed(keys)}" for label, keys in labelled if keys]
    if problems:
        raise ValueError(f"{where}: {'; '.join(problems)}. {hint}")


def _listed(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''}]"


def load_vgg16(path: str | Path, *, width_divisor: int = 1, dtype: torch.dtype = torch.float32) -> VGG16:
    """A VGG16 holding the weights of a torchvision-keyed state dict at ``path`` (``strict=True``).

    The model is built on the ``meta`` device and the file's tensors are assigned to it (no random
    initialisation of 138M parameters first); floating tensors are converted to ``dtype``, so fp16
    checkpoints load as float32 by default.
    """
    state = read_state_dict(path, "VGG16 weights")
    with torch.device("meta"):
        model = VGG16(width_divisor)
    check_state_dict(
        model.state_dict(),
        state,
        str(path),
        "Expected a torchvision vgg16 state dict (torchvision.models.vgg16(...).state_dict()).",
    )
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model
