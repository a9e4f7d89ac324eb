"""Quality and speed of the embedded default model against the classical baselines and Real-ESRGAN, in one run.

1. The held-out photographs (``configs/heldout.txt``, whole images or ``--crop`` centre crops) are
   degraded with a fixed seed through ``osdsr degrade``, twice: the Real-ESRGAN recipe and the mild recipe.
2. Every model upscales every LR image with the same settings as ``osdsr upscale``; PSNR-Y, SSIM-Y
   (BasicSR conventions), NIQE and the weight-free full-reference MS-SSIM, GMSD and HaarPSI
   (``osdsr.metrics.full_reference``, piq's conventions) are computed against the HR crops. NIQE is also
   reported on the real low-resolution photos of ``../shared/data/lr_demo`` (no ground truth; whole, or
   ``--real-crop`` LR centre crops). On both, the flat-area grid score (``osdsr.metrics.flat_grid``: a
   fixed pattern with the latent block period over flat areas, 8-bit levels RMS, mean over the images
   that have flat areas) catches what neither PSNR nor NIQE sees.
   Real-ESRGAN x4plus (the official release, converted from its ncnn files by ``osdsr convert``, see
   ``benchmarks/realesrgan_release.py``) runs as its authors run it, without colour fix
   (``--color-fix none``); ``--skip-realesrgan`` leaves it out.
3. Speed and peak memory of a 512x512 -> 2048x2048 upscale, per model, each in a fresh subprocess
   (median of 3 timed runs after one warm-up, and with the default tiling; peak RSS (VmHWM) of the
   subprocess); the network models also in bf16 where the CPU has native bf16 (what ``osdsr upscale``
   then runs). Real-ESRGAN, about 40x the default model's work, is
   timed once per precision, without warm-up or the tiled run, in the background while step 2 runs.
4. Parity: Real-ESRGAN's ``osdsr upscale`` outputs of the real LR photos (8-bit PNGs) against the ncnn
   runtime's on the official files (PSNR on RGB).

Writes ``benchmarks/out/quality.json`` and ``benchmarks/out/quality.md``.

    python benchmarks/quality.py [--model [LABEL=]default] [--extra-model LABEL=NAME_OR_PATH ...] [--skip-speed] \
        [--crop 256] [--real-crop 128] [--skip-realesrgan]
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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from osdsr.commands.upscale import DEFAULT_TILE
from osdsr.inference import preferred_dtype

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SPEED_KEYS = {"fp32": "speed", "bf16": "speed_bf16"}  # report keys of a model's timings
OUT = REPO / "benchmarks" / "out"
SEED = 1234
SPEED_LR = 512  # LR side of the timing case (output 2048x2048)
SPEED_RUNS = 3
REALESRGAN = "realesrgan-x4plus"
CLASSICAL = ("bicubic", "lanczos")


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


def real_lr_folder(work: Path, crop: int | None) -> Path:
    """The real LR photos, or their ``crop`` x ``crop`` centre crops."""
    if not crop:
        return SHARED / "lr_demo"
    from PIL import Image

    target = work / "real_lr"
    target.mkdir()
    for path in sorted((SHARED / "lr_demo").iterdir()):
        image = Image.open(path)
        left, top = (image.width - crop) // 2, (image.height - crop) // 2
        image.crop((left, top, left + crop, top + crop)).save(target / f"{path.stem}.png")
    return target


def upscale_folder(model_name: str, lr_dir: Path, out_dir: Path, extra: list[str]) -> float:
    """Upscale every image of ``lr_dir`` with the CLI's defaults (and ``extra`` options); seconds per image."""
    from osdsr.cli import main as osdsr_main

    files = sorted(p for p in lr_dir.iterdir() if p.is_file())
    start = time.perf_counter()
    code = osdsr_main(["upscale", *map(str, files), "-o", str(out_dir), "--model", model_name, *extra])
    if code != 0:
        raise SystemExit(f"osdsr upscale --model {model_name} failed on {lr_dir}")
    return (time.perf_counter() - start) / len(files)


