"""``osdsr onnx``: export a model as one ONNX graph that ``osdsr upscale --model FILE.onnx`` runs.

Needs the optional ``[onnx]`` extra (onnx, onnxscript, onnxruntime). The file is written to a
temporary name beside the target and renamed into place; an existing file is kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from osdsr.cli import CommandError
from osdsr.choices import COLOR_FIXES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", metavar="NAME|PATH",
                        help="'default', 'bicubic', 'lanczos', a D3SR/DFOSD model folder or LoRA file "
                             "(default: %(default)s)")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="FILE.onnx", help="the ONNX file to write")
    parser.add_argument("--pretrained", type=Path, metavar="DIR", help="local base-model folder for a LoRA file")
    parser.add_argument("--color-fix", choices=COLOR_FIXES, default="wavelet",
                        help="the colour fix stored as the model's default for 'osdsr upscale' (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401 - the exporter writes through it
        import onnxscript  # noqa: F401 - torch.onnx needs it
    except ImportError:
        raise CommandError("exporting needs onnx and onnxscript; pip install 'osdsr[onnx]'") from None
    from osdsr.model_loading import LoadOptions, load_sr_model
    from osdsr.onnx_export import export_onnx

    if args.output.suffix != ".onnx":
        raise CommandError(f"{args.output}: the output name must end in .onnx")
    if args.output.exists() and not args.overwrite:
        raise CommandError(f"{args.output}: already exists; --overwrite replaces it")
    if not args.output.parent.is_dir():
        raise CommandError(f"{args.output.parent}: output folder does not exist")
    model = load_sr_model(args.model, LoadOptions(pretrained=args.pretrained))
    temporary = args.output.with_name(f".{args.output.name}.{secrets.token_hex(4)}.tmp")
    try:
        export_onnx(model, temporary, color_fix=args.color_fix, source=str(args.model))
        os.replace(temporary, args.output)
    finally:
        temporary.unlink(missing_ok=True)
    print(f"wrote {args.output} ({args.output.stat().st_size / 2**20:.1f} MiB)")
    return 0
