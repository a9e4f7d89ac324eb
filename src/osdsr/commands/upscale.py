"""``osdsr upscale``: upscale image files and folders x4 with one model.

Folders give their images (with ``--recursive`` also those of their sub-folders, whose layout the
output folder repeats). Every file is handled on its own: a file that cannot be read, upscaled or written prints one line
naming it, the rest of the batch still runs, and the command ends with a summary and exit code 1 if
any file failed. Existing outputs are skipped (not a failure, so a re-run resumes an interrupted
batch) unless ``--overwrite``. Under ``accelerate launch`` (WORLD_SIZE > 1) each process takes every
n-th file, so no file is done twice.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from osdsr.choices import (
    COLOR_FIXES,
    DEFAULT_MEMORY_LIMIT_GIB,
    FORMAT_SUFFIX,
    IMAGE_FORMATS,
)
from osdsr.cli import CommandError

if TYPE_CHECKING:
    import torch

    from osdsr.inference import ProgressCallback
    from osdsr.models.sr_model import SRModel

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype -> torch attribute
OUTPUT_FORMATS = ("png", "same")
DEFAULT_COLOR_FIX = "wavelet"  # models may name their own (an ONNX export stores one)
DEFAULT_TILE = 512  # LR pixels: bounds memory on large photos (~1.5 GiB per 512 px tile with the default model); smaller images run in one piece


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", type=Path,
                        help="image files and/or folders (folders: their images; sub-folders with --recursive)")
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="also upscale the images in the sub-folders of folder inputs; the output "
                             "folder repeats their layout")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT_DIR",
                        help="folder for the results (created if missing); names follow the inputs")
    parser.add_argument("--model", default="default", metavar="NAME|PATH",
                        help="'default' (the embedded CPU model), 'bicubic', 'lanczos', a model folder "
                             "(config.json + model.safetensors), a LoRA .safetensors file or an .onnx file from "
                             "osdsr onnx (default: %(default)s)")
    parser.add_argument("--pretrained", type=Path, metavar="DIR",
                        help="local base-model folder (e.g. SD-2.1 in diffusers layout) that a LoRA file is applied to")
    parser.add_argument("--strength", type=float, metavar="S",
                        help="models with a strength control (the default model): 0 = the most faithful result "
                             "(highest PSNR), 1 = the most drawn detail; default: the model's own")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="sampling steps for multi-step models (ResShift); one-step models ignore it")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, metavar="N",
                        help="tile side in LR pixels for large images; 0 processes each image in one piece; "
                             "models with an SD VAE on a GPU want 128-256 (default: %(default)s)")
    parser.add_argument("--max-memory", type=float, default=DEFAULT_MEMORY_LIMIT_GIB, metavar="GIB",
                        help="memory for one image's result and working buffers; a larger image runs in bands of "
                             "rows, one whose result cannot fit fails with a message (the model's activations per "
                             "tile come on top: about 1.5 GiB at --tile 512 with the default model) "
                             "(default: %(default)s)")
    parser.add_argument("--tile-overlap", type=int, default=32, metavar="N",
                        help="overlap of neighbouring tiles in LR pixels, blended with Gaussian weights "
                             "(default: %(default)s)")
    parser.add_argument("--color-fix", choices=COLOR_FIXES,
                        help="correct colours against the bicubic upsample of the input: 'wavelet' (low "
                             "frequencies), 'adain' (channel mean/std) or 'none' (default: the one an ONNX "
                             f"file stores, else {DEFAULT_COLOR_FIX})")
    parser.add_argument("--device", metavar="DEVICE",
                        help="cpu, cuda, cuda:N or mps (default: cpu; under accelerate launch: each process's device)")
    parser.add_argument("--dtype", choices=["auto", *sorted(DTYPES)], default="auto",
                        help="compute precision: fp32 (exact), bf16 (about twice as fast on CPUs with native bf16; "
                             "the default model's output stays 58 dB PSNR from fp32's), fp16 (GPU only), or auto: "
                             "bf16 for a network on a CPU with native bf16 (AVX512-BF16, AMX), else fp32 "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="tiles per model call (images are upscaled one after another) (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the noise of stochastic models, per image (default: %(default)s)")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="png",
                        help="'png' (lossless; keeps 16-bit and alpha) or 'same' as each input's format "
                             "(default: %(default)s)")
    parser.add_argument("--suffix", default="", metavar="TEXT",
                        help="appended to each output's stem: --suffix _x4 writes photo_x4.png (default: none)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be written (and skipped) without loading a model or writing")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs (without it they are skipped and reported; "
                             "skipping is not a failure)")


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.written)} written, {len(self.skipped)} skipped, {len(self.failed)} failed"
        if self.failed:
            text += ": " + ", ".join(str(path) for path in self.failed)
        return text


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from osdsr.allocator import keep_freed_memory
    from osdsr.model_loading import LoadOptions, load_sr_model
    from osdsr.weights_io import check_writable, remove_orphaned_temporaries

    _check_numbers(args)
    names, report = collect_inputs(args.inputs, recursive=args.recursive, exclude=args.output)
    if not names and not report.failed:
        raise CommandError("no input images found (readable suffixes: " + ", ".join(sorted(IMAGE_FORMATS)) + ")")
    targets = output_paths(names, args.output, args.format, args.suffix)
    if args.dry_run:
        return _dry_run(targets, args.overwrite, report)
    shared_targets = {t for t, n in Counter(targets.values()).items() if n > 1}
    device, process_label, files = _distribute(list(names), args.device)
    dtype = check_dtype(args.dtype, device, args.model)
    if args.output.exists() and not args.output.is_dir():
        raise CommandError(f"{args.output}: exists and is not a folder")
    for folder in sorted({target.parent for target in targets.values()}):
        check_writable(folder)  # before any image is computed
        remove_orphaned_temporaries(folder)  # what a killed run left

    keep_freed_memory()  # image-sized temporaries reuse freed memory instead of page-faulting anew
    options = LoadOptions(steps=args.steps, pretrained=args.pretrained, device=device, dtype=dtype, strength=args.strength)
    model = load_sr_model(args.model, options)
    settings = UpscaleSettings(
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        color_fix=args.color_fix or getattr(model, "color_fix", DEFAULT_COLOR_FIX),
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        dtype=dtype,
        max_memory_gib=args.max_memory,
    )

    def say(message: str) -> None:
        tqdm.write(f"osdsr upscale: {process_label}{message}", file=sys.stderr)

    images_bar = tqdm(total=len(files), unit="image", desc="upscale", disable=None)
    tiles_bar = tqdm(unit="tile", leave=False, disable=None)

    def tile_progress(done: int, total: int) -> None:
        if tiles_bar.total != total:
            tiles_bar.reset(total=total)
        tiles_bar.n = done
        tiles_bar.refresh()

    for source in files:
        target = targets[source]
        try:
            if target.resolve() == source.resolve():
                raise ValueError(f"{source}: the output would replace the input; choose another -o folder")
            if target in shared_targets:
                raise ValueError(f"{source}: another input also becomes {target.name}; upscale them separately")
            if target.exists() and not args.overwrite:
                say(f"skipped {source}: {target} exists (--overwrite replaces it)")
                report.skipped.append(source)
                continue
            upscale_file(model, source, target, settings, overwrite=args.overwrite, progress=tile_progress)
            report.written.append(target)
        except FileExistsError:  # another process wrote the target while this one computed it
            say(f"skipped {source}: {target} was written meanwhile by another process (--overwrite replaces it)")
            report.skipped.append(source)
        except (ValueError, OSError, RuntimeError) as exc:
            hint = " (a smaller --tile needs less memory)" if isinstance(exc, torch.OutOfMemoryError) else ""
            message = str(exc) if str(source) in str(exc) else f"{source}: {exc}"  # always name the input
            say(f"failed: {message}{hint}")
            report.failed.append(source)
        finally:
            images_bar.update(1)
    tiles_bar.close()
    images_bar.close()
    print(f"{process_label}{report.summary()}", file=sys.stderr if report.failed else sys.stdout)
    return 1 if report.failed else 0


@dataclass(frozen=True)
class UpscaleSettings:
    """How ``upscale_file`` runs a model: the options of ``osdsr upscale`` past the file names."""

    tile: int = DEFAULT_TILE
    tile_overlap: int = 32
    color_fix: str = DEFAULT_COLOR_FIX
    seed: int = 0
    batch_size: int = 1
    device: torch.device | str = "cpu"
    dtype: torch.dtype | None = None  # None: the model's own
    max_memory_gib: float = DEFAULT_MEMORY_LIMIT_GIB  # one image's result and working buffers


def upscale_file(
    model: SRModel,
    source: Path,
    target: Path,
    settings: UpscaleSettings,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Read ``source``, upscale it and write ``target`` (its folder created): the one path from a file to
    its result, shared by ``osdsr upscale`` and ``osdsr ui``. Raises ``ValueError``/``OSError`` naming
    the file when it cannot be read, upscaled or written."""
    import torch

    from osdsr.data.image_io import SIXTEEN_BIT_FORMATS, load_image, save_image
    from osdsr.inference import upscale_image_to_samples

    image = load_image(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    sixteen_bit = image.bit_depth == 16 and IMAGE_FORMATS.get(target.suffix.lower()) in SIXTEEN_BIT_FORMATS
    result = upscale_image_to_samples(
        model,
        image,
        bit_depth=16 if sixteen_bit else 8,
        memory_limit_gib=settings.max_memory_gib,
        device=settings.device,
        tile=settings.tile,
        tile_overlap=settings.tile_overlap,
        color_fix=settings.color_fix,
        generator=torch.Generator().manual_seed(settings.seed),
        batch_size=settings.batch_size,
        dtype=settings.dtype,
        progress=progress,
    )
    return save_image(target, result, overwrite=overwrite)


def _check_numbers(args: argparse.Namespace) -> None:
    for name in ("tile", "tile_overlap"):
        if getattr(args, name) < 0:
            raise CommandError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.max_memory > 0:
        raise CommandError(f"--max-memory must be a positive number of GiB, got {args.max_memory}")
    if args.steps is not None and args.steps < 1:
        raise CommandError(f"--steps must be at least 1, got {args.steps}")
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        raise CommandError(f"--strength must be in [0, 1] (0 = faithful, 1 = most detail), got {args.strength}")
    if Path(args.suffix).name != args.suffix or args.suffix in (".", ".."):
        raise CommandError(f"--suffix {args.suffix!r}: must not contain a folder separator")
    if args.tile and args.tile_overlap >= args.tile:
        raise CommandError(f"--tile-overlap ({args.tile_overlap}) must be smaller than --tile ({args.tile})")


def collect_inputs(
    inputs: list[Path], recursive: bool = False, exclude: Path | None = None
) -> tuple[dict[Path, Path], BatchReport]:
    """Every input image (without repeats) -> its name relative to the output folder.

    A file named directly keeps its file name; a folder's images (sorted; with ``recursive`` those of
    its sub-folders too) keep their path inside that folder. A recursive search leaves out the images
    under ``exclude`` (the output folder, when it is a sub-folder of an input folder), so a re-run
    does not upscale its own results.
    """
    names: dict[Path, Path] = {}
    report = BatchReport()
    for item in inputs:
        if item.is_dir():
            candidates = item.rglob("*") if recursive else item.iterdir()
            inner = exclude if recursive and exclude is not None and exclude.resolve() != item.resolve() else None
            found = sorted(
                p for p in candidates
                if p.is_file() and p.suffix.lower() in IMAGE_FORMATS and not _is_under(p, inner)
            )
            if not found:
                print(f"osdsr upscale: {item}: folder has no images", file=sys.stderr)
            for path in found:
                names.setdefault(path, path.relative_to(item))
        elif item.is_file():
            names.setdefault(item, Path(item.name))
        else:
            print(f"osdsr upscale: failed: {item}: no such file or folder", file=sys.stderr)
            report.failed.append(item)
    return names, report


def _is_under(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder.resolve())


def output_paths(names: dict[Path, Path], out_dir: Path, output_format: str, suffix: str = "") -> dict[Path, Path]:
    """Output path of every input: its relative name with ``suffix`` after the stem, ``.png`` or (``same``)
    the input's own suffix."""
    targets = {}
    for source, name in names.items():
        same = output_format == "same" and IMAGE_FORMATS.get(source.suffix.lower()) in FORMAT_SUFFIX
        extension = source.suffix if same else FORMAT_SUFFIX["PNG"]
        targets[source] = out_dir / name.parent / f"{name.stem}{suffix}{extension}"
    return targets


def _dry_run(targets: dict[Path, Path], overwrite: bool, report: BatchReport) -> int:
    """Print what ``run`` would write, replace or skip; load and write nothing."""
    counts = Counter(targets.values())
    for source, target in targets.items():
        if target.resolve() == source.resolve():
            verdict = "would fail (the output would replace the input)"
        elif counts[target] > 1:
            verdict = "would fail (another input has the same output)"
        elif target.exists():
            verdict = "would replace" if overwrite else "would skip (exists)"
        else:
            verdict = "would write"
        print(f"{verdict}: {target} <- {source}")
    return 1 if report.failed else 0


def _distribute(files: list[Path], device_arg: str | None) -> tuple[torch.device, str, list[Path]]:
    """(device, message prefix, this process's files): all files locally, every n-th under accelerate."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState()
        device = parse_device(device_arg) if device_arg else state.device
        label = f"[process {state.process_index + 1}/{state.num_processes}] "
        return device, label, files[state.process_index :: state.num_processes]
    return parse_device(device_arg or "cpu"), "", files


def parse_device(text: str) -> torch.device:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise CommandError(f"--device {text!r}: expected cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"--device {text}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise CommandError(f"--device {text}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise CommandError(f"--device {text!r}: expected cpu, cuda, cuda:N or mps")
    return device


def check_dtype(name: str, device: torch.device, model: str | None = None) -> torch.dtype:
    """The torch dtype of --dtype NAME; ``auto`` needs the --model name (bicubic/lanczos/.onnx run in fp32)."""
    if name == "fp16" and device.type == "cpu":
        raise CommandError("--dtype fp16 needs a GPU (--device cuda or mps); on CPU use bf16 or fp32")
    import torch

    if name == "auto":
        from osdsr.inference import preferred_dtype
        from osdsr.models.classical import CLASSICAL_INTERPOLATIONS

        # the classical baselines and ONNX files (onnxruntime) run in fp32
        exact_only = model in CLASSICAL_INTERPOLATIONS or str(model).endswith(".onnx")
        return torch.float32 if exact_only else preferred_dtype(device)
    return getattr(torch, DTYPES[name])