def score_folder(pred_dir: Path, gt_dir: Path | None) -> dict:
    """Mean PSNR-Y / SSIM-Y / MS-SSIM / GMSD / HaarPSI (with ground truth), NIQE and grid over a folder,
    the NIQE median, per-image scores."""
    from osdsr.data.image_io import load_image
    from osdsr.metrics.fidelity import psnr, ssim
    from osdsr.metrics.flat_grid import flat_area_grid
    from osdsr.metrics.full_reference import gmsd, haarpsi, ms_ssim
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
            scores.update(psnr_y=psnr(pred, gt), ssim_y=ssim(pred, gt), ms_ssim=ms_ssim(pred, gt), gmsd=gmsd(pred, gt),
                          haarpsi=haarpsi(pred, gt))
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
from osdsr.allocator import keep_freed_memory
from osdsr.model_loading import load_sr_model, LoadOptions
keep_freed_memory()  # as osdsr upscale does (the colour fix's large buffers: benchmarks/out/speed.md)
path, name, side, runs, tile, dtype_name, color_fix, warm_up = sys.argv[1:9]
side, runs, tile = int(side), int(runs), int(tile)
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
pixels = load_image(path).pixels[:side, :side]
lr = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
model = load_sr_model(name, LoadOptions(dtype=dtype))
times = []
tiled = []  # with the tiling `osdsr upscale` uses by default (tile 0: not measured)
with torch.inference_mode():
    if warm_up == "1":
        upscale_tensor(model, lr, color_fix=color_fix, dtype=dtype)
    for _ in range(runs):
        start = time.perf_counter()
        out = upscale_tensor(model, lr, color_fix=color_fix, dtype=dtype)
        times.append(time.perf_counter() - start)
        if tile:
            start = time.perf_counter()
            upscale_tensor(model, lr, color_fix=color_fix, tile=tile, dtype=dtype)
            tiled.append(time.perf_counter() - start)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) forked parent
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds_median": statistics.median(times), "seconds": times, "peak_rss_bytes": peak,
                  "tiled_seconds_median": statistics.median(tiled) if tiled else None, "tile": tile,
                  "dtype": dtype_name, "warm_up": warm_up == "1",
                  "output": list(out.shape[-2:]), "threads": torch.get_num_threads()}))
"""


def speed(model_name: str, dtype: str = "fp32", color_fix: str = "wavelet", heavy: bool = False) -> dict[str, object]:
    """One speed case in a fresh process; ``heavy``: a single run, no warm-up, no tiled run."""
    source = SHARED / "hr" / "plasma-workspace-wallpapers" / "Kite.jpg"  # held out; 2560x1600
    runs, tile, warm_up = (1, 0, "0") if heavy else (SPEED_RUNS, DEFAULT_TILE, "1")
    result = subprocess.run(
        [sys.executable, "-c", SPEED_SNIPPET, str(source), model_name, str(SPEED_LR), str(runs), str(tile), dtype,
         color_fix, warm_up],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"speed run of {model_name} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parity(sr_dir: Path, lr_dir: Path, threads: int) -> dict:
    """PSNR (RGB, [0, 1]) of the 8-bit ``osdsr upscale`` outputs against the ncnn runtime's float outputs."""
    from osdsr.data.image_io import load_image
    from osdsr.inference import REC601_LUMA
    from osdsr.metrics.fidelity import psnr_rgb
    from realesrgan_release import NcnnRealESRGAN

    runtime = NcnnRealESRGAN(threads)
    per_image = {}
    for lr_path in sorted(lr_dir.iterdir()):
        lr = load_image(lr_path).pixels
        gray = lr.shape[2] == 1  # the pipeline runs gray as R = G = B and returns Rec. 601 luma
        reference = runtime(np.repeat(lr, 3, axis=2) if gray else lr).astype(np.float64)
        if gray:
            reference = reference @ np.array(REC601_LUMA)[:, None]
        ours = load_image(sr_dir / f"{lr_path.stem}.png").pixels.astype(np.float64)
        per_image[lr_path.name] = psnr_rgb(ours, reference)
    return {"min_db": min(per_image.values()), "mean_db": float(np.mean(list(per_image.values()))),
            "per_image_db": per_image}


