"""Metrics that need networks with weights the user supplies: LPIPS, DISTS, and MUSIQ / MANIQA / CLIPIQA via pyiqa.

None of these weights ship with osdsr and nothing is downloaded. A metric that cannot run here raises
:class:`MetricUnavailable` with the reason (no weight file given, pyiqa not installed, pyiqa could not build it
offline), so callers report it as unavailable rather than as a number. A weight path that is given but does
not exist is an error (``FileNotFoundError``), not "unavailable".

LPIPS and DISTS use the project's own implementations (``osdsr.losses.perceptual``) with the ImageNet VGG16
weights plus the official LPIPS heads / DISTS alpha-beta file. All of these metrics see the whole RGB image
in [0, 1] (no border crop, as pyiqa computes them); a gray image is repeated to three channels.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

# pyiqa metric name -> is higher better (all three are no-reference quality scores)
PYIQA_METRICS: dict[str, bool] = {"musiq": True, "maniqa": True, "clipiqa": True}


VGG_WEIGHTS_FLAG = "--vgg-weights (ImageNet VGG16, torchvision keys)"
HEAD_WEIGHTS_FLAGS = {
    "lpips": "--lpips-weights (the official LPIPS v0.1 vgg.pth)",
    "dists": "--dists-weights (the official DISTS weights.pt)",
}


class MetricUnavailable(Exception):
    """A metric that cannot be computed in this environment; ``str(exc)`` is the reason."""


def _to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """HxWxC (C = 1 or 3) float image in [0, 1] -> ``[1, 3, H, W]`` float32 on ``device``."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    return tensor.to(device)


class FullReferenceNetwork:
    """``(pred, gt) -> float`` for a network called as ``network(pred, gt)`` on ``[1, 3, H, W]`` tensors."""

    def __init__(self, network: nn.Module, device: torch.device) -> None:
        self.network = network.to(device).eval()
        self.device = device

    def __call__(self, pred: np.ndarray, gt: np.ndarray) -> float:
        with torch.inference_mode():
            score = self.network(_to_tensor(pred, self.device), _to_tensor(gt, self.device))
        return float(score.reshape(-1)[0])


class NoReferenceNetwork:
    """``pred -> float`` for a network called as ``network(pred)`` on a ``[1, 3, H, W]`` tensor."""

    def __init__(self, network: nn.Module, device: torch.device) -> None:
        self.network = network
        self.device = device

    def __call__(self, pred: np.ndarray) -> float:
        with torch.inference_mode():
            score = self.network(_to_tensor(pred, self.device))
        return float(score.reshape(-1)[0])


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")


def perceptual_metric(
    name: Literal["lpips", "dists"],
    vgg_weights: Path | None,
    head_weights: Path | None,
    device: torch.device,
) -> FullReferenceNetwork:
    """LPIPS or DISTS from local files: ImageNet VGG16 weights and the official heads (lower is better)."""
    needed = ((vgg_weights, VGG_WEIGHTS_FLAG), (head_weights, HEAD_WEIGHTS_FLAGS[name]))
    missing = [flag for path, flag in needed if path is None]
    if missing:
        raise MetricUnavailable(f"needs local weight files: {' and '.join(missing)}")
    _require_file(vgg_weights, "VGG16 weights")
    _require_file(head_weights, f"{name.upper()} weights")
    from osdsr.losses.perceptual import build_perceptual_loss

    network = build_perceptual_loss(name, vgg_weights=vgg_weights, head_weights=head_weights)
    return FullReferenceNetwork(network, device)


def pyiqa_metric(name: str, weights: Path | None, device: torch.device) -> NoReferenceNetwork:
    """A pyiqa no-reference metric built from a local checkpoint (pyiqa's ``pretrained_model_path``)."""
    if name not in PYIQA_METRICS:
        raise ValueError(f"unknown pyiqa metric {name!r}; choose one of {sorted(PYIQA_METRICS)}")
    if importlib.util.find_spec("pyiqa") is None:
        raise MetricUnavailable("pyiqa is not installed (pip install pyiqa)")
    if weights is None:
        raise MetricUnavailable(f"needs its local checkpoint: --pyiqa-weights {name}=PATH (nothing is downloaded)")
    _require_file(weights, f"{name} checkpoint")
    import pyiqa

    try:
        network = pyiqa.create_metric(name, as_loss=False, device=device, pretrained_model_path=str(weights))
    except Exception as exc:  # pyiqa fails in many ways offline (a backbone it would download, a bad file)
        raise MetricUnavailable(f"pyiqa could not build it from {weights}: {exc}") from exc
    return NoReferenceNetwork(network, device)
