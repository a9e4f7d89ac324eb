"""``osdsr export RUN_DIR``: turn a training checkpoint into a model that ``osdsr upscale --model`` loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from osdsr.cli import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run folder written by 'osdsr train' (holds train_config.json and checkpoints/)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="model folder (or .safetensors LoRA file) to write")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint file (default: the newest in RUN/checkpoints)")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    import torch

    from osdsr.config import from_dict, read_json_file
    from osdsr.methods import resolve_method
    from osdsr.train import load_trained_state, newest_readable_checkpoint, read_checkpoint

    config_path = args.run / "train_config.json"
    data = read_json_file(config_path)
    config_cls, build = resolve_method(data.get("method", ""))
    config = from_dict(config_cls, data)
    if args.output.exists() and not args.overwrite:
        raise CommandError(f"{args.output}: exists; pass --overwrite to replace it")
    if args.checkpoint is not None:
        checkpoint, state = args.checkpoint, read_checkpoint(args.checkpoint)
    else:  # the newest that reads: a damaged newer one is named in a warning
        checkpoint, state = newest_readable_checkpoint(args.run / "checkpoints")
    method = build(config)
    generator = method.generator
    load_trained_state(generator, state["generator"], str(checkpoint))
    if "ema" in state and not args.no_ema:
        params = dict(generator.named_parameters())
        with torch.no_grad():
            for name, value in state["ema"].items():
                params[name].copy_(value)
    written = method.export(generator.eval(), args.output)
    print(f"exported step {state['step']} of {checkpoint} to {written}")
    return 0