def markdown(report: dict) -> str:
    rows = report["models"]
    lines = [
        "# Quality benchmark: one-step models vs classical baselines and Real-ESRGAN",
        "",
        f"Held-out photographs ({report['images']} images, {report['crop'] or 'whole'} HR crops), "
        f"degraded by `osdsr degrade --seed {SEED}`; real LR photos: `../shared/data/lr_demo` "
        f"({report['real_crop'] or 'whole'} LR crops). Metrics on the SR outputs: PSNR/SSIM on Y, crop border 4; "
        "MS-SSIM (RGB), GMSD (luma; lower is better), HaarPSI on the whole image, piq's conventions; "
        "NIQE: mean, and median in brackets. Every model runs through `osdsr upscale` with its defaults; "
        "Real-ESRGAN x4plus (the official weights, converted from the ncnn release) with `--color-fix none`, "
        "as its authors run it.",
        f"Machine: {report['machine']} (shared with other jobs: compare rows, not absolute seconds). "
        "All rows measured in the same run.",
        "",
        "Grid: flat-area grid score (8-bit levels; bicubic about 0.03, visible from about 0.5).",
        "",
    ]

    def niqe(scores: dict) -> str:
        return f"{scores['niqe']:.3f} ({scores['niqe_median']:.2f})"

    for split, title in (("realesrgan", "Real-ESRGAN degradation"), ("mild", "mild degradation")):
        lines += [f"## Held-out, {title}", "",
                  "| model | PSNR-Y | SSIM-Y | MS-SSIM | GMSD | HaarPSI | NIQE | grid |", "|---" * 8 + "|"]
        for name, row in rows.items():
            r = row[split]
            lines.append(
                f"| {name} | {r['psnr_y']:.3f} | {r['ssim_y']:.4f} | {r['ms_ssim']:.4f} | {r['gmsd']:.4f} | "
                f"{r['haarpsi']:.4f} | {niqe(r)} | {r['grid']:.2f} |"
            )
        lines.append("")
    lines += ["## Real LR photos (no ground truth)", "", "| model | NIQE | grid |", "|---|---|---|"]
    lines += [f"| {name} | {niqe(row['real_lr'])} | {row['real_lr']['grid']:.2f} |" for name, row in rows.items()]
    lines += ["", f"## Speed and peak memory, {SPEED_LR}x{SPEED_LR} -> {4 * SPEED_LR}x{4 * SPEED_LR}", "",
              f"Median of {SPEED_RUNS} runs after a warm-up, in one piece and with `osdsr upscale`'s default tiling "
              f"(--tile {DEFAULT_TILE}); Real-ESRGAN: one run per precision, no warm-up, both run while the quality "
              "part of the benchmark ran (so slower than alone). Peak: the process's RSS high-water mark.", "",
              "| model | fp32 s | tiled s | peak MiB | bf16 s | bf16 peak MiB |", "|---|---|---|---|---|---|"]

    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for name, row in rows.items():
        fp32, bf16 = row.get("speed") or {}, row.get("speed_bf16") or {}
        lines.append(
            f"| {name} | {cell(fp32.get('seconds_median'), '.2f')} | {cell(fp32.get('tiled_seconds_median'), '.2f')} | "
            f"{cell(fp32.get('peak_rss_bytes', 0) / 2**20 or None, '.0f')} | {cell(bf16.get('seconds_median'), '.2f')} | "
            f"{cell(bf16.get('peak_rss_bytes', 0) / 2**20 or None, '.0f')} |"
        )
    if report.get("parity"):
        check = report["parity"]
        lines += ["", "## Parity: the converted Real-ESRGAN vs the ncnn runtime", "",
                  "`osdsr upscale --model <converted> --color-fix none` (8-bit PNG) against the ncnn runtime on the "
                  "official `realesrgan-x4plus.param/.bin` (fp32), same real LR inputs; PSNR on RGB: "
                  f"min {check['min_db']:.2f} dB, mean {check['mean_db']:.2f} dB.", "",
                  "| image | PSNR (dB) |", "|---|---|"]
        lines += [f"| {image} | {value:.2f} |" for image, value in check["per_image_db"].items()]
    names = list(rows)
    lines += ["", "NIQE per held-out image, Real-ESRGAN split (a mean over a dozen images moves with its outliers):", "",
              "| image | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for image in rows[names[0]]["realesrgan"]["per_image"]:
        cells = [f"{rows[n]['realesrgan']['per_image'][image]['niqe']:.2f}" for n in names]
        lines.append(f"| {image} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def labelled_model(item: str) -> tuple[str, str]:
    """``LABEL=NAME_OR_PATH`` -> (label, model); a bare name or path is its own label."""
    label, _, model = item.rpartition("=")
    return (label or model, model)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", metavar="[LABEL=]NAME_OR_PATH",
                        help="the model under test (a name or a model folder; LABEL names its rows)")
    parser.add_argument("--extra-model", action="append", default=[], metavar="NAME=PATH", help="more rows")
    parser.add_argument("--skip-speed", action="store_true", help="quality only")
    parser.add_argument("--skip-realesrgan", action="store_true", help="no Real-ESRGAN rows (no ncnn files needed)")
    parser.add_argument("--crop", type=int, help="HR centre crop (photos smaller than it are skipped)")
    parser.add_argument("--real-crop", type=int, help="LR centre crop of the real LR photos")
    parser.add_argument("--strength", type=float, nargs="+", default=[], metavar="S",
                        help="also rows of the model under test at these --strength values (quality only: "
                             "the network's cost does not depend on the strength)")
    parser.add_argument("--output", type=Path, default=OUT / "quality", help="output path without suffix")
    args = parser.parse_args()
    models = {name: name for name in CLASSICAL}
    if not args.skip_realesrgan:
        from realesrgan_release import converted_model

        models[REALESRGAN] = str(converted_model())
    label, model = labelled_model(args.model)
    models[label] = model
    strength_rows = {f"{label} strength {value:g}": value for value in args.strength}
    models.update({strength_label: model for strength_label in strength_rows})
    models.update(labelled_model(item) for item in args.extra_model)
    threads = torch.get_num_threads()
    native_bf16 = preferred_dtype("cpu") == torch.bfloat16  # emulated bf16 is slow and run by no one: not timed
    precisions = ("fp32", "bf16") if native_bf16 else ("fp32",)
    machine = f"{platform.machine()}, {threads} threads, osdsr upscale in {precisions[-1]}"
    report: dict = {"machine": machine, "seed": SEED, "crop": args.crop,
                    "real_crop": args.real_crop, "models": {}}
    color_fixes = {label: "none" if label == REALESRGAN else "wavelet" for label in models}
    speeds: dict[str, dict] = {label: {} for label in models}
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=2) as pool:
        work = Path(tmp)
        sets = make_test_sets(work, args.crop)
        real_lr = real_lr_folder(work, args.real_crop)
        report["images"] = len(list((sets["mild"] / "lr").iterdir()))
        if not args.skip_speed:
            # the light models first, one at a time; then Real-ESRGAN's two long timings run in the
            # background while the quality part runs (their seconds include that competition)
            for label in (label for label in models if label != REALESRGAN and label not in strength_rows):
                for dtype in precisions[: 1 if label in CLASSICAL else None]:
                    speeds[label][SPEED_KEYS[dtype]] = speed(models[label], dtype, color_fixes[label])
            if REALESRGAN in models:
                speeds[REALESRGAN] = {
                    SPEED_KEYS[dtype]: pool.submit(speed, models[REALESRGAN], dtype, "none", True)
                    for dtype in precisions
                }
        for label, name in models.items():
            extra = ["--color-fix", color_fixes[label]]
            if label in strength_rows:
                extra += ["--strength", str(strength_rows[label])]
            row: dict = {"color_fix": color_fixes[label]}
            for preset, folder in sets.items():
                out = work / f"sr_{label}_{preset}"
                row["seconds_per_image"] = upscale_folder(name, folder / "lr", out, extra)
                row[preset] = score_folder(out, folder / "hr")
            real_out = work / f"sr_{label}_real"
            upscale_folder(name, real_lr, real_out, extra)
            row["real_lr"] = score_folder(real_out, None)
            if label == REALESRGAN:  # ncnn on 1 thread: its OpenMP workers spin-wait, slow on a shared machine
                report["parity"] = parity(real_out, real_lr, threads=1)
            report["models"][label] = row
            print(label, json.dumps(row)[:2000], flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")  # after every row
        for label, timings in speeds.items():
            report["models"][label].update({k: v.result() if isinstance(v, Future) else v for k, v in timings.items()})
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
