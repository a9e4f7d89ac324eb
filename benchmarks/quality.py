"""Quality and speed of the embedded default model against the classical baselines, in one run.

1. The held-out photographs (``configs/heldout.txt``, whole images) are degraded with a fixed seed
   through ``osdsr degrade``, twice: the Real-ESRGAN recipe and the mild recipe.
2. Every model upscales every LR image with the same settings as ``osdsr upscale``; PSNR-Y, SSIM-Y
   (BasicSR conventions) and NIQE are computed against the HR crops. NIQE is also reported on the real
   low-resolution photos of ``../shared/data/lr_demo`` (no ground truth). On both, the flat-area grid
   score (``osdsr.metrics.flat_grid``: a fixed pattern with the latent block period over flat areas,
   8-bit levels RMS, mean over the images that have flat areas) catches what neither PSNR nor NIQE sees.
3. Speed and peak memory of a 512x512 -> 2048x2048 upscale, per model, each in a fresh subprocess
   (median of 3 timed runs after one warm-up; peak RSS (VmHWM) of the subprocess).

Writes ``benchmarks/out/quality.json`` and ``benchmarks/out/quality.md``.

    python benchmarks/quality.py [--model default] [--extra-model LABEL=NAME_OR_PATH ...] [--skip-speed]
    python benchmarks/quality.py --model runs/resshift-tiny/model --extra-model sinsr=runs/sinsr-tiny/model \
        --output benchmarks/out/distillation   # the tiny teacher (15 steps) and students (1 step)
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from osdsr.commands.upscale import DEFAULT_TILE

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
OUT = REPO / "benchmarks" / "out"
SEED = 1234
SPEED_LR = 512  # LR side of the timing case (output 2048x2048)
SPEED_RUNS = 3


def held_out_folder(target: Path) -> Path:
    """Symlinks to the held-out HR photos, flattened to unique names."""
    target.mkdir(parents=True, exist_ok=True)
    for line in (REPO / "configs" / "heldout.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            (target / line.replace("/", "__")).symlink_to(SHARED / "hr" / line)
    return target


def make_test_sets(work: Path, crop: int | None) -> dict[str, Path]:
    from osdsr.cli import main as osdsr_main

    hr = held_out_folder(work / "heldout_hr")
    sets = {}
    for preset in ("realesrgan", "mild"):
        out = work / f"set_{preset}"
        crop_args = ["--crop", str(crop)] if crop else []
        code = osdsr_main(["degrade", str(hr), str(out), "--seed", str(SEED), "--preset", preset, *crop_args])
        # exit code 1: some photos were smaller than the crop and were skipped (reported above)
        if code not in (0, 1) or not any((out / "lr").iterdir()):
            raise SystemExit(f"osdsr degrade failed for preset {preset}")
        sets[preset] = out
    return sets


def upscale_folder(model_name: str, lr_dir: Path, out_dir: Path) -> float:
    """Upscale every image of ``lr_dir`` with the CLI's defaults; returns seconds per image."""
    from osdsr.cli import main as osdsr_main

    files = sorted(p for p in lr_dir.iterdir() if p.is_file())
    start = time.perf_counter()
    code = osdsr_main(["upscale", *map(str, files), "-o", str(out_dir), "--model", model_name])
    if code != 0:
        raise SystemExit(f"osdsr upscale --model {model_name} failed on {lr_dir}")
    return (time.perf_counter() - start) / len(files)


def score_folder(pred_dir: Path, gt_dir: Path | None) -> dict:
    """Mean PSNR-Y / SSIM-Y (with ground truth), NIQE and grid over a folder, the NIQE median, per-image scores."""
    from osdsr.data.image_io import load_image
    from osdsr.metrics.fidelity import psnr, ssim
    from osdsr.metrics.flat_grid import flat_area_grid
    from osdsr.metrics.niqe import niqe

    per_image: dict[str, dict[str, float]] = {}
    for pred_path in sorted(pred_dir.iterdir()):
        pred = np.round(load_image(pred_path).pixels * 255).astype(np.uint8)
        if pred.shape[2] == 1:
            pred = np.repeat(pred, 3, axis=2)
        scores = {"niqe": niqe(pred), "grid": flat_area_grid(pred)}
        if gt_dir is not None:
            gt = np.round(load_image(gt_dir / pred_path.name).pixels * 255).astype(np.uint8)
            if gt.shape[2] == 1:
                gt = np.repeat(gt, 3, axis=2)
            scores.update(psnr_y=psnr(pred, gt), ssim_y=ssim(pred, gt))
        per_image[pred_path.name] = scores
    keys = next(iter(per_image.values())).keys()
    summary = {k: float(np.nanmean([s[k] for s in per_image.values()])) for k in keys}
    summary["niqe_median"] = float(np.median([s["niqe"] for s in per_image.values()]))
    return {**summary, "per_image": per_image}


