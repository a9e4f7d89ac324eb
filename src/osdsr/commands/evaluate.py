"""``osdsr eval``: image-quality metrics of a folder of predictions, optionally against ground truth.

Prints a per-image table with the mean, and writes it as CSV (``image,<metric>,...``, a last ``mean`` row)
and/or Markdown. PSNR and SSIM (on Y, border cropped) need ``--gt``; NIQE needs nothing; LPIPS, DISTS and the
pyiqa metrics need local weight files and are reported as unavailable, with the reason, when they cannot run.
An image that cannot be read or scored (corrupt, another size than its ground truth, too small for NIQE) gets
empty cells and its reason; the others are scored, and the command exits with 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from osdsr.choices import METRIC_NAMES
from osdsr.cli import CommandError
from osdsr.metrics.fidelity import DEFAULT_CROP_BORDER

DEFAULT_WITH_GT = "psnr,ssim,niqe"
DEFAULT_WITHOUT_GT = "niqe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, type=Path, metavar="DIR", help="folder of predicted images")
    parser.add_argument("--gt", type=Path, metavar="DIR",
                        help="folder of ground-truth images, matched to predictions by file stem (any extension)")
    parser.add_argument("--metrics", metavar="LIST",
                        help=f"comma-separated, from: {', '.join(METRIC_NAMES)} "
                             f"(default: {DEFAULT_WITH_GT} with --gt, {DEFAULT_WITHOUT_GT} without)")
    parser.add_argument("--crop-border", type=int, default=DEFAULT_CROP_BORDER, metavar="N",
                        help="pixels cut from each side for PSNR, SSIM and NIQE: the SR scale, by BasicSR's "
                             "convention (default: %(default)s)")
    parser.add_argument("--csv", type=Path, metavar="PATH", help="write per-image values and the mean as CSV")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write the same table as Markdown")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --csv / --markdown files")
    parser.add_argument("--allow-missing", action="store_true",
                        help="evaluate only the matching pairs when some images lack a prediction or ground truth "
                             "(without it, any mismatch is an error)")
    parser.add_argument("--vgg-weights", type=Path, metavar="PATH",
                        help="ImageNet VGG16 weights (torchvision keys, .pth or .safetensors), for LPIPS and DISTS")
    parser.add_argument("--lpips-weights", type=Path, metavar="PATH", help="the official LPIPS v0.1 vgg.pth heads")
    parser.add_argument("--dists-weights", type=Path, metavar="PATH",
                        help="the official DISTS weights.pt (alpha/beta)")
    parser.add_argument("--pyiqa-weights", action="append", default=[], metavar="NAME=PATH",
                        help="local checkpoint of a pyiqa metric (musiq, maniqa, clipiqa); repeat per metric")
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="device of the network metrics: cpu, cuda, cuda:N, mps (default: %(default)s)")


def _metric_names(text: str | None, has_gt: bool) -> list[str]:
    from osdsr.metrics.registry import METRICS

    names = [n.strip().lower() for n in (text or (DEFAULT_WITH_GT if has_gt else DEFAULT_WITHOUT_GT)).split(",")]
    names = list(dict.fromkeys(n for n in names if n))
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        given = ", ".join(unknown) or "(none given)"
        raise CommandError(f"unknown metric(s) {given}; choose from {', '.join(METRICS)}")
    full_reference = [n for n in names if METRICS[n].needs_gt]
    if full_reference and not has_gt:
        no_reference = [n for n, m in METRICS.items() if not m.needs_gt]
        raise CommandError(
            f"full-reference metric(s) {', '.join(full_reference)} need ground truth: pass --gt DIR "
            f"(metrics that need none: {', '.join(no_reference)})"
        )
    return names


def _pyiqa_weights(entries: list[str]) -> dict[str, Path]:
    from osdsr.metrics.external import PYIQA_METRICS

    weights = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        name = name.strip().lower()
        if not sep or not path or name not in PYIQA_METRICS:
            raise CommandError(
                f"--pyiqa-weights {entry!r}: expected NAME=PATH with NAME one of {', '.join(PYIQA_METRICS)}"
            )
        weights[name] = Path(path)
    return weights


def _write(path: Path, text: str) -> None:
    from osdsr.weights_io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from osdsr.metrics.evaluation import build_metrics, evaluate, match_folders
    from osdsr.metrics.registry import MetricOptions
    from osdsr.weights_io import check_writable

    names = _metric_names(args.metrics, args.gt is not None)
    if args.crop_border < 0:
        raise CommandError(f"--crop-border must be >= 0, got {args.crop_border}")
    options = MetricOptions(
        crop_border=args.crop_border,
        vgg_weights=args.vgg_weights,
        lpips_weights=args.lpips_weights,
        dists_weights=args.dists_weights,
        pyiqa_weights=_pyiqa_weights(args.pyiqa_weights),
        device=args.device,
    )
    for output in (args.csv, args.markdown):
        if output is None:
            continue
        if output.is_dir():
            raise CommandError(f"{output}: is a folder; give a file name, e.g. {output / 'metrics.csv'}")
        if output.exists() and not args.overwrite:
            raise FileExistsError(f"{output}: already exists; pass --overwrite to replace it")
        check_writable(output.parent)  # now, not after every image was scored

    match = match_folders(args.pred, args.gt)
    if match.missing_pred or match.missing_gt:
        if not args.allow_missing or not match.pairs:
            hint = "; pass --allow-missing to evaluate the matching pairs only" if match.pairs else ""
            raise CommandError(f"{args.pred} and {args.gt} do not match: {match.mismatch_text()}{hint}")
        print(f"warning: {match.mismatch_text()}; evaluating the {len(match.pairs)} matching pairs", file=sys.stderr)

    metrics, unavailable = build_metrics(names, options)
    if not metrics:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in unavailable.items())
        raise CommandError(f"none of the requested metrics can run here ({reasons})")
    table = evaluate(
        match.pairs, metrics, progress=lambda pairs: tqdm(pairs, desc="eval", unit="image", disable=None)
    )
    table.unavailable = unavailable
    if match.missing_pred or match.missing_gt:
        table.notes.append(f"not evaluated: {match.mismatch_text()}")

    print(table.to_text(), end="")
    if args.csv is not None:
        _write(args.csv, table.to_csv())
    if args.markdown is not None:
        _write(args.markdown, table.to_markdown())
    if table.errors:
        print(
            f"osdsr eval: {len(table.errors)} of {len(table.rows)} image(s) not scored (empty cells; reasons above): "
            "fix or remove them and run again",
            file=sys.stderr,
        )
        return 1
    return 0
