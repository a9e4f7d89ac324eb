"""Evaluate a folder of predictions (optionally against ground truth): matching, metrics, result tables.

Files are matched by stem, whatever their extensions (``0001.png`` with ``0001.jpg``). Images are read with
``osdsr.data.image_io.load_image`` (float in [0, 1], EXIF-upright, 8 or 16 bits); an alpha channel is
ignored. A gray image compared with an RGB one is repeated to three channels, which leaves its Y unchanged.
Means are plain averages over images; a PSNR of ``inf`` (an image identical to its ground truth) makes the
PSNR mean ``inf``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from osdsr.data.image_io import IMAGE_FORMATS, load_image
from osdsr.metrics.external import MetricUnavailable
from osdsr.metrics.registry import METRICS, MetricOptions

logger = logging.getLogger(__name__)

LISTED_NAMES = 5  # unmatched file names shown in a message before "..."


@dataclass(frozen=True)
class ImagePair:
    name: str  # the shared file stem
    pred: Path
    gt: Path | None


@dataclass(frozen=True)
class FolderMatch:
    pairs: list[ImagePair]
    missing_pred: list[str]  # ground-truth stems without a prediction
    missing_gt: list[str]  # prediction stems without ground truth

    def mismatch_text(self) -> str:
        parts = []
        if self.missing_pred:
            count = len(self.missing_pred)
            parts.append(f"{count} ground-truth image(s) have no prediction: {_listed(self.missing_pred)}")
        if self.missing_gt:
            parts.append(f"{len(self.missing_gt)} prediction(s) have no ground truth: {_listed(self.missing_gt)}")
        return "; ".join(parts)


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LISTED_NAMES])
    return shown + (", ..." if len(names) > LISTED_NAMES else "")


def image_files(folder: Path) -> dict[str, Path]:
    """Image files directly in ``folder`` by stem; two files with one stem (``a.png``, ``a.jpg``) raise."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_FORMATS:
            continue
        if path.stem in files:
            raise ValueError(
                f"{folder}: {files[path.stem].name} and {path.name} share the name {path.stem!r}; keep one"
            )
        files[path.stem] = path
    if not files:
        raise ValueError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_FORMATS))})")
    return files


def match_folders(pred_dir: Path, gt_dir: Path | None) -> FolderMatch:
    """Pair predictions with ground truth by stem (every prediction alone when ``gt_dir`` is None)."""
    preds = image_files(pred_dir)
    if gt_dir is None:
        return FolderMatch([ImagePair(name, path, None) for name, path in preds.items()], [], [])
    gts = image_files(gt_dir)
    pairs = [ImagePair(name, preds[name], gts[name]) for name in preds if name in gts]
    return FolderMatch(pairs, [n for n in gts if n not in preds], [n for n in preds if n not in gts])


def build_metrics(
    names: Iterable[str], options: MetricOptions
) -> tuple[dict[str, Callable[..., float]], dict[str, str]]:
    """The metric functions that can run here, and the reason for each one that cannot."""
    built: dict[str, Callable[..., float]] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        try:
            built[name] = METRICS[name].build(options)
        except MetricUnavailable as exc:
            unavailable[name] = str(exc)
            logger.debug("%s is unavailable: %s", name, exc)
    return built, unavailable


def _read_pair(pair: ImagePair) -> tuple[np.ndarray, np.ndarray | None]:
    pred = load_image(pair.pred).pixels
    if pair.gt is None:
        return pred, None
    gt = load_image(pair.gt).pixels
    if pred.shape[:2] != gt.shape[:2]:
        raise ValueError(
            f"{pair.name}: prediction {pair.pred} is {pred.shape[1]}x{pred.shape[0]} but ground truth {pair.gt} is "
            f"{gt.shape[1]}x{gt.shape[0]}; predictions must have the ground truth's size"
        )
    if pred.shape[2] != gt.shape[2]:  # gray vs RGB: R = G = B has the gray's own Y
        pred, gt = (np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x for x in (pred, gt))
    return pred, gt


