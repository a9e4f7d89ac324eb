"""``osdsr convert realesrgan``: an official Real-ESRGAN release -> an osdsr model folder.

    osdsr convert realesrgan --pth RealESRGAN_x4plus.pth -o models/realesrgan-x4plus
    osdsr convert realesrgan --ncnn-param realesrgan-x4plus.param --ncnn-bin realesrgan-x4plus.bin \\
        -o models/realesrgan-x4plus

``--pth``: the PyTorch release, read with ``torch.load(weights_only=True)``; the weights under
``params_ema`` (x4plus), else ``params`` (general-x4v3), else the file's own mapping. ``--ncnn-*``:
the ncnn release (``realesrgan-ncnn-vulkan``; fp16 or fp32 storage). Either way the architecture
(RRDBNet or SRVGGNetCompact, and its sizes) follows from the file, and the weights load strictly.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from osdsr.models.realesrgan import RealESRGANSR

PTH_WRAPPER_KEYS = ("params_ema", "params")  # BasicSR release checkpoints: EMA weights first


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pth", type=Path, metavar="FILE", help="official PyTorch release (.pth)")
    parser.add_argument("--ncnn-param", type=Path, metavar="FILE", help="official ncnn release: the .param graph")
    parser.add_argument("--ncnn-bin", type=Path, metavar="FILE", help="official ncnn release: the .bin weights")
    parser.add_argument("-o", "--output", type=Path, required=True, help="model folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in the output folder")


def run(args: argparse.Namespace) -> int:
    from osdsr.models.realesrgan import save_realesrgan_model
    from osdsr.models.realesrgan_official import from_ncnn
    from osdsr.ncnn_format import read_ncnn_param, read_ncnn_weights

    ncnn_given = args.ncnn_param is not None or args.ncnn_bin is not None
    if (args.pth is None) == (not ncnn_given):
        raise ValueError("give either --pth FILE or both --ncnn-param FILE and --ncnn-bin FILE")
    if ncnn_given and (args.ncnn_param is None or args.ncnn_bin is None):
        raise ValueError("the ncnn release needs both --ncnn-param and --ncnn-bin")
    if not args.overwrite and (args.output / "model.safetensors").exists():
        raise FileExistsError(f"{args.output}: already holds a model; pass --overwrite to replace it")
    if args.pth is not None:
        model = model_from_pth(args.pth)
        source = args.pth
    else:
        layers = read_ncnn_param(args.ncnn_param)
        model = from_ncnn(layers, read_ncnn_weights(layers, args.ncnn_bin), str(args.ncnn_param))
        source = args.ncnn_param
    save_realesrgan_model(args.output, model, overwrite=args.overwrite)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"wrote Real-ESRGAN {model.config.arch} ({parameters:,} parameters) from {source} to {args.output}")
    return 0


def model_from_pth(path: Path) -> RealESRGANSR:
    """The model of an official ``.pth`` release, loaded strictly."""
    import torch

    from osdsr.models.realesrgan import RealESRGANSR
    from osdsr.models.realesrgan_official import config_from_state_dict
    from osdsr.weights_io import load_weights, read_official_state_dict

    state = read_official_state_dict(path, PTH_WRAPPER_KEYS)
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path}: expected a state dict of tensors; {not_tensors[0]!r} is not a tensor")
    with torch.device("meta"):
        model = RealESRGANSR(config_from_state_dict(state, str(path)))
    load_weights(model.network, state, str(path))
    return model
