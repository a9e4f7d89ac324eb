"""Cost of Real-ESRGAN x4plus as a distillation teacher: seconds per LR crop, torch fp32 / torch bf16 / ncnn.

The teacher is ``osdsr.models.teacher.SRTeacher`` on the model converted from the official ncnn release
(``benchmarks/realesrgan_release.py`` says how to get it); the ncnn row is the ncnn runtime on the
release files themselves (fp32, one crop per call). Crops: ``--crop`` LR pixels (64: the default
model's 256-pixel HR training crops), cut from held-out photographs downscaled x4 with bicubic, in
batches of ``--batch``. Each backend: one warm-up batch, then the median of ``--runs`` batches; the
targets of every backend are compared with torch fp32's (PSNR on RGB, [0, 1]).

Writes ``benchmarks/out/teacher_cost.{json,md}``.

    python3 benchmarks/teacher_cost.py [--crop 64] [--batch 2] [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from realesrgan_release import NcnnRealESRGAN, converted_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
OUT = REPO / "benchmarks" / "out"
PHOTOS = ("kodak/kodim03.png", "kodak/kodim23.png", "scikit-image/rocket.jpg", "wikimedia-commons/005.png")


def lr_crops(count: int, side: int) -> torch.Tensor:
    """``count`` centre-ish crops of x4-bicubic-downscaled held-out photos, [count, 3, side, side]."""
    crops = []
    for i in range(count):
        photo = Image.open(SHARED / "hr" / PHOTOS[i % len(PHOTOS)]).convert("RGB")
        lr = photo.resize((photo.width // 4, photo.height // 4), Image.BICUBIC)
        left = (lr.width - side) // 2 + (i // len(PHOTOS)) * side // 2
        top = (lr.height - side) // 2
        crops.append(np.asarray(lr.crop((left, top, left + side, top + side)), dtype=np.float32) / 255)
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def timed(fn, batches: list[torch.Tensor]) -> tuple[list[float], torch.Tensor]:
    fn(batches[0])  # warm-up
    seconds, outputs = [], []
    for batch in batches:
        start = time.perf_counter()
        outputs.append(fn(batch))
        seconds.append(time.perf_counter() - start)
    return seconds, torch.cat(outputs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crop", type=int, default=64, help="LR crop side (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="crops per teacher call (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="timed batches per backend (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, torch and ncnn (default: %(default)s)")
    args = parser.parse_args()
    from osdsr.metrics.fidelity import psnr_rgb
    from osdsr.models.teacher import SRTeacher

    torch.set_num_threads(args.threads)
    crops = lr_crops(args.batch * args.runs, args.crop)
    batches = list(crops.split(args.batch))
    folder = converted_model()
    runtime = NcnnRealESRGAN(args.threads)

    def ncnn_teacher(batch: torch.Tensor) -> torch.Tensor:
        outputs = [torch.from_numpy(runtime(lr.permute(1, 2, 0).numpy())).permute(2, 0, 1) for lr in batch]
        return torch.stack(outputs).float()

    backends = {
        "torch fp32": SRTeacher.from_pretrained(folder, dtype=torch.float32),
        "torch bf16": SRTeacher.from_pretrained(folder, dtype=torch.bfloat16),
        "ncnn fp32": ncnn_teacher,
    }
    load_before = os.getloadavg()[0]
    rows, reference = {}, None
    for name, teacher in backends.items():
        seconds, targets = timed(teacher, batches)
        reference = targets if reference is None else reference
        rows[name] = {
            "seconds_per_batch": seconds,
            "seconds_per_crop": statistics.median(seconds) / args.batch,
            "psnr_vs_torch_fp32": None if targets is reference else psnr_rgb(targets.double(), reference.double()),
        }
        print(name, json.dumps(rows[name]), flush=True)
    report = {
        "machine": f"{platform.machine()}, {args.threads} threads", "model": str(folder.relative_to(REPO)),
        "crop": args.crop, "batch": args.batch, "runs": args.runs, "photos": list(PHOTOS), "backends": rows,
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "teacher_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Real-ESRGAN x4plus as a teacher: cost per LR crop",
        "",
        f"`SRTeacher` on the model converted from the official ncnn release; {args.crop}x{args.crop} LR crops "
        f"(-> {4 * args.crop}x{4 * args.crop}), batches of {args.batch}, median of {args.runs} batches after a "
        f"warm-up. Machine: {report['machine']}, shared: 1-minute load average {load_before:.1f} before, "
        f"{report['load_average_1min'][1]:.1f} after (compare rows, not absolute seconds).",
        "",
        "| backend | s per crop | PSNR vs torch fp32 (dB) |",
        "|---|---|---|",
    ]
    for name, row in rows.items():
        agreement = "-" if row["psnr_vs_torch_fp32"] is None else f"{row['psnr_vs_torch_fp32']:.1f}"
        lines.append(f"| {name} | {row['seconds_per_crop']:.2f} | {agreement} |")
    (OUT / "teacher_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