@dataclass
class EvaluationTable:
    """Per-image metric values (rows in file order), their means, and the metrics that could not run.

    An image that could not be read or scored by a metric has no value there (an empty cell) and its
    reason in ``errors``; means are over the images that have a value.
    """

    metric_names: list[str]
    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # image name -> why some or all of its cells are empty

    def means(self) -> dict[str, float]:
        scored = {m: [values[m] for _, values in self.rows if m in values] for m in self.metric_names}
        return {m: float(np.mean(v)) if v else math.nan for m, v in scored.items()}

    def _value_rows(self, fmt: str) -> list[list[str]]:
        def cells(values: dict[str, float]) -> list[str]:
            return [format(values[m], fmt) if m in values and not math.isnan(values[m]) else "" for m in self.metric_names]

        return [[name, *cells(values)] for name, values in self.rows] + [["mean", *cells(self.means())]]

    def error_notes(self) -> list[str]:
        return [f"not scored: {name}: {reason}" for name, reason in self.errors.items()]

    def to_csv(self) -> str:
        """``image,<metric>,...`` then one row per image and a last ``mean`` row (6 decimals); when some
        image could not be scored, a last ``error`` column gives the reason."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        extra = ["error"] if self.errors else []
        writer.writerow(["image", *self.metric_names, *extra])
        for row in self._value_rows(".6f"):
            writer.writerow(row + ([self.errors.get(row[0], "")] if extra else []))
        return buffer.getvalue()

    def to_markdown(self) -> str:
        arrows = [f"{m} {'↑' if METRICS[m].higher_is_better else '↓'}" for m in self.metric_names]
        lines = ["| image | " + " | ".join(arrows) + " |", "|---" * (len(arrows) + 1) + "|"]
        rows = self._value_rows(".4f")
        lines += ["| " + " | ".join(row) + " |" for row in rows[:-1]]
        lines.append("| **mean** | " + " | ".join(f"**{v}**" for v in rows[-1][1:]) + " |")
        extra = [f"- {name}: unavailable ({reason})" for name, reason in self.unavailable.items()]
        extra += [f"- {note}" for note in self.notes + self.error_notes()]
        return "\n".join(lines + ([""] + extra if extra else [])) + "\n"

    def to_text(self) -> str:
        """A plain aligned table for the terminal, then the unavailable metrics and notes."""
        cells = [["image", *self.metric_names], *self._value_rows(".4f")]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]

        def line(row: list[str]) -> str:
            return "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])

        lines = [line(row) for row in cells]
        lines.insert(-1, "-" * len(lines[0]))  # above the mean row
        lines += [f"{name}: unavailable ({reason})" for name, reason in self.unavailable.items()]
        lines += self.notes + self.error_notes()
        return "\n".join(lines) + "\n"


def evaluate(
    pairs: Sequence[ImagePair],
    metrics: dict[str, Callable[..., float]],
    progress: Callable[[Iterable[ImagePair]], Iterable[ImagePair]] = iter,
) -> EvaluationTable:
    """Every metric on every pair. An image that cannot be read (or a metric that fails on it) leaves
    its cells empty and its reason in ``table.errors``; the other images are still scored."""
    table = EvaluationTable(list(metrics))
    for pair in progress(pairs):
        values: dict[str, float] = {}
        problems = []
        try:
            pred, gt = _read_pair(pair)
        except (ValueError, OSError) as exc:
            problems.append(str(exc))
        else:
            for name, metric in metrics.items():
                try:
                    values[name] = metric(pred, gt) if METRICS[name].needs_gt else metric(pred)
                except ValueError as exc:
                    problems.append(f"{pair.pred}: {name}: {exc}")
        if problems:
            table.errors[pair.name] = "; ".join(problems)
        table.rows.append((pair.name, values))
    return table
