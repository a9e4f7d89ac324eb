"""``osdsr complexity METHOD``: parameters and MACs per image of a method's full-size model.

The model is built on the ``meta`` device, so even the 1B-parameter SD generator takes no memory.
"""

from __future__ import annotations

import argparse
import json

from osdsr.cli import CommandError
from osdsr.methods import METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", help=f"method whose generator is measured: {', '.join(sorted(METHODS))}")
    parser.add_argument("--size", type=int, default=512, metavar="N",
                        help="output (HR) image side in pixels, as in the papers' tables (default: %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help='print {"parts": {NAME: {"params", "trainable", "macs"}}, "total": {...}} as JSON')
    parser.add_argument("--train", action="store_true",
                        help="count one training step (forward + backward) instead of inference (forward), "
                             "and report the training-only networks (discriminators, teachers) apart")
    parser.add_argument("--layers-only", action="store_true",
                        help="count only convolutions and linear layers, as the papers' module-hook counters "
                             "(thop, ptflops) do; leaves out attention's QK^T and AV products")
    parser.add_argument("--memory", action="store_true",
                        help="with --train: estimate the peak training memory per process of configs/METHOD.yaml "
                             "(weights, optimiser state, activations, gradients) in fp32 and bf16, with and "
                             "without trainer.gradient_checkpointing, on fake tensors (minutes for the SD methods)")
    parser.add_argument("--batch", type=int, metavar="N", help="with --memory: per-process batch (default: the config's)")
    parser.add_argument("--crop", type=int, metavar="N", help="with --memory: HR crop side (default: the config's)")


def run(args: argparse.Namespace) -> int:
    if args.memory:
        return run_memory(args)
    if args.batch is not None or args.crop is not None:
        raise CommandError("--batch and --crop go with --train --memory")
    from osdsr.complexity import as_json, format_table, method_complexity, training_only_complexity

    report = method_complexity(args.method, args.size, train=args.train, layers_only=args.layers_only)
    extra = training_only_complexity(args.method, args.size, layers_only=args.layers_only) if args.train else {}
    if args.json:
        data = as_json(report)
        if extra:
            data["training_only"] = {name: as_json(part) for name, part in extra.items()}
        print(json.dumps(data, indent=2))
        return 0
    what = "training step (forward + backward)" if args.train else "inference (forward)"
    convention = "convolutions and linear layers only" if args.layers_only else "all matrix products"
    print(f"{args.method}: {args.size}x{args.size} output, MACs of one {what}, {convention}")
    print(format_table(report))
    for name, part in extra.items():
        print(f"\ntraining only, not in the total above: {name}; per image: forward, and backward where it trains")
        print(format_table(part))
    return 0


def run_memory(args: argparse.Namespace) -> int:
    from osdsr.memory import MEMORY_SETTINGS, estimate_training_memory, format_memory_table, memory_json
    from osdsr.methods import full_config

    if not args.train:
        raise CommandError("--memory estimates a training step: add --train")
    for name, value in (("--batch", args.batch), ("--crop", args.crop)):
        if value is not None and value < 1:
            raise CommandError(f"{name} {value}: must be at least 1")
    config = full_config(args.method)
    batch = args.batch or config.trainer.batch_size
    crop = args.crop or config.data.crop_size
    estimates = {
        setting: estimate_training_memory(
            config, batch_size=batch, crop_size=crop, mixed_precision=precision, gradient_checkpointing=checkpointing
        )
        for setting, (precision, checkpointing) in MEMORY_SETTINGS.items()
    }
    if args.json:
        print(json.dumps({"method": args.method, "batch": batch, "crop": crop, "estimates": memory_json(estimates)}, indent=2))
        return 0
    print(f"{args.method}: peak training memory per process, batch {batch}, {crop}x{crop} HR crops (configs/{args.method}.yaml)")
    print(format_memory_table(estimates))
    return 0
