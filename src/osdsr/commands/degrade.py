"""``osdsr degrade``: make an LR/HR test set from a folder of HR photographs.

Writes ``OUT_DIR/hr/<stem>.png`` (the HR image, centre-cropped to ``--crop`` if given and to a multiple
of the scale, 8-bit RGB), ``OUT_DIR/lr/<stem>.png`` (its degraded x1/scale version) and
``OUT_DIR/degradation.json`` (seed, preset, recipe and every image's sampled parameters). Each image
draws from its own generator, derived from the seed and its file name, so the result does not depend
on the folder's order or contents, and ``apply_degradation(hr, params)`` on a written HR rebuilds its
LR bit for bit. A file that cannot be read prints one line and the rest continue (exit code 1 at the
end). Outputs are written under temporary names and renamed; existing ones are an error without
``--overwrite``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from osdsr.choices import IMAGE_FORMATS
from osdsr.cli import CommandError

MANIFEST_NAME = "degradation.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hr_dir", type=Path, metavar="HR_DIR", help="folder of HR images (not its sub-folders)")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output folder for lr/, hr/ and degradation.json")
    parser.add_argument("--seed", type=int, required=True, metavar="S", help="seed of the degradation parameters")
    parser.add_argument("--scale", type=int, default=4, metavar="N", help="downscaling factor (default: %(default)s)")
    parser.add_argument("--crop", type=int, metavar="N",
                        help="centre-crop each HR image to NxN first (default: whole images)")
    parser.add_argument("--preset", default="realesrgan", metavar="NAME",
                        help="degradation recipe: realesrgan (Real-ESRGAN x4 second order) or mild "
                             "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs in OUT_DIR")


def run(args: argparse.Namespace) -> int:
    from osdsr.config import to_dict
    from osdsr.data.degradation import DEGRADATION_PRESETS

    if args.preset not in DEGRADATION_PRESETS:
        raise CommandError(f"--preset {args.preset!r}: choose one of {sorted(DEGRADATION_PRESETS)}")
    if args.scale < 1:
        raise CommandError(f"--scale must be at least 1, got {args.scale}")
    if args.crop is not None and (args.crop < args.scale or args.crop % args.scale):
        raise CommandError(f"--crop {args.crop}: must be a positive multiple of --scale {args.scale}")
    if not args.hr_dir.is_dir():
        raise CommandError(f"{args.hr_dir}: not a folder of images")
    files = sorted(p for p in args.hr_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_FORMATS)
    if not files:
        raise CommandError(f"{args.hr_dir}: no images (readable suffixes: {', '.join(sorted(IMAGE_FORMATS))})")
    stems = [p.stem for p in files]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise CommandError(f"{args.hr_dir}: several images share the name(s) {clashes}; rename them")
    lr_dir, hr_dir, manifest = args.out_dir / "lr", args.out_dir / "hr", args.out_dir / MANIFEST_NAME
    targets = [manifest] + [d / f"{s}.png" for s in stems for d in (lr_dir, hr_dir)]
    existing = [t for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise CommandError(f"{existing[0]}: already exists ({len(existing)} outputs do); pass --overwrite to replace")
    lr_dir.mkdir(parents=True, exist_ok=True)
    hr_dir.mkdir(parents=True, exist_ok=True)

    config = DEGRADATION_PRESETS[args.preset]
    images: dict[str, Any] = {}
    failed = []
    for path in files:
        try:
            images[path.name] = _degrade_file(path, lr_dir, hr_dir, args, config)
        except (ValueError, OSError) as exc:
            print(f"osdsr degrade: skipped {path.name}: {exc}", file=sys.stderr)
            failed.append(path.name)
    record = {
        "seed": args.seed,
        "preset": args.preset,
        "scale": args.scale,
        "crop": args.crop,
        "generator": "torch.Generator().manual_seed(image_seed(seed, file name)), see osdsr.commands.degrade",
        "config": to_dict(config),
        "images": images,
        "failed": failed,
    }
    _write_text_atomic(manifest, json.dumps(record, indent=1) + "\n")
    summary = f"{len(images)} pairs written to {args.out_dir}, {len(failed)} failed"
    print(summary + (": " + ", ".join(failed) if failed else ""), file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


def image_seed(seed: int, name: str) -> int:
    """A 63-bit seed determined by the run seed and an image's file name (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _degrade_file(path: Path, lr_dir: Path, hr_dir: Path, args: argparse.Namespace, config: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    from osdsr.data.degradation import degrade
    from osdsr.data.image_io import LoadedImage, image_to_tensor, load_image, save_image, tensor_to_image

    pixels = load_image(path).pixels  # alpha, if any, is not part of the test pair
    height, width = pixels.shape[:2]
    crop_h, crop_w = (args.crop, args.crop) if args.crop is not None else (height, width)
    if crop_h > height or crop_w > width:
        raise ValueError(f"{path}: {width}x{height} is smaller than the {args.crop}x{args.crop} crop")
    crop_h, crop_w = crop_h - crop_h % args.scale, crop_w - crop_w % args.scale
    if crop_h == 0 or crop_w == 0:
        raise ValueError(f"{path}: {width}x{height} is smaller than the scale {args.scale}")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    # the HR is quantised to 8 bits before degrading, so the written HR reproduces the written LR
    hr_pixels = np.rint(pixels[top : top + crop_h, left : left + crop_w] * 255.0) / 255.0
    hr = image_to_tensor(np.repeat(hr_pixels, 3 // hr_pixels.shape[2], axis=2))  # gray -> RGB
    generator = torch.Generator().manual_seed(image_seed(args.seed, path.name))
    result = degrade(hr, config, generator, scale=args.scale)
    stem = path.stem
    save_image(hr_dir / f"{stem}.png", LoadedImage(tensor_to_image(hr)), overwrite=args.overwrite)
    save_image(lr_dir / f"{stem}.png", LoadedImage(tensor_to_image(result.lr)), overwrite=args.overwrite)
    return {"hr_size": [crop_h, crop_w], "crop_top_left": [top, left], "params": result.params[0]}


def _write_text_atomic(path: Path, text: str) -> None:
    from osdsr.weights_io import atomic_path

    with atomic_path(path) as temporary:
        temporary.write_text(text)