SPEED_SNIPPET = """
import statistics, sys, time, json
import numpy as np, torch
from osdsr.data.image_io import load_image
from osdsr.inference import upscale_tensor
from osdsr.model_loading import load_sr_model, LoadOptions
path, name, side, runs, tile = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
pixels = load_image(path).pixels[:side, :side]
lr = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
model = load_sr_model(name, LoadOptions())
times = []
tiled = []  # with the tiling `osdsr upscale` uses by default
with torch.inference_mode():
    upscale_tensor(model, lr, color_fix="wavelet")
    for _ in range(runs):
        start = time.perf_counter()
        out = upscale_tensor(model, lr, color_fix="wavelet")
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        upscale_tensor(model, lr, color_fix="wavelet", tile=tile)
        tiled.append(time.perf_counter() - start)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) forked parent
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds_median": statistics.median(times), "seconds": times, "peak_rss_bytes": peak,
                  "tiled_seconds_median": statistics.median(tiled), "tile": tile,
                  "output": list(out.shape[-2:]), "threads": torch.get_num_threads()}))
"""


def speed(model_name: str) -> dict[str, object]:
    source = SHARED / "hr" / "plasma-workspace-wallpapers" / "Kite.jpg"  # held out; 2560x1600
    result = subprocess.run(
        [sys.executable, "-c", SPEED_SNIPPET, str(source), model_name, str(SPEED_LR), str(SPEED_RUNS), str(DEFAULT_TILE)],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"speed run of {model_name} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    lines = [
        "# Quality benchmark: one-step models vs classical baselines",
        "",
        f"Held-out photographs ({report['images']} images, {report['crop'] or 'whole'} HR crops), "
        f"degraded by `osdsr degrade --seed {SEED}`; metrics on the SR outputs (PSNR/SSIM on Y, crop border 4; "
        "NIQE: mean, and median in brackets). Speed: 512x512 -> 2048x2048, median of "
        f"{SPEED_RUNS}, in one piece and with `osdsr upscale`'s default tiling (--tile {DEFAULT_TILE}).",
        f"Machine: {report['machine']}. All rows measured in the same run.",
        "",
        "Grid: flat-area grid score (8-bit levels; bicubic about 0.03, visible from about 0.5).",
        "",
        "| model | realesrgan PSNR-Y | SSIM-Y | NIQE | grid | mild PSNR-Y | SSIM-Y | NIQE | real LR NIQE | grid "
        "| s 512->2048 | tiled s | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def niqe(scores: dict) -> str:
        return f"{scores['niqe']:.3f} ({scores['niqe_median']:.2f})"

    for name, row in report["models"].items():
        heavy, mild, real = row["realesrgan"], row["mild"], row["real_lr"]
        speed_row = row.get("speed") or {}
        seconds = f"{speed_row['seconds_median']:.2f}" if speed_row else "-"
        tiled = f"{speed_row['tiled_seconds_median']:.2f}" if speed_row else "-"
        peak = f"{speed_row['peak_rss_bytes'] / 2**20:.0f}" if speed_row else "-"
        lines.append(
            f"| {name} | {heavy['psnr_y']:.3f} | {heavy['ssim_y']:.4f} | {niqe(heavy)} | {heavy['grid']:.2f} | "
            f"{mild['psnr_y']:.3f} | {mild['ssim_y']:.4f} | {niqe(mild)} | {niqe(real)} | {real['grid']:.2f} | "
            f"{seconds} | {tiled} | {peak} |"
        )
    names = list(report["models"])
    lines += ["", "NIQE per held-out image, Real-ESRGAN split (a mean over 12 images moves with its outliers):", "",
              "| image | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    images = report["models"][names[0]]["realesrgan"]["per_image"]
    for image in images:
        cells = [f"{report['models'][n]['realesrgan']['per_image'][image]['niqe']:.2f}" for n in names]
        lines.append(f"| {image} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="the model under test (name or path)")
    parser.add_argument("--extra-model", action="append", default=[], metavar="NAME=PATH", help="more rows")
    parser.add_argument("--skip-speed", action="store_true", help="quality only")
    parser.add_argument("--crop", type=int, help="HR centre crop (photos smaller than it are skipped)")
    parser.add_argument("--output", type=Path, default=OUT / "quality", help="output path without suffix")
    args = parser.parse_args()
    models = {"bicubic": "bicubic", "lanczos": "lanczos", args.model: args.model}
    models.update(dict(item.split("=", 1) for item in args.extra_model))
    report: dict = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "seed": SEED, "crop": args.crop, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sets = make_test_sets(work, args.crop)
        report["images"] = len(list((sets["mild"] / "lr").iterdir()))
        for label, name in models.items():
            row: dict = {}
            for preset, folder in sets.items():
                out = work / f"sr_{label}_{preset}"
                row["seconds_per_image"] = upscale_folder(name, folder / "lr", out)
                row[preset] = score_folder(out, folder / "hr")
            real_out = work / f"sr_{label}_real"
            upscale_folder(name, SHARED / "lr_demo", real_out)
            row["real_lr"] = score_folder(real_out, None)
            if not args.skip_speed:
                row["speed"] = speed(name)
            report["models"][label] = row
            print(label, json.dumps(row), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
