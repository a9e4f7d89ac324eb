"""A side-by-side crop for the README: bicubic x4 | the default model x4, same input, same crop.

    python benchmarks/side_by_side.py [--input examples/rocket.png] [--box LEFT TOP SIZE]

Writes ``benchmarks/out/side_by_side.png`` (each panel SIZE x 4 pixels of output, nearest-neighbour
enlarged when small, with a one-line label).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
PANEL = 384  # pixels per panel side in the figure
LABEL_HEIGHT = 18


def upscale(model_name: str, path: Path) -> np.ndarray:
    from osdsr.data.image_io import load_image
    from osdsr.inference import upscale_image
    from osdsr.model_loading import LoadOptions, load_sr_model

    model = load_sr_model(model_name, LoadOptions())
    with torch.inference_mode():
        result = upscale_image(model, load_image(path))
    pixels = result.pixels if result.pixels.shape[2] == 3 else np.repeat(result.pixels, 3, axis=2)
    return np.round(pixels * 255).astype(np.uint8)


def panel(image: np.ndarray, box: tuple[int, int, int], label: str) -> Image.Image:
    left, top, size = (4 * v for v in box)
    crop = Image.fromarray(image[top : top + size, left : left + size]).resize((PANEL, PANEL), Image.NEAREST)
    canvas = Image.new("RGB", (PANEL, PANEL + LABEL_HEIGHT), "white")
    canvas.paste(crop, (0, LABEL_HEIGHT))
    ImageDraw.Draw(canvas).text((4, 3), label, fill="black")
    return canvas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, default=REPO / "examples" / "rocket.png")
    parser.add_argument("--box", type=int, nargs=3, default=(96, 40, 64), metavar=("LEFT", "TOP", "SIZE"),
                        help="crop in input (LR) pixels")
    parser.add_argument("--model", default="default")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "out" / "side_by_side.png")
    args = parser.parse_args()
    box = tuple(args.box)
    panels = [
        panel(upscale("bicubic", args.input), box, "LR, bicubic x4"),
        panel(upscale(args.model, args.input), box, f"osdsr {args.model} x4"),
    ]
    figure = Image.new("RGB", (2 * PANEL + 8, PANEL + LABEL_HEIGHT), "white")
    for i, image in enumerate(panels):
        figure.paste(image, (i * (PANEL + 8), 0))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
