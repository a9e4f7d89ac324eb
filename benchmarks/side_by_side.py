"""A side-by-side figure for the README: bicubic | Real-ESRGAN x4plus | the default model at strength 0 |
the default model at its default strength, on crops of real low-resolution photos (colour fix: wavelet,
``osdsr upscale``'s default, for all but Real-ESRGAN).

    python benchmarks/side_by_side.py [--input PATH LEFT TOP SIZE ...] [--skip-realesrgan]

Each ``--input`` names an LR photo and a SIZE x SIZE box in its pixels; the box is cut from the LR photo
first and every model upscales that crop (so Real-ESRGAN's cost stays small), through the same pipeline as
``osdsr upscale`` (Real-ESRGAN without colour fix, as its authors run it). Each panel is nearest-neighbour
enlarged to the same size, with a one-line label. Writes ``benchmarks/out/side_by_side.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
LR_DEMO = REPO.parent / "shared" / "data" / "lr_demo"
PANEL = 320  # pixels per panel side in the figure
LABEL_HEIGHT = 18
GAP = 6
DEFAULT_INPUTS = [
    [str(LR_DEMO / "waterloo_goldhill1.png"), "150", "100", "64"],
    [str(LR_DEMO / "usc_sipi_4.1.05.png"), "60", "40", "64"],
]


def upscale(model_name: str, lr: np.ndarray, strength: float | None = None, color_fix: str = "wavelet") -> np.ndarray:
    from osdsr.data.image_io import LoadedImage
    from osdsr.inference import upscale_image
    from osdsr.model_loading import LoadOptions, load_sr_model

    model = load_sr_model(model_name, LoadOptions(strength=strength))
    image = LoadedImage(pixels=lr.astype(np.float32) / 255.0)
    with torch.inference_mode():
        result = upscale_image(model, image, color_fix=color_fix)
    pixels = result.pixels if result.pixels.shape[2] == 3 else np.repeat(result.pixels, 3, axis=2)
    return np.round(pixels * 255).astype(np.uint8)


def panel(image: np.ndarray, label: str) -> Image.Image:
    crop = Image.fromarray(image).resize((PANEL, PANEL), Image.NEAREST)
    canvas = Image.new("RGB", (PANEL, PANEL + LABEL_HEIGHT), "white")
    canvas.paste(crop, (0, LABEL_HEIGHT))
    ImageDraw.Draw(canvas).text((4, 3), label, fill="black")
    return canvas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs=4, action="append", metavar=("PATH", "LEFT", "TOP", "SIZE"),
                        help="an LR photo and a box in its pixels (repeatable; default: two real LR photos)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--skip-realesrgan", action="store_true")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "out" / "side_by_side.png")
    args = parser.parse_args()
    from osdsr.data.image_io import load_image
    from osdsr.model_loading import load_sr_model

    default_strength = load_sr_model(args.model).strength
    columns: list[tuple[str, dict]] = [("bicubic", {"model_name": "bicubic"})]
    if not args.skip_realesrgan:
        from realesrgan_release import converted_model

        columns.append(("Real-ESRGAN x4plus", {"model_name": str(converted_model()), "color_fix": "none"}))
    if default_strength is None:
        columns.append((f"osdsr {args.model}", {"model_name": args.model}))
    else:
        columns.append((f"osdsr {args.model}, strength 0", {"model_name": args.model, "strength": 0.0}))
        columns.append((f"osdsr {args.model}, strength {default_strength:g} (default)", {"model_name": args.model}))
    rows = []
    for path, left, top, size in args.input or DEFAULT_INPUTS:
        left, top, size = int(left), int(top), int(size)
        pixels = np.round(load_image(Path(path)).pixels * 255).astype(np.uint8)
        lr = pixels[top : top + size, left : left + size]
        rows.append([panel(upscale(lr=lr, **kwargs), label) for label, kwargs in columns])
    width, height = len(columns) * (PANEL + GAP) - GAP, len(rows) * (PANEL + LABEL_HEIGHT + GAP) - GAP
    figure = Image.new("RGB", (width, height), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            figure.paste(image, (c * (PANEL + GAP), r * (PANEL + LABEL_HEIGHT + GAP)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
