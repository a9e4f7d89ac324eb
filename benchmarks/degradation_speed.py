"""Degradation throughput on this CPU, and a contact sheet to check that LR images look like real ones.

Times ``degrade`` on a batch of real HR crops (from ``../shared/data/hr``; 256x256, and 64x64 as a
training-crop figure) for each preset: best and median of ``--repeats`` runs, since other processes
sharing the CPU slow single runs down (the load average is recorded). Writes
``benchmarks/out/degradation_speed.{json,md}`` and ``benchmarks/out/degradation_contact_sheet.png``
(each row: HR crop | its Real-ESRGAN LR | its mild LR, the LRs bicubic-upsampled x4).

    python3 benchmarks/degradation_speed.py [--threads N] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from osdsr.data.datasets import HRImageDataset, ImageSource
from osdsr.data.degradation import DEGRADATION_PRESETS, degrade

REPO_ROOT = Path(__file__).resolve().parents[1]
SHEET_ROWS = 6
SCALE = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "hr")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "out")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 64], help="HR crop sizes; the first is shown")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    results, lrs, hr_shown = [], {}, None
    for size in args.sizes:
        dataset = HRImageDataset([ImageSource(args.data)], size, seed=args.seed, length=args.batch, augment=False)
        hr = torch.stack([dataset[i]["hr"] for i in range(args.batch)])
        hr_shown = hr if hr_shown is None else hr_shown
        for name, config in DEGRADATION_PRESETS.items():
            degrade(hr[:2], config, torch.Generator().manual_seed(args.seed))  # warm-up
            seconds = []
            for repeat in range(args.repeats):
                start = time.perf_counter()
                lr = degrade(hr, config, torch.Generator().manual_seed(args.seed + repeat)).lr
                seconds.append(time.perf_counter() - start)
                if repeat == 0 and size == args.sizes[0]:
                    lrs[name] = lr
            results.append({
                "preset": name,
                "hr_size": size,
                "seconds_per_batch": seconds,
                "images_per_second_best": args.batch / min(seconds),
                "images_per_second_median": args.batch / statistics.median(seconds),
            })

    record = {
        "batch": args.batch,
        "scale": SCALE,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "device": "cpu",
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
    }
    (args.out / "degradation_speed.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# Degradation speed (batches of {args.batch} real HR crops -> x{SCALE} LR, CPU, "
        f"{record['threads']} threads, torch {torch.__version__})",
        "",
        f"Best and median of {args.repeats} runs; 1-minute load average at the end: "
        f"{record['load_average_1min_at_end']:.1f} on {os.cpu_count()} cores (shared machine).",
        "",
        "| preset | HR crop | images/s (best) | images/s (median) |",
        "|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result['preset']} | {result['hr_size']}x{result['hr_size']} | "
            f"{result['images_per_second_best']:.1f} | {result['images_per_second_median']:.1f} |"
        )
    lines += ["", f"Contact sheet: `degradation_contact_sheet.png` (HR | {' | '.join(lrs)} LR, bicubic x{SCALE})."]
    (args.out / "degradation_speed.md").write_text("\n".join(lines) + "\n")
    contact_sheet(hr_shown[:SHEET_ROWS], lrs, SHEET_ROWS).save(args.out / "degradation_contact_sheet.png")
    print("\n".join(lines))


def contact_sheet(hr: torch.Tensor, lrs: dict[str, torch.Tensor], rows: int) -> Image.Image:
    """Rows of [HR | each preset's LR upsampled bicubic to the HR size], with column labels."""
    size = hr.shape[-1]
    columns = [hr] + [F.interpolate(lr[:rows], size=hr.shape[-2:], mode="bicubic").clamp(0, 1) for lr in lrs.values()]
    grid = torch.cat([torch.cat(list(column), dim=1) for column in columns], dim=2)  # [3, rows*H, cols*W]
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    sheet = Image.fromarray(pixels)
    draw = ImageDraw.Draw(sheet)
    for i, label in enumerate(["HR", *lrs]):
        draw.rectangle((i * size, 0, i * size + 8 * len(label) + 8, 14), fill=(0, 0, 0))
        draw.text((i * size + 4, 2), label, fill=(255, 255, 255))
    return sheet


if __name__ == "__main__":
    main()
