"""``osdsr ui``: serve the local web page (``osdsr.ui``) on this machine.

It binds to 127.0.0.1 unless ``--host`` says otherwise, serves only its output folder (besides
gradio's upload cache), and needs the optional ``[ui]`` extra (gradio), imported only here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from osdsr.cli import CommandError
from osdsr.commands.upscale import DEFAULT_TILE, DTYPES, UpscaleSettings, check_dtype, parse_device

DEFAULT_PORT = 7860  # gradio's usual port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; 0.0.0.0 opens the page to the network (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME|PATH",
                        help="a model to offer besides default, bicubic and lanczos: a model folder or "
                             "file as for 'osdsr upscale --model'; repeat for several")
    parser.add_argument("-o", "--output", type=Path, metavar="OUT_DIR",
                        help="folder for the results (default: a new temporary folder)")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, metavar="N",
                        help="the page's default tile side in LR pixels (default: %(default)s)")
    parser.add_argument("--device", default="cpu", metavar="DEVICE", help="cpu, cuda, cuda:N or mps (default: cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="compute precision (default: fp32)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports: nothing leaves the machine
    try:
        import gradio  # noqa: F401 - only to give one clear line when the extra is missing
    except ImportError:
        raise CommandError("gradio is not installed; pip install 'osdsr[ui]'") from None
    from osdsr.model_loading import SHIPPED_MODELS, LoadOptions, load_sr_model, read_model_type
    from osdsr.models.classical import CLASSICAL_INTERPOLATIONS
    from osdsr.ui import build_app, launch

    if not 0 < args.port < 65536:
        raise CommandError(f"--port must be in 1..65535, got {args.port}")
    if args.tile < 0:
        raise CommandError(f"--tile must be 0 or more, got {args.tile}")
    for model in args.model:
        if model not in (*SHIPPED_MODELS, *CLASSICAL_INTERPOLATIONS):
            read_model_type(Path(model))  # a wrong path fails now, in one line, not later in the page
    device = parse_device(args.device)
    options = LoadOptions(device=device, dtype=check_dtype(args.dtype, device))
    output = args.output or Path(tempfile.mkdtemp(prefix="osdsr-ui-"))
    if output.exists() and not output.is_dir():
        raise CommandError(f"{output}: exists and is not a folder")
    settings = UpscaleSettings(tile=args.tile, device=options.device, dtype=options.dtype)
    app = build_app(lambda name: load_sr_model(name, options), output, args.model, settings)
    print(f"osdsr ui: http://{args.host}:{args.port} (Ctrl+C stops it); results go to {output}", file=sys.stderr)
    launch(app, output, args.host, args.port)
    return 0
