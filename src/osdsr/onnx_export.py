"""Export a one-step SR model as one ONNX graph ``lr -> hr`` with dynamic batch, height and width.

The graph is the model's ``decode(denoise(encode(lr)))`` traced by ``torch.onnx.export`` (the
TorchScript exporter: it follows the tensor shapes symbolically, so every size that is a multiple of
``lr_multiple`` runs). The metadata that ``osdsr.models.onnx_model`` reads goes into the file's
``metadata_props``. Deterministic one-step models export: the embedded default, D3SR/DFOSD folders and
the classical baselines; the ResShift family (multi-step, noise-driven) does not.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import nn

from osdsr import __version__
from osdsr.models.onnx_model import (
    INPUT_NAME,
    META_COLOR_FIX,
    META_FORMAT,
    META_LATENT_STRIDE,
    META_LR_MULTIPLE,
    META_SCALE,
    META_SOURCE,
    ONNX_FORMAT,
    OUTPUT_NAME,
)
from osdsr.models.sr_model import SRModel

OPSET = 18
TRACE_SIDE = 64  # LR pixels of the example input the graph is traced with (any multiple works)


class _LowToHigh(nn.Module):
    """The three pipeline stages of a deterministic model as one forward."""

    def __init__(self, model: SRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.model.decode(self.model.denoise(self.model.encode(lr), None))


def onnx_lr_multiple(model: SRModel) -> int:
    """The LR multiple the exported graph needs: the model's own, and the UNet's downsampling.

    The UNet (native or diffusers) runs any latent size in PyTorch by passing each skip's size to its
    upsamplers when the size does not divide; a traced graph fixes that choice, so the latent must
    divide by 2^(levels - 1) exactly.
    """
    unet = getattr(getattr(model, "generator", None), "unet", None)
    if unet is None:
        return model.lr_multiple
    unet_factor = 2 ** (len(unet.config.block_out_channels) - 1)
    latent_multiple = max(1, unet_factor * model.latent_stride // model.scale)
    return math.lcm(model.lr_multiple, latent_multiple)


def export_onnx(model: SRModel, path: Path, *, color_fix: str, source: str) -> Path:
    """Write ``model`` (float32, CPU) as ``path``; returns ``path``."""
    import onnx

    if model.noise_channels:
        raise ValueError(
            f"{source}: {type(model).__name__} draws noise and samples in several steps; only deterministic "
            "one-step models (default, D3SR/DFOSD, bicubic, lanczos) export to ONNX"
        )
    multiple = onnx_lr_multiple(model)
    side = -(-TRACE_SIDE // multiple) * multiple
    example = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    axes = {0: "batch", 2: "height", 3: "width"}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # the UNet's shape checks (asserts, size branches) warn that tracing fixes them: the graph is
        # traced at a multiple of ``multiple``, where each takes the path that holds for every such size
        # (the batch-size branch only picks a memory layout)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            _LowToHigh(model).eval(),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    metadata = {
        META_FORMAT: ONNX_FORMAT,
        META_SCALE: str(model.scale),
        META_LR_MULTIPLE: str(multiple),
        META_LATENT_STRIDE: str(model.latent_stride),
        META_COLOR_FIX: color_fix,
        META_SOURCE: source,
        "osdsr_version": __version__,
    }
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))
    return path
