"""Peak memory of a tiled upscale as the input grows: 512x512 vs 2048x2048 LR (2048 / 8192 px output).

The model is SD-shaped and small: a diffusers ``AutoencoderKL`` (latent stride 8, 4 latent channels)
and ``UNet2DConditionModel`` with narrow channels and random weights, served by
``osdsr.models.sd_generator.SDSRModel`` through ``osdsr.inference.upscale_tensor``. Each case runs in
its own process, which resets the kernel's resident-set high-water mark (``/proc/self/clear_refs``)
after the model and the input exist and reads ``VmHWM`` after the upscale. Reported per case:
- ``peak_mib``: the high-water mark during the upscale above the resident set before it;
- ``result_mib``: the returned float32 HR tensor, which grows 16x with the input by definition;
- ``working_mib`` = peak - result: what tiling has to keep flat (tile activations, latent canvases).
Acceptance: ``working_mib`` at 2048 is less than 1.3x that at 512. A 512x512 run without tiling is
included for contrast. Writes ``benchmarks/out/tiling_memory.{json,md}``.

    python3 benchmarks/tiling_memory.py [--tile 128] [--overlap 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
ACCEPTED_GROWTH = 1.3

# Narrow SD-2.1-shaped generator: the same VAE and UNet classes as SD-2.1-base with fewer channels;
# self-attention only in the UNet's mid block, whose cost per tile does not depend on the image size.
SMALL_UNET = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=8,
    sample_size=64,
)
SMALL_VAE = dict(  # 8 channels at full resolution keep the 8192x8192 output to minutes on one core
    block_out_channels=(8, 16, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=4,
)


def _status_kib(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def run_case(size: int, tile: int, overlap: int, threads: int) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from osdsr.inference import upscale_tensor
    from osdsr.models.sd_generator import SDGeneratorConfig, SDSRModel, build_sd_generator

    torch.set_num_threads(threads)
    config = SDGeneratorConfig(unet=SMALL_UNET, vae=SMALL_VAE, lora=None, prompt_length=8)
    model = SDSRModel(build_sd_generator(config)).eval()
    lr = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    warm_up = lr[:, :, : 2 * tile, : 2 * tile] if tile else lr[:, :, :64, :64]
    upscale_tensor(model, warm_up, tile=tile, tile_overlap=overlap)  # kernels' first-call caches for these shapes
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    hr = upscale_tensor(model, lr, tile=tile, tile_overlap=overlap, color_fix="wavelet")
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    result = hr.numel() * hr.element_size()
    return {
        "lr_size": size,
        "tile": tile,
        "overlap": overlap,
        "seconds": round(seconds, 2),
        "rss_before_mib": round(before / 1024, 1),
        "peak_mib": round((peak - before) / 1024, 1),
        "result_mib": round(result / MIB, 1),
        "working_mib": round((peak - before) / 1024 - result / MIB, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=128, help="tile side in LR pixels (128: 512 px output, SD's own size)")
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "out")
    parser.add_argument("--case", type=int, nargs=2, metavar=("SIZE", "TILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], args.case[1], args.overlap, args.threads)))
        return

    cases = [(512, args.tile), (2048, args.tile), (512, 0)]
    results = []
    for size, tile in cases:
        command = [sys.executable, __file__, "--case", str(size), str(tile), "--overlap", str(args.overlap),
                   "--threads", str(args.threads)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    small, large = results[0], results[1]
    growth = large["working_mib"] / small["working_mib"]
    report = {
        "what": "peak resident memory of upscale_tensor, small SD-shaped model (random weights), fp32",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "load_average": os.getloadavg()},
        "cases": results,
        "working_growth_512_to_2048": round(growth, 3),
        "accepted_growth": ACCEPTED_GROWTH,
        "passed": growth < ACCEPTED_GROWTH,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tiling_memory.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Tiled upscale memory: 512x512 vs 2048x2048 input",
        "",
        f"Small SD-shaped model (VAE stride 8, random weights), fp32, {args.threads} thread(s), "
        f"overlap {args.overlap} LR px, wavelet colour fix. Peak = resident high-water mark during the "
        "upscale above the resident set before it; working = peak minus the float32 result tensor.",
        "",
        "| LR input | tile (LR px) | seconds | peak (MiB) | result (MiB) | working (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        tile = r["tile"] or "off"
        lines.append(f"| {r['lr_size']}x{r['lr_size']} | {tile} | {r['seconds']} | {r['peak_mib']} | "
                     f"{r['result_mib']} | {r['working_mib']} |")
    verdict = "passes" if report["passed"] else "fails"
    lines += ["", f"Working memory growth 512 -> 2048 with tiling: **{growth:.2f}x** ({verdict} < {ACCEPTED_GROWTH}x)."]
    (args.out / "tiling_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
