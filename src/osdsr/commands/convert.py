"""``osdsr convert FAMILY``: official checkpoints -> an osdsr model folder.

    osdsr convert resshift --denoiser resshift_realsrx4_s15_v1.pth \\
        --autoencoder autoencoder_vq_f4.pth -o models/resshift-v1
    osdsr convert realesrgan --pth RealESRGAN_x4plus.pth -o models/realesrgan-x4plus   # see convert_realesrgan

Checkpoints are read with ``torch.load(weights_only=True)``: a plain state dict, one wrapped as
``{"state_dict": ...}``, and keys prefixed ``module.`` (DataParallel) or ``_orig_mod.``
(torch.compile) are accepted; any missing, unexpected or mis-shaped key is refused with a list.
The architecture is the official x4 real-SR one unless ``--config`` gives another.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from osdsr.commands import convert_realesrgan
from osdsr.diffusion.resshift_config import STUDENT_TYPES, TEACHER_TYPE, ResShiftScheduleConfig

# Schedules of the official x4 real-SR releases (the same network; configs/realsr_swinunet_realesrgan256*.yaml)
RELEASE_SCHEDULES: dict[str, ResShiftScheduleConfig] = {
    "v1": ResShiftScheduleConfig(num_timesteps=15, min_noise_level=0.04),
    "v2": ResShiftScheduleConfig(num_timesteps=15, min_noise_level=0.04),
    "v3": ResShiftScheduleConfig(num_timesteps=4, min_noise_level=0.2),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    families = parser.add_subparsers(dest="family", metavar="FAMILY", required=True)
    add_resshift_arguments(families.add_parser("resshift", help="ResShift / SinSR-family checkpoints (.pth)"))
    convert_realesrgan.add_arguments(
        families.add_parser("realesrgan", help="Real-ESRGAN: the PyTorch release (.pth) or the ncnn one (.param/.bin)")
    )


def run(args: argparse.Namespace) -> int:
    if args.family == "realesrgan":
        return convert_realesrgan.run(args)
    return run_resshift(args)


def add_resshift_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--denoiser", type=Path, required=True, help="official denoiser checkpoint (.pth)")
    parser.add_argument("--autoencoder", type=Path, help="official VQGAN-f4 checkpoint (autoencoder_vq_f4.pth)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="model folder to write")
    parser.add_argument(
        "--model-type",
        choices=[TEACHER_TYPE, *STUDENT_TYPES],
        help="how the model samples: resshift (T steps) or a one-step student (default: resshift, or --config's)",
    )
    parser.add_argument(
        "--release",
        choices=sorted(RELEASE_SCHEDULES),
        default="v1",
        help="official x4 release whose schedule to use: v1/v2 (15 steps), v3 (4 steps) (default: v1)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML/JSON with fields of the model folder's config.json (model_type, autoencoder, denoiser, "
        "schedule) for non-official architectures; the sections it gives replace --release's",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in the output folder")


def run_resshift(args: argparse.Namespace) -> int:
    import torch

    from osdsr.config import from_dict, read_yaml, to_dict
    from osdsr.models.resshift_sr import ResShiftModelConfig, build_resshift_sr_model, save_resshift_model
    from osdsr.weights_io import load_weights, read_official_state_dict

    data: dict[str, Any] = to_dict(ResShiftModelConfig(schedule=RELEASE_SCHEDULES[args.release]))
    if args.config is not None:
        data.update(read_yaml(args.config))
    if args.model_type is not None:
        data["model_type"] = args.model_type
    config = from_dict(ResShiftModelConfig, data, where=str(args.config or "config"))
    has_weights = config.autoencoder_name == "vq_f4"
    if has_weights and args.autoencoder is None:
        raise ValueError("the vq_f4 autoencoder needs its checkpoint: pass --autoencoder autoencoder_vq_f4.pth")
    if not has_weights and args.autoencoder is not None:
        raise ValueError(
            f"--autoencoder given, but the config's autoencoder is {config.autoencoder_name!r}, which has no weights"
        )
    if not args.overwrite and (args.output / "model.safetensors").exists():
        raise FileExistsError(f"{args.output}: already holds a model; pass --overwrite to replace it")

    state = {f"denoiser.{k}": v for k, v in read_official_state_dict(args.denoiser).items()}
    if args.autoencoder is not None:
        state.update({f"autoencoder.{k}": v for k, v in read_official_state_dict(args.autoencoder).items()})
    with torch.device("meta"):
        model = build_resshift_sr_model(config)
    sources = ", ".join(str(p) for p in (args.denoiser, args.autoencoder) if p is not None)
    load_weights(model, state, sources)
    save_resshift_model(args.output, model, overwrite=args.overwrite)
    what = f"{config.model_type} model ({config.autoencoder_name}, T = {config.schedule.num_timesteps})"
    print(f"wrote {what} to {args.output}")
    return 0
