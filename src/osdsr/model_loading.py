"""Turn a model name or a local path into an SR model (``osdsr.models.sr_model.SRModel``).

Accepted:
- ``bicubic`` / ``lanczos``: the classical baselines;
- ``default``: the embedded model folder ``weights/default`` (inside the installed package, or at
  the repository root in a source checkout, ``osdsr.shipped``); an error when it is missing;
- a model folder: ``config.json`` with a ``"model_type"`` key, beside ``model.safetensors``;
- a ``.safetensors`` file whose metadata key ``osdsr_config`` holds the config (an SD-family LoRA
  export, loaded on top of the local base model given as ``pretrained``);
- an ``.onnx`` file written by ``osdsr onnx`` (run by onnxruntime).
The model type picks the loader in ``MODEL_LOADERS``; loaders import their (heavy) modules lazily.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from osdsr.models.classical import CLASSICAL_INTERPOLATIONS, ClassicalUpsampler
from osdsr.models.sr_model import SRModel
from osdsr.shipped import shipped_path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
# the embedded models by name, shipped with the package (osdsr.shipped): the default and its predecessor
SHIPPED_MODELS = {DEFAULT_MODEL: "weights/default", "default-v1": "weights/default-v1"}
LORA_CONFIG_KEY = "osdsr_config"  # safetensors metadata key of an exported LoRA file
ONNX_MODEL_TYPE = "onnx"  # the model type of an .onnx file (its metadata is checked when it loads)


@dataclass(frozen=True)
class LoadOptions:
    """How to load: sampling steps (multi-step models), base model folder, device and dtype."""

    steps: int | None = None
    pretrained: Path | None = None  # local base-model folder (e.g. SD-2.1 diffusers layout) for LoRA files
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    strength: float | None = None  # models with a strength control (0 = fidelity, 1 = detail); None: theirs


def _load_sd(path: Path, options: LoadOptions) -> SRModel:
    from osdsr.models.sd_generator import load_sd_sr_model

    return load_sd_sr_model(path, options)


def _load_resshift(path: Path, options: LoadOptions) -> SRModel:
    from osdsr.models.resshift_sr import load_resshift_sr_model

    return load_resshift_sr_model(path, options)


def _load_realesrgan(path: Path, options: LoadOptions) -> SRModel:
    from osdsr.models.realesrgan import load_realesrgan_model

    return load_realesrgan_model(path, options)


def _load_onnx(path: Path, options: LoadOptions) -> SRModel:
    from osdsr.models.onnx_model import load_onnx_sr_model

    return load_onnx_sr_model(path, options)


# model_type (from config.json or the LoRA metadata; "onnx" for .onnx files) -> loader(path, options)
MODEL_LOADERS: dict[str, Callable[[Path, LoadOptions], SRModel]] = {
    "d3sr": _load_sd,
    "dfosd": _load_sd,
    "sd-onestep": _load_sd,
    "resshift": _load_resshift,
    "sinsr": _load_resshift,
    "tadsr": _load_resshift,
    "tddsr": _load_resshift,
    "realesrgan": _load_realesrgan,
    ONNX_MODEL_TYPE: _load_onnx,
}


def default_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """An embedded model's folder (``SHIPPED_MODELS``): the installed package's ``osdsr/weights/<name>``,
    else the repository's.

    Raises FileNotFoundError (one line, both places named) when it is missing.
    """
    folder = shipped_path(SHIPPED_MODELS[name])
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: the embedded model {name} has no config.json; reinstall osdsr (pip install .)")
    return folder


def load_sr_model(name_or_path: str | Path, options: LoadOptions | None = None) -> SRModel:
    """Load a classical baseline, the embedded default model, a model folder or a LoRA file."""
    options = options or LoadOptions()
    model = _load(str(name_or_path), options)
    if options.strength is not None and getattr(model, "strength", None) is None:
        raise ValueError(f"{name_or_path}: this model has no strength control; leave out --strength")
    return model


def _load(name: str, options: LoadOptions) -> SRModel:
    if name in CLASSICAL_INTERPOLATIONS:
        return ClassicalUpsampler(name).to(options.device)
    if name in SHIPPED_MODELS:
        return _load(str(default_model_dir(name)), options)
    path = Path(name)
    model_type = read_model_type(path)
    if model_type not in MODEL_LOADERS:
        raise ValueError(f"{path}: unknown model_type {model_type!r}; known: {sorted(MODEL_LOADERS)}")
    logger.info("loading %s model from %s", model_type, path)
    return MODEL_LOADERS[model_type](path, options)


def read_model_type(path: Path) -> str:
    """The ``model_type`` of a model folder or of a LoRA ``.safetensors`` file, with clear errors."""
    if path.is_dir():
        config_path, weights_path = path / "config.json", path / "model.safetensors"
        for required in (config_path, weights_path):
            if not required.is_file():
                raise FileNotFoundError(f"{path}: not a model folder ({required.name} is missing)")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_path}: not valid JSON ({exc.msg}, line {exc.lineno}); fix or re-export it") from None
        source = str(config_path)
    elif path.is_file() and path.suffix == ".onnx":
        return ONNX_MODEL_TYPE
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(
                f"{path}: not a model; give a model folder, a .safetensors or .onnx file, or bicubic/lanczos/default/default-v1"
            )
        config = _lora_metadata(path)
        source = f"{path} (metadata {LORA_CONFIG_KEY})"
    else:
        raise FileNotFoundError(
            f"{path}: no such model; give a model folder, a .safetensors or .onnx file, or one of "
            f"{sorted([*CLASSICAL_INTERPOLATIONS, *SHIPPED_MODELS])}"
        )
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{source}: no \"model_type\" key; the file was not written by osdsr export/train")
    return config["model_type"]


def _lora_metadata(path: Path) -> object:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise ValueError(f"{path}: not a readable safetensors file ({exc}); re-export or re-download it") from None
    if LORA_CONFIG_KEY not in metadata:
        raise ValueError(f"{path}: no {LORA_CONFIG_KEY!r} metadata; export it with 'osdsr export'")
    try:
        return json.loads(metadata[LORA_CONFIG_KEY])
    except json.JSONDecodeError:
        raise ValueError(f"{path}: {LORA_CONFIG_KEY!r} metadata is not valid JSON; re-export the file") from None
