"""Where the time of ``osdsr upscale`` goes on this CPU, stage by stage, fp32 against bf16 (issue 21).

One run measures, for a 512x512 photo upscaled to 2048x2048 (``../shared/data/hr``, centre crop; the
bundled rocket otherwise):

- the machine's fp32 and bf16 matrix-multiply peaks (a square matmul each, as large as fits in about a
  second; emulated bf16 is hundreds of times slower than fp32, and a 4096 side would take minutes);
- per stage, in process: encode, network (``denoise``), decode, colour fix, the whole
  ``upscale_tensor`` and the PNG write, for the default model in fp32 and bf16 and for the classical
  baselines, with the network's GFLOP/s (FLOPs counted by ``torch.utils.flop_counter``) next to the
  peaks, and the PSNR of the bf16 output against the fp32 output;
- the colour fix with glibc's default malloc and with ``osdsr.allocator.keep_freed_memory``;
- per process (subprocesses, with osdsr's bytecode compiled as a pip install leaves it): ``import torch``, the imports of the upscale path, the model load, and
  the whole ``osdsr upscale`` of a 16x16 and of the 512x512 image, and every ``osdsr CMD --help``.

Times are the best of ``--repeats`` runs: other processes share this CPU and only slow runs down (the
load average is recorded before and after). Writes ``benchmarks/out/speed.{json,md}``.

    python3 benchmarks/speed.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from osdsr.allocator import keep_freed_memory
from osdsr.cli import COMMANDS
from osdsr.color_fix import wavelet_color_fix
from osdsr.inference import preferred_dtype, upscale_tensor
from osdsr.metrics.fidelity import psnr_rgb
from osdsr.model_loading import LoadOptions, load_sr_model
from osdsr.models.classical import bicubic_upsample

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 512  # LR side: 512 -> 2048
PEAK_SIDES = (512, 1024, 2048, 4096)  # matmul sides tried for the peaks, smallest first
PEAK_SECONDS = 0.5  # stop growing the side once one matmul takes this long
PNG_WRITES = ((0, "default"), (1, "default"), (1, "rle"), (1, "huffman"), (3, "default"), (6, "default"), (9, "default"))
PNG_STRATEGIES = {"default": zlib.Z_DEFAULT_STRATEGY, "rle": zlib.Z_RLE, "huffman": zlib.Z_HUFFMAN_ONLY}
MODELS = ("default", "default-v1", "bicubic", "lanczos")
NETWORKS = ("default", "default-v1")  # timed in fp32 and bf16


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (oneDNN picks its kernels on the first call)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def matmul_peak(dtype: torch.dtype, repeats: int) -> dict:
    """GFLOP/s of the largest square matmul of ``PEAK_SIDES`` reached before one takes ``PEAK_SECONDS``."""
    for side in PEAK_SIDES:
        a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
        start = time.perf_counter()
        a @ b
        if time.perf_counter() - start >= PEAK_SECONDS or side == PEAK_SIDES[-1]:
            break
    return {"side": side, "gflops_per_s": 2 * side**3 / best_of(lambda: a @ b, repeats) / 1e9}


def test_image() -> np.ndarray:
    """A 512x512 RGB crop of a real photo (uint8)."""
    photos = sorted((REPO_ROOT.parent / "shared" / "data" / "hr").rglob("*.png"))
    photo = next((p for p in photos if min(Image.open(p).size) >= SIZE), REPO_ROOT / "examples" / "rocket.png")
    image = Image.open(photo).convert("RGB")
    if min(image.size) < SIZE:
        image = image.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    left, top = (image.width - SIZE) // 2, (image.height - SIZE) // 2
    return np.asarray(image.crop((left, top, left + SIZE, top + SIZE)))


def in_process(lr: torch.Tensor, repeats: int, native_bf16: bool) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Stage times of each model and dtype on ``lr`` (emulated bf16 once: it is only there to show its cost);
    also returns the outputs by row name."""
    rows, outputs = [], {}
    for name in MODELS:
        dtypes = (torch.float32, torch.bfloat16) if name in NETWORKS else (torch.float32,)
        for dtype in dtypes:
            repeats_here = repeats if dtype == torch.float32 or native_bf16 else 1
            model = load_sr_model(name, LoadOptions(dtype=dtype))
            x = lr.to(dtype)
            with torch.inference_mode():
                condition = model.encode(x)
                z_hr = model.denoise(condition, None)
                decoded = model.decode(z_hr)
                reference = bicubic_upsample(lr, model.scale)
                row = {
                    "model": name,
                    "dtype": str(dtype).removeprefix("torch."),
                    "encode_s": best_of(lambda: model.encode(x), repeats_here),
                    "network_s": best_of(lambda: model.denoise(condition, None), repeats_here),
                    "decode_s": best_of(lambda: model.decode(z_hr), repeats_here),
                    "color_fix_s": best_of(lambda: wavelet_color_fix(decoded.float(), reference), repeats_here),
                }
                with FlopCounterMode(display=False) as counter:
                    model.denoise(condition, None)
                row["network_gflop"] = counter.get_total_flops() / 1e9
            row["upscale_tensor_s"] = best_of(lambda: upscale_tensor(model, lr, dtype=dtype), repeats_here)
            row["network_gflops_per_s"] = row["network_gflop"] / row["network_s"] if row["network_gflop"] else 0.0
            outputs[f"{name} {row['dtype']}"] = upscale_tensor(model, lr, dtype=dtype)
            rows.append(row)
    return rows, outputs


