"""Full-size smoke: every full config trains 2 steps at its real size on this CPU, exports and upscales.

Random-weight stand-ins for the pretrained networks are written once, in the official formats, under
``.cache/fullsize/`` (ignored by git): diffusers folders of SD-2.1-base (``unet/``, ``vae/``,
``scheduler/``; no text encoder, so the fixed prompt embedding starts at zeros) and SDXL-base
(``unet/``), their frozen weights as fp16 safetensors shards with the diffusers index; the official
ResShift x4 checkpoints (denoiser and VQ-f4 state dicts, ``{"state_dict": ...}``), converted with
``osdsr convert resshift``; a torchvision-format VGG16 state dict and a DISTS alpha/beta file.

Each method then runs, one process at a time, ``osdsr train configs/<method>.yaml --max-steps 2`` at
batch 1 and the smallest crop its architecture allows (64 px for the SD methods: a multiple of the
UNet's 8 x 8 latent grid; 256 px for the ResShift family: the 64 x 64 latent of the Swin windows),
bf16 mixed precision when the CPU has bf16 (AMX / AVX512-BF16), gradient checkpointing on, on the real
photos of ``../shared/data/hr``; then ``osdsr upscale`` of one 64 x 64 image with the exported model.
Recorded per method: the second step's time (from the run's log), the training's peak resident set
(the kernel's high-water mark, reset with ``/proc/PID/clear_refs`` when the progress bar appears and
read when it reaches 2/2), the whole process's peak (loading and export included) and the upscale's; and
the estimate of ``osdsr.memory`` at the same batch, crop, precision and checkpointing. The estimate
counts tensors only, so it is compared with the training peak minus the resident set of a process
that has imported what ``osdsr train`` imports (interpreter, torch, diffusers, peft).

    python3 benchmarks/fullsize_smoke.py [--methods d3sr dfosd resshift sinsr tadsr tddsr] [--threads 2] [--out DIR] [--estimate-only]

Writes ``benchmarks/out/fullsize_smoke.{json,md}`` (or under ``--out``) after each method, merged per
method: a method's row is replaced when it is rerun, the others keep their figures and the conditions
they were measured under (threads, load average); ``--estimate-only`` recomputes just the estimate of
recorded rows (after a change of ``osdsr.memory``). Only the stand-ins that the chosen methods need are
written. Needs about 10 GiB free for D3SR (the SDXL UNet is read whole before it is cut after its mid
block) and 12 GB of disk for the stand-ins.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / ".cache" / "fullsize"
OUT = REPO_ROOT / "benchmarks" / "out"
DATA = REPO_ROOT.parent / "shared" / "data" / "hr"
METHODS = ("d3sr", "dfosd", "resshift", "sinsr", "tadsr", "tddsr")
SD_CROP, RESSHIFT_CROP = 64, 256
SHARD_BYTES = 1 << 30  # diffusers-style safetensors shards of at most 1 GiB: loading maps one at a time
GIB = 2**30
POLL_S = 0.05


def has_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text()
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))


def python() -> list[str]:
    return [sys.executable]


# ---- random-weight stand-ins in the official formats --------------------------------------------------
MAKE_DIFFUSERS = r'''
import json, math, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from diffusers import UNet2DConditionModel, AutoencoderKL, DDPMScheduler
from osdsr.models.sd_generator import SD21_UNET_CONFIG, SD21_VAE_CONFIG
from osdsr.models.nad_discriminator import SDXL_UNET_CONFIG
from osdsr.diffusion.ddpm import SD21_SCHEDULER_CONFIG
kind, root, shard_bytes = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])

def random_like(name, shape, gen):
    if len(shape) == 1:  # norms' scales 1, biases 0
        return torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)

def write(model_class, config, folder, weights_name="diffusion_pytorch_model"):
    with torch.device("meta"):
        model = model_class(**config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    gen = torch.Generator().manual_seed(0)
    written, current, size = [], {}, 0  # each shard is written as soon as it is full: one in memory

    def flush():
        nonlocal current, size
        file = folder / f"shard-{len(written)}.tmp"
        save_file(current, str(file))
        written.append((file, list(current), size))
        current, size = {}, 0

    for name, tensor in model.state_dict().items():
        if current and size + tensor.numel() * 2 > shard_bytes:
            flush()
        current[name] = random_like(name, tuple(tensor.shape), gen).to(torch.float16)
        size += tensor.numel() * 2
    flush()
    if len(written) == 1:
        written[0][0].rename(folder / f"{weights_name}.safetensors")
        return
    weight_map = {}
    for i, (file, keys, _) in enumerate(written):
        name = f"{weights_name}-{i + 1:05d}-of-{len(written):05d}.safetensors"
        file.rename(folder / name)
        weight_map.update({k: name for k in keys})
    index = {"metadata": {"total_size": sum(s for _, _, s in written)}, "weight_map": weight_map}
    (folder / f"{weights_name}.safetensors.index.json").write_text(json.dumps(index, indent=2))

if kind == "sd21":
    write(UNet2DConditionModel, SD21_UNET_CONFIG, root / "unet")
    write(AutoencoderKL, SD21_VAE_CONFIG, root / "vae")
    DDPMScheduler.from_config(SD21_SCHEDULER_CONFIG).save_config(root / "scheduler")
else:
    write(UNet2DConditionModel, SDXL_UNET_CONFIG, root / "unet")
'''

MAKE_RESSHIFT = r'''
import sys, torch
from pathlib import Path
from osdsr.models.resshift_sr import ResShiftModelConfig, build_resshift_sr_model
root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
model = build_resshift_sr_model(ResShiftModelConfig())
torch.save({"state_dict": model.denoiser.state_dict()}, root / "resshift_realsrx4_s15_v1.pth")
torch.save({"state_dict": model.autoencoder.state_dict()}, root / "autoencoder_vq_f4.pth")
'''

MAKE_PERCEPTUAL = r'''
import sys, torch
from pathlib import Path
from osdsr.models.vgg import VGG16, VGG16_CHANNELS
DISTS_CHANNELS = 3 + sum(VGG16_CHANNELS)  # the image itself and the five stages
root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
torch.save(VGG16().state_dict(), root / "vgg16.pth")  # torchvision vgg16 keys and shapes
torch.save({"alpha": torch.rand(1, DISTS_CHANNELS, 1, 1), "beta": torch.rand(1, DISTS_CHANNELS, 1, 1)}, root / "dists.pt")
'''


SD_METHODS = ("d3sr", "dfosd")


def make_stand_ins(methods: list[str]) -> dict[str, Path]:
    """The stand-in folders and files that ``methods`` need (made once; delete .cache/fullsize to remake them)."""
    paths = {
        "sd21": CACHE / "stable-diffusion-2-1-base",
        "sdxl": CACHE / "stable-diffusion-xl-base-1.0",
        "resshift_checkpoints": CACHE / "resshift-official",
        "resshift": CACHE / "resshift-x4",
        "perceptual": CACHE / "perceptual",
        "image": CACHE / "lr.png",
    }
    sd = any(m in SD_METHODS for m in methods)
    for kind in [k for k, needed in (("sd21", sd), ("sdxl", "d3sr" in methods)) if needed]:
        if not (paths[kind] / "unet" / "config.json").is_file():
            print(f"writing the {kind} stand-in to {paths[kind]}", flush=True)
            run_quiet_args(MAKE_DIFFUSERS, kind, str(paths[kind]), str(SHARD_BYTES))
    if any(m not in SD_METHODS for m in methods) and not (paths["resshift"] / "model.safetensors").is_file():
        print(f"writing the official ResShift checkpoints and converting them to {paths['resshift']}", flush=True)
        run_quiet_args(MAKE_RESSHIFT, str(paths["resshift_checkpoints"]))
        checkpoints = paths["resshift_checkpoints"]
        osdsr("convert", "resshift", "--denoiser", str(checkpoints / "resshift_realsrx4_s15_v1.pth"),
              "--autoencoder", str(checkpoints / "autoencoder_vq_f4.pth"), "-o", str(paths["resshift"]), "--overwrite")
    if sd and not (paths["perceptual"] / "dists.pt").is_file():
        run_quiet_args(MAKE_PERCEPTUAL, str(paths["perceptual"]))
    if not paths["image"].is_file():
        from PIL import Image

        Image.open(REPO_ROOT / "examples" / "rocket.png").convert("RGB").crop((0, 0, 64, 64)).save(paths["image"])
    return paths


def run_quiet_args(code: str, *args: str) -> None:
    """Run ``code`` in a fresh interpreter (its memory is returned after) with the checkout's src first."""
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([*python(), "-c", code, *args], check=True, env=env)


