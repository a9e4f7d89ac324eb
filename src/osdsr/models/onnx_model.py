"""An exported ONNX network served through the SR-model contract, run by onnxruntime.

``osdsr onnx`` writes one graph ``lr [B, 3, H, W] -> hr [B, 3, scale*H, scale*W]`` (both in [0, 1],
height and width dynamic) with what the pipeline needs in the file's ``metadata_props``: the scale,
the multiple the LR sides are padded to, the colour fix the model is meant to run with, and where it
came from. Like the classical baselines, the "latent" of this model is the LR image itself
(identity ``encode`` and ``denoise``) and ``decode`` runs the graph; so the one tiled pipeline tiles,
blends and colour-fixes it as any other model, blending in HR pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

# metadata_props keys written by osdsr.onnx_export and read here
META_FORMAT = "osdsr_format"  # value ONNX_FORMAT: this file is an osdsr lr -> hr graph
ONNX_FORMAT = "lr_to_hr/1"
META_SCALE = "scale"
META_LR_MULTIPLE = "lr_multiple"  # LR height and width must be multiples of this (pipeline pads)
META_LATENT_STRIDE = "latent_stride"  # the source model's HR pixels per latent pixel (informative)
META_COLOR_FIX = "color_fix"  # the colour fix the model is meant to run with
META_SOURCE = "source_model"  # the model name or folder it was exported from
INPUT_NAME, OUTPUT_NAME = "lr", "hr"


class OnnxSRModel:
    """``encode``/``denoise`` pass the LR image on; ``decode`` runs the graph on it (float32).

    ``run`` maps a float32 ``[B, 3, H, W]`` array to the graph's output (an onnxruntime session here;
    ``benchmarks/onnx_speed.py`` plugs in OpenVINO); ``metadata`` is the file's ``metadata_props``.
    """

    noise_channels = 0

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], metadata: dict[str, str]) -> None:
        self.run = run
        self.scale = int(metadata[META_SCALE])
        self.latent_stride = self.scale
        self.lr_multiple = int(metadata[META_LR_MULTIPLE])
        self.color_fix = metadata[META_COLOR_FIX]

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        return lr

    def denoise(self, condition: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return condition

    def decode(self, z_hr: torch.Tensor) -> torch.Tensor:
        lr = np.ascontiguousarray(z_hr.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(np.asarray(self.run(lr))).to(z_hr.device)

    def to(self, *args, **kwargs) -> OnnxSRModel:
        """onnxruntime owns where the graph runs; tensors come back on the caller's device."""
        return self


def load_onnx_sr_model(path: Path, options) -> OnnxSRModel:
    """Loader for ``osdsr.model_loading``: an ``.onnx`` file written by ``osdsr onnx`` (CPU, float32)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError(f"{path}: running an ONNX model needs onnxruntime; pip install 'osdsr[onnx]'") from None
    if getattr(options, "dtype", torch.float32) != torch.float32:
        raise ValueError(f"{path}: ONNX models run in fp32 (onnxruntime on CPU); drop --dtype")
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = torch.get_num_threads()  # the same thread budget as PyTorch
    session_options.log_severity_level = 3  # errors only
    # Without the arena, memory goes back after each tile: with it a 512-pixel tile of the default model
    # keeps ~9 GiB resident (measured), for ~1.5x the steady-state speed
    session_options.enable_cpu_mem_arena = False
    try:
        session = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for damaged files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not a readable ONNX model ({reason}); export it again with 'osdsr onnx'") from None
    metadata = session.get_modelmeta().custom_metadata_map
    if metadata.get(META_FORMAT) != ONNX_FORMAT:
        raise ValueError(f"{path}: not an osdsr ONNX export (no {META_FORMAT!r} metadata); export it with 'osdsr onnx'")
    return OnnxSRModel(lambda lr: session.run([OUTPUT_NAME], {INPUT_NAME: lr})[0], metadata)


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (for runtimes other than onnxruntime)."""
    import onnx

    return {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}