def png_writes(hr: torch.Tensor, repeats: int) -> list[dict]:
    """Time and size of the 2048x2048 output written as an 8-bit PNG at zlib levels and strategies (Pillow's
    default: level 6, default strategy; osdsr's: ``osdsr.data.image_io.PNG_COMPRESS_*``)."""
    pixels = (hr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(pixels)
    rows = []
    for level, strategy in PNG_WRITES:
        stream = io.BytesIO()

        def write() -> None:
            stream.seek(0)
            stream.truncate()
            image.save(stream, format="PNG", compress_level=level, compress_type=PNG_STRATEGIES[strategy])

        seconds = best_of(write, repeats)
        rows.append({"level": level, "strategy": strategy, "seconds": seconds, "mib": len(stream.getvalue()) / 2**20})
    return rows


STAGE_PROBE = """
import json, sys, time
start = time.perf_counter()
import torch
torch_s = time.perf_counter() - start
from osdsr.inference import upscale_tensor
from osdsr.model_loading import LoadOptions, load_sr_model
from osdsr.data.image_io import load_image, save_image
imports_s = time.perf_counter() - start
model = load_sr_model("default")
load_s = time.perf_counter() - start - imports_s
print(json.dumps({"import_torch_s": torch_s, "imports_s": imports_s, "model_load_s": load_s}))
"""


def run_seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def per_process(small: Path, photo: Path, out: Path, repeats: int) -> dict:
    python = sys.executable
    # a pip install leaves osdsr's bytecode compiled; an editable one under PYTHONDONTWRITEBYTECODE=1 (as on
    # this project's machines) would recompile every module in every process (~0.2 s)
    import osdsr

    subprocess.run([python, "-m", "compileall", "-q", str(Path(osdsr.__file__).parent)], check=True)
    stages = [json.loads(subprocess.run([python, "-c", STAGE_PROBE], check=True, capture_output=True,
                                        text=True).stdout) for _ in range(repeats)]
    result = {key: min(s[key] for s in stages) for key in stages[0]}
    upscale = [python, "-m", "osdsr", "upscale", "-o", str(out), "--overwrite"]
    for label, extra in (
        ("upscale_16px_default_s", [str(small)]),
        ("upscale_16px_bicubic_s", [str(small), "--model", "bicubic"]),
        ("upscale_512px_default_s", [str(photo)]),
        ("upscale_512px_default_fp32_s", [str(photo), "--dtype", "fp32"]),
        ("upscale_512px_default_v1_s", [str(photo), "--model", "default-v1"]),
    ):
        result[label] = min(run_seconds(upscale + extra) for _ in range(repeats))
    result["help_s"] = {
        command: min(run_seconds([python, "-m", "osdsr", command, "--help"]) for _ in range(repeats))
        for command in [*COMMANDS]
    }
    return result


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def markdown(report: dict) -> str:
    peaks = report["matmul_peaks"]
    lines = [
        "# Speed of `osdsr upscale` on this CPU (benchmarks/speed.py)",
        "",
        f"CPU: {report['cpu']}, {report['threads']} threads, native bf16: {report['native_bf16']}. "
        f"Load average before / after: {report['load_before']} / {report['load_after']} (the machine is shared; "
        f"times are the best of {report['repeats']} runs; emulated bf16's of 1). Input: {report['input']}.",
        "",
        "Matmul peaks: " + ", ".join(f"{dtype} {peak['gflops_per_s']:.1f} GFLOP/s ({peak['side']}x{peak['side']})"
                                     for dtype, peak in peaks.items()) + "."
        + ("" if report["native_bf16"] else " This CPU has no native bf16: bf16 runs emulated, so its rows show "
           "why fp32 is chosen here, and a share of the emulated matmul peak would mean nothing."),
        "",
        "## In process, 512x512 -> 2048x2048 (seconds)",
        "",
        "| model | dtype | encode | network | decode | colour fix | upscale_tensor (all) | network GFLOP | GFLOP/s | of the dtype's matmul peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["in_process"]:
        peak = peaks[row["dtype"]]["gflops_per_s"]
        emulated = row["dtype"] == "bfloat16" and not report["native_bf16"]
        share = "-" if not row["network_gflop"] or emulated else f"{100 * row['network_gflops_per_s'] / peak:.0f}%"
        lines.append(
            f"| {row['model']} | {row['dtype']} | {row['encode_s']:.3f} | {row['network_s']:.3f} | {row['decode_s']:.3f} "
            f"| {row['color_fix_s']:.3f} | {row['upscale_tensor_s']:.3f} | {row['network_gflop']:.1f} "
            f"| {row['network_gflops_per_s']:.0f} | {share} |"
        )
    psnrs = ", ".join(f"{name} {db:.1f} dB" for name, db in report["bf16_psnr_db"].items())
    lines += ["", f"PSNR of the bf16 output against the fp32 output: {psnrs}.", ""]
    m = report["color_fix_malloc"]
    lines += [f"Colour fix of the 2048x2048 output with glibc's default malloc: {m['default_malloc_s']:.3f} s; with "
              f"freed memory kept in the heap (osdsr.allocator, what osdsr upscale does; applied: "
              f"{m['kept_freed_memory']}): {m['kept_s']:.3f} s. The rows above are measured with it.", ""]
    lines += ["## PNG write of the 2048x2048 output (8 bit)", "", "| zlib level | strategy | seconds | MiB |", "|---|---|---|---|"]
    lines += [f"| {r['level']} | {r['strategy']} | {r['seconds']:.3f} | {r['mib']:.2f} |" for r in report["png"]]
    p = report["per_process"]
    lines += [
        "",
        "## Whole processes (seconds, wall clock)",
        "",
        f"- `import torch`: {p['import_torch_s']:.2f}; all imports of the upscale path: {p['imports_s']:.2f}; "
        f"loading the default model after them: {p['model_load_s']:.2f}",
        f"- `osdsr upscale` 16x16, default model: {p['upscale_16px_default_s']:.2f}; bicubic: {p['upscale_16px_bicubic_s']:.2f}",
        f"- `osdsr upscale` 512x512 -> 2048x2048, default model (--dtype auto): {p['upscale_512px_default_s']:.2f}; "
        f"--dtype fp32: {p['upscale_512px_default_fp32_s']:.2f}; default-v1 (--dtype auto): "
        f"{p['upscale_512px_default_v1_s']:.2f}",
        "- `--help`: " + ", ".join(f"{c} {s:.2f}" for c, s in p["help_s"].items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "out")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "cpu": torch.cpu.get_capabilities().get("cpu_name", "unknown"),
        "threads": args.threads,
        "native_bf16": preferred_dtype("cpu") == torch.bfloat16,
        "repeats": args.repeats,
        "load_before": load(),
    }
    report["matmul_peaks"] = {
        "float32": matmul_peak(torch.float32, args.repeats),
        "bfloat16": matmul_peak(torch.bfloat16, args.repeats),
    }
    pixels = test_image()
    lr = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255
    report["input"] = f"{SIZE}x{SIZE} photo crop"
    # the colour fix of the 2048x2048 output with glibc's default malloc, then with freed memory kept
    reference = bicubic_upsample(lr, 4)
    malloc = {"default_malloc_s": best_of(lambda: wavelet_color_fix(reference, reference), args.repeats)}
    malloc["kept_freed_memory"] = keep_freed_memory()
    malloc["kept_s"] = best_of(lambda: wavelet_color_fix(reference, reference), args.repeats)
    report["color_fix_malloc"] = malloc
    report["in_process"], outputs = in_process(lr, args.repeats, report["native_bf16"])
    report["bf16_psnr_db"] = {
        name: psnr_rgb(outputs[f"{name} bfloat16"].double(), outputs[f"{name} float32"].double()) for name in NETWORKS
    }
    report["png"] = png_writes(outputs["default float32"], args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        small, photo = Path(tmp) / "small.png", Path(tmp) / "photo.png"
        Image.fromarray(pixels[:16, :16]).save(small)
        Image.fromarray(pixels).save(photo)
        report["per_process"] = per_process(small, photo, Path(tmp) / "out", args.repeats)
    report["load_after"] = load()
    (args.out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "speed.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