def osdsr(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([*python(), "-m", "osdsr", *args], check=True, env=env, cwd=REPO_ROOT)


# ---- one measured process ---------------------------------------------------------------------------
def status_kib(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def measured_run(args: list[str], env: dict[str, str], bar: str | None) -> dict[str, float]:
    """Run ``args``; its peak resident set (wait4) and, with ``bar`` (e.g. "train"), the high-water mark
    from the progress bar's first appearance until it shows ``2/2`` (reset by /proc/PID/clear_refs)."""
    start = time.time()
    process = subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    phase: dict[str, float] = {}
    captured: list[str] = []

    def watch() -> None:
        buffer = ""
        while chunk := process.stderr.read(1):
            buffer += chunk
            captured.append(chunk)
            if bar is None:
                continue
            if "started" not in phase and f"{bar}:" in buffer:
                Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                phase["started"] = status_kib(process.pid, "VmRSS") * 1024
                phase["file_backed"] = status_kib(process.pid, "RssFile") * 1024  # e.g. mmapped weight files
            if "started" in phase and "done" not in phase and re.search(r"\b2/2\b", buffer):
                phase["done"] = status_kib(process.pid, "VmHWM") * 1024
            if chunk in "\r\n":
                buffer = buffer[-200:]

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    watcher.join()
    if process.returncode:
        raise RuntimeError(f"{' '.join(args[:6])} ... failed ({process.returncode}):\n{''.join(captured)[-3000:]}")
    result = {"seconds": time.time() - start, "peak_rss": usage.ru_maxrss * 1024, "stdout": stdout}
    if bar is not None:
        result["train_peak_rss"] = phase.get("done", 0.0)
        result["rss_at_train_start"] = phase.get("started", 0.0)
        result["rss_file_at_train_start"] = phase.get("file_backed", 0.0)
    return result


def baseline_rss(env: dict[str, str]) -> int:
    """Resident set of an interpreter that has imported what ``osdsr train`` imports."""
    code = (
        "import re, torch, diffusers, peft, accelerate, osdsr.train, osdsr.methods.d3sr, osdsr.methods.tadsr;"
        "from diffusers import UNet2DConditionModel, AutoencoderKL;"
        "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    return int(subprocess.run([*python(), "-c", code], env=env, check=True, capture_output=True, text=True).stdout) * 1024


# ---- the methods ------------------------------------------------------------------------------------
def overrides(method: str, paths: dict[str, Path], precision: str, threads: int) -> list[str]:
    crop = SD_CROP if method in SD_METHODS else RESSHIFT_CROP
    common = [
        "trainer.batch_size=1",
        f"trainer.mixed_precision={precision}",
        "trainer.gradient_checkpointing=true",
        "trainer.log_every=1",
        "trainer.prefetch=false",
        f"trainer.num_threads={threads}",
        f"data.crop_size={crop}",
        f"data.sources=[{{path: {DATA}, in_memory: false}}]",
        "data.exclude_list=null",
    ]
    per_method = {
        "d3sr": [f"generator.pretrained={paths['sd21']}", f"discriminator.pretrained={paths['sdxl']}"],
        "dfosd": [f"generator.pretrained={paths['sd21']}", f"discriminator.pretrained={paths['sd21']}"],
        "resshift": [f"autoencoder_path={paths['resshift']}"],
    }
    perceptual = [f"loss.vgg_weights={paths['perceptual'] / 'vgg16.pth'}", f"loss.head_weights={paths['perceptual'] / 'dists.pt'}"]
    specific = per_method.get(method, [f"teacher.path={paths['resshift']}"])
    return [*common, *specific, *(perceptual if method in SD_METHODS else [])]


def estimate(method: str, sets: list[str]) -> dict[str, float]:
    from osdsr.commands.train import load_run_config
    from osdsr.memory import estimate_training_memory

    config = load_run_config(REPO_ROOT / "configs" / f"{method}.yaml", sets)
    e = estimate_training_memory(config)
    return {"weights": e.weights, "ema": e.ema, "optimizer_state": e.optimizer_state, "step_peak": e.step_peak, "total": e.total}


def step_seconds(run_dir: Path) -> float:
    with (run_dir / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["seconds"]) - float(rows[-2]["seconds"])


def smoke(method: str, paths: dict[str, Path], precision: str, threads: int, env: dict[str, str], baseline: int) -> dict:
    load_before = os.getloadavg()[0]
    run_dir = CACHE / "runs" / method
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    sets = overrides(method, paths, precision, threads)
    print(f"{method}: training 2 steps", flush=True)
    train = measured_run(
        [*python(), "-m", "osdsr", "train", f"configs/{method}.yaml", "--output", str(run_dir), "--max-steps", "2",
         *[a for s in sets for a in ("--set", s)]],
        env,
        bar="train",
    )
    model = next(p for p in (run_dir / "model.safetensors", run_dir / "model") if p.exists())
    upscale_args = [*python(), "-m", "osdsr", "upscale", str(paths["image"]), "-o", str(run_dir / "upscaled"),
                    "--model", str(model)]
    if method in SD_METHODS:
        upscale_args += ["--pretrained", str(paths["sd21"])]
    print(f"{method}: upscaling one image", flush=True)
    upscale = measured_run(upscale_args, env, bar=None)
    upscaled = sorted((run_dir / "upscaled").iterdir())
    print(f"{method}: estimating", flush=True)
    est = estimate(method, sets)
    measured = train["train_peak_rss"] - baseline
    return {
        "method": method,
        "crop": SD_CROP if method in SD_METHODS else RESSHIFT_CROP,
        "batch": 1,
        "mixed_precision": precision,
        "gradient_checkpointing": True,
        "threads": threads,
        "load_before": round(load_before, 2),
        "baseline_rss": baseline,
        "step_seconds": round(step_seconds(run_dir), 2),
        "train_seconds": round(train["seconds"], 1),
        "train_peak_rss": int(train["train_peak_rss"]),
        "process_peak_rss": int(train["peak_rss"]),
        "rss_at_train_start": int(train["rss_at_train_start"]),
        "rss_file_at_train_start": int(train["rss_file_at_train_start"]),
        "upscale_seconds": round(upscale["seconds"], 1),
        "upscale_peak_rss": int(upscale["peak_rss"]),
        "upscaled": [p.name for p in upscaled],
        "estimate": est,
        "measured_tensors": int(measured),
        "estimate_ratio": round(est["total"] / measured, 3) if measured > 0 else math.nan,
    }


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def recorded_rows(out: Path) -> dict[str, dict]:
    """The rows of ``out``'s JSON by method; rows written before rows carried their conditions (threads,
    load, baseline) take the file's."""
    file = out / "fullsize_smoke.json"
    if not file.is_file():
        return {}
    previous = json.loads(file.read_text())
    conditions = {k: previous[k] for k in ("threads", "load_before", "baseline_rss") if k in previous}
    return {r["method"]: {**conditions, **r} for r in previous["results"]}


def merged_results(out: Path, result: dict) -> list[dict]:
    """The rows of ``out``'s JSON with ``result``'s method replaced, in ``METHODS`` order (read now:
    another run may have written)."""
    rows = {**recorded_rows(out), result["method"]: result}
    return [rows[m] for m in METHODS if m in rows]


def write_outputs(out: Path, results: list[dict], machine: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "fullsize_smoke.json", json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    lines = [
        "# Full-size smoke: 2 training steps of every full config at real size on this CPU",
        "",
        f"{machine}. Batch 1, bf16 mixed precision where the CPU has it, gradient checkpointing on; random-weight "
        "stand-ins in the official formats (`benchmarks/fullsize_smoke.py`). Each row gives its torch threads and "
        "the 1-minute load average when it started (the machine is shared: absolute times are inflated by load). "
        "Baseline: the resident set of an interpreter with the training imports, subtracted from the training peak "
        "to compare with the estimate (tensors only).",
        "",
        "| method | crop | precision | threads | load | step 2 (s) | training peak RSS (GiB) | process peak RSS (GiB) "
        "| upscale 64 px: s / peak RSS (GiB) | estimate (GiB) | baseline (GiB) | training peak - baseline (GiB) "
        "| estimate / measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['crop']} | {r['mixed_precision']} | {r['threads']} | {r['load_before']:.1f} | "
            f"{r['step_seconds']:.1f} | {r['train_peak_rss'] / GIB:.2f} | {r['process_peak_rss'] / GIB:.2f} | "
            f"{r['upscale_seconds']:.0f} / {r['upscale_peak_rss'] / GIB:.2f} | {r['estimate']['total'] / GIB:.2f} | "
            f"{r['baseline_rss'] / GIB:.2f} | {r['measured_tensors'] / GIB:.2f} | {r['estimate_ratio']:.2f} |"
        )
    within = [r["method"] for r in results if abs(r["estimate_ratio"] - 1) <= 0.25]
    lines += ["", f"Estimate within 25% of the measured peak: {', '.join(within) or 'none'} ({len(within)} of {len(results)})."]
    write_atomic(out / "fullsize_smoke.md", "\n".join(lines) + "\n")


def reestimate(out: Path, methods: list[str]) -> int:
    """Replace the estimate (and its ratio) of the recorded rows of ``methods``; the measured figures stay."""
    machine = json.loads((out / "fullsize_smoke.json").read_text())["machine"]
    unused = {k: CACHE / k for k in ("sd21", "sdxl", "resshift", "perceptual")}  # the estimate reads no file
    for method, row in recorded_rows(out).items():
        if method in methods:
            row["estimate"] = estimate(row["method"], overrides(row["method"], unused, row["mixed_precision"], row["threads"]))
            row["estimate_ratio"] = round(row["estimate"]["total"] / row["measured_tensors"], 3)
            print(f"{row['method']}: estimate {row['estimate']['total'] / GIB:.2f} GiB, ratio {row['estimate_ratio']}", flush=True)
            write_outputs(out, merged_results(out, row), machine)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT, help="folder of fullsize_smoke.{json,md} (merged per method)")
    parser.add_argument(
        "--estimate-only", action="store_true",
        help="recompute only the estimate of the methods' recorded rows with this checkout's osdsr.memory",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT / "src"))
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": str(args.threads)}
    precision = "bf16" if has_bf16() else "no"
    if args.estimate_only:
        return reestimate(args.out, args.methods)
    paths = make_stand_ins(args.methods)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    baseline = baseline_rss(env)
    for method in args.methods:
        result = smoke(method, paths, precision, args.threads, env, baseline)
        print(json.dumps({k: v for k, v in result.items() if k != "upscaled"}), flush=True)
        write_outputs(args.out, merged_results(args.out, result), machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
