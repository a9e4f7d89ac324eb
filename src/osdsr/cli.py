"""The ``osdsr`` command line: a thin dispatcher over ``osdsr.commands.<name>`` modules.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
only when their command runs, so ``osdsr --help`` stays fast. Expected failures (bad input, missing
files, invalid configs) become one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from osdsr import __version__

# command name -> (module under osdsr.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "upscale": ("upscale", "upscale images or folders x4 with a one-step model (default: the embedded model)"),
    "train": ("train", "train a method from a YAML config"),
    "eval": ("evaluate", "compute PSNR/SSIM/NIQE/... of predictions, optionally against ground truth"),
    "degrade": ("degrade", "make LR/HR test pairs with the Real-ESRGAN degradation"),
    "complexity": ("complexity", "parameters and MACs of a method's full-size model (built on 'meta')"),
    "convert": ("convert", "convert official checkpoints (ResShift, Real-ESRGAN) into osdsr model folders"),
    "export": ("export", "export a training checkpoint as a model file that 'upscale --model' loads"),
    "onnx": ("onnx", "export a one-step model as an ONNX file that 'upscale --model FILE.onnx' runs"),
    "ui": ("ui", "a local web page: drop images, compare before/after, download (needs the [ui] extra)"),
    "schedule": ("schedule", "print a diffusion schedule (e.g. the ResShift eta values)"),
}


class CommandError(Exception):
    """An expected failure: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osdsr", description="One-step diffusion x4 super-resolution.")
    parser.add_argument("--version", action="version", version=f"osdsr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    known, rest = parser.parse_known_args(argv)
    if known.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if known.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    module_name, help_text = COMMANDS[known.command]
    module = importlib.import_module(f"osdsr.commands.{module_name}")
    cmd_parser = argparse.ArgumentParser(prog=f"osdsr {known.command}", description=help_text)
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (CommandError, ValueError, OSError) as exc:  # OSError: missing, unwritable, full disk ...
        print(f"osdsr {known.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"osdsr {known.command}: interrupted", file=sys.stderr)
        return 130
