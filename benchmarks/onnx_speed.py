"""The default model's 512x512 -> 2048x2048 upscale on four runtimes, in one run, with their PSNR.

Runtimes: PyTorch fp32 (the reference), PyTorch bf16, onnxruntime on the ``osdsr onnx`` export, and
OpenVINO on the same ONNX file when it is installed (its CPU plugin runs bf16 by default on CPUs
with AMX/AVX-512 bf16, so the precision hint is set to f32 explicitly). Every runtime goes through the
same ``osdsr.inference.upscale_tensor`` (default tile 512: one tile at this size, wavelet colour fix)
with the same thread count. Inputs: 512x512 centre crops of real photographs (Kodak, from
``../shared/data/hr/kodak``). Seconds: the median of ``--repeats`` runs on the first photo after one
warm-up, the runtimes interleaved; peak memory: the resident-set high-water mark during a run above
the resident set before it (``/proc/self/clear_refs``); PSNR (RGB, [0, 1], over all photos) against PyTorch fp32. Writes
``benchmarks/out/onnx_speed.{json,md}``.

    PYTHONPATH=src python3 benchmarks/onnx_speed.py [--threads 2] [--repeats 3] [--photos kodim01 kodim05 kodim08]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
KODAK = REPO_ROOT.parent / "shared" / "data" / "hr" / "kodak"
SIDE = 512  # LR pixels: the 512 -> 2048 upscale of the README


def centre_crop(path: Path, side: int = SIDE) -> torch.Tensor:
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
    return torch.from_numpy(rgb[top : top + side, left : left + side].copy()).permute(2, 0, 1)[None]


def openvino_model(onnx_path: Path, threads: int):
    """The ONNX export compiled by OpenVINO (f32, ``threads``), served like onnxruntime's."""
    import openvino as ov

    from osdsr.models.onnx_model import OnnxSRModel, read_metadata

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
    return OnnxSRModel(lambda lr: compiled(lr)[0], read_metadata(onnx_path))


def _status_mib(key: str) -> float:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def timed_peak(fn) -> tuple[float, float]:
    """(seconds, MiB of resident-set high-water mark above the resident set before) of ``fn()``."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = _status_mib("VmRSS")
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, _status_mib("VmHWM") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photos", nargs="+", default=["kodim01", "kodim05", "kodim08"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from osdsr.inference import upscale_tensor
    from osdsr.metrics.fidelity import psnr_rgb
    from osdsr.model_loading import LoadOptions, load_sr_model
    from osdsr.models.onnx_model import load_onnx_sr_model
    from osdsr.onnx_export import export_onnx

    photos = [centre_crop(KODAK / f"{name}.png") for name in args.photos]
    torch_fp32 = load_sr_model("default")
    onnx_path = Path(tempfile.mkdtemp(prefix="osdsr-onnx-")) / "default.onnx"
    start = time.perf_counter()
    export_onnx(torch_fp32, onnx_path, color_fix="wavelet", source="default")
    export_seconds = time.perf_counter() - start
    runtimes: dict[str, tuple[object, torch.dtype | None]] = {
        "torch fp32": (torch_fp32, None),
        "torch bf16": (load_sr_model("default", LoadOptions(dtype=torch.bfloat16)), torch.bfloat16),
        "onnxruntime fp32": (load_onnx_sr_model(onnx_path, LoadOptions()), None),
    }
    try:
        runtimes["OpenVINO f32"] = (openvino_model(onnx_path, args.threads), None)
    except ImportError:
        print("openvino is not installed: skipped", file=sys.stderr)

    def run(name: str, lr: torch.Tensor) -> torch.Tensor:
        model, dtype = runtimes[name]
        return upscale_tensor(model, lr, tile=512, dtype=dtype)

    outputs = {name: [run(name, lr) for lr in photos] for name in runtimes}  # also the warm-up
    seconds: dict[str, list[float]] = {name: [] for name in runtimes}
    peaks: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(args.repeats):  # runtimes interleaved, so a change in the machine's load hits all alike
        for name in runtimes:
            took, peak = timed_peak(lambda: run(name, photos[0]))
            seconds[name].append(took)
            peaks[name].append(peak)
    rows = [
        {"runtime": name, "seconds": statistics.median(seconds[name]), "all_seconds": seconds[name],
         "peak_mib": max(peaks[name])}
        for name in runtimes
    ]
    reference = outputs["torch fp32"]
    for row in rows:
        values = [psnr_rgb(out.double(), ref.double()) for out, ref in zip(outputs[row["runtime"]], reference)]
        row["psnr_db_vs_torch_fp32"] = min(values)
        row["speed_vs_torch_fp32"] = rows[0]["seconds"] / row["seconds"]

    load = os.getloadavg()
    result = {
        "size": f"{SIDE}x{SIDE} -> {4 * SIDE}x{4 * SIDE}",
        "photos": args.photos,
        "threads": args.threads,
        "repeats": args.repeats,
        "onnx_file_mib": onnx_path.stat().st_size / 2**20,
        "export_seconds": export_seconds,
        "load_average_1_5_15": load,
        "cpu": platform.processor() or platform.machine(),
        "versions": _versions(),
        "rows": rows,
    }
    out = REPO_ROOT / "benchmarks" / "out"
    (out / "onnx_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Default model {result['size']}: PyTorch, onnxruntime, OpenVINO",
        "",
        f"One run, {args.threads} threads, median of {args.repeats} interleaved runs after a warm-up; PSNR: the lowest over "
        f"{len(photos)} Kodak 512x512 crops ({', '.join(args.photos)}), RGB in [0, 1], against PyTorch fp32. "
        f"ONNX file {result['onnx_file_mib']:.1f} MiB, exported in {export_seconds:.1f} s. "
        f"Load average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (a shared machine: "
        "compare the ratios). Peak memory: the resident-set high-water mark of one upscale above the "
        "resident set before it.",
        "",
        "| runtime | seconds | speed vs torch fp32 | PSNR vs torch fp32 (dB) | peak memory (MiB) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        value = row["psnr_db_vs_torch_fp32"]
        shown = "identical" if math.isinf(value) else f"{value:.1f}"
        lines.append(
            f"| {row['runtime']} | {row['seconds']:.2f} | {row['speed_vs_torch_fp32']:.2f}x | {shown} | {row['peak_mib']:.0f} |"
        )
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items())]
    (out / "onnx_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    for module in ("onnxruntime", "openvino"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    return versions


if __name__ == "__main__":
    main()
