"""Every image-quality metric of ``osdsr eval``, by name.

``METRICS[name].build(options)`` returns the metric as a function of float HxWxC images in [0, 1]:
``f(pred, gt)`` for full-reference metrics (``needs_gt``), ``f(pred)`` for no-reference ones. Building
raises :class:`~osdsr.metrics.external.MetricUnavailable` when a metric cannot run here (missing weights or
pyiqa), so it can be reported as unavailable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

import torch

from osdsr.metrics import external
from osdsr.metrics.fidelity import DEFAULT_CROP_BORDER, psnr, ssim
from osdsr.metrics.full_reference import gmsd, haarpsi, ms_ssim
from osdsr.metrics.niqe import niqe


@dataclass(frozen=True)
class MetricOptions:
    """What the metrics need besides the images: the border crop and local weight files."""

    crop_border: int = DEFAULT_CROP_BORDER  # PSNR, SSIM, NIQE (the network metrics see the whole image)
    vgg_weights: Path | None = None
    lpips_weights: Path | None = None
    dists_weights: Path | None = None
    pyiqa_weights: Mapping[str, Path] = field(default_factory=dict)  # pyiqa metric name -> checkpoint
    device: str = "cpu"


@dataclass(frozen=True)
class Metric:
    needs_gt: bool
    higher_is_better: bool
    build: Callable[[MetricOptions], Callable[..., float]]
    description: str


def _pyiqa(name: str) -> Metric:
    return Metric(
        needs_gt=False,
        higher_is_better=external.PYIQA_METRICS[name],
        build=lambda o: external.pyiqa_metric(name, o.pyiqa_weights.get(name), torch.device(o.device)),
        description=f"{name.upper()} through pyiqa (local checkpoint)",
    )


METRICS: dict[str, Metric] = {
    "psnr": Metric(True, True, lambda o: partial(psnr, crop_border=o.crop_border), "PSNR on Y (dB)"),
    "ssim": Metric(True, True, lambda o: partial(ssim, crop_border=o.crop_border), "SSIM on Y"),
    "niqe": Metric(False, False, lambda o: partial(niqe, crop_border=o.crop_border), "NIQE on Y (weight-free)"),
    "ms_ssim": Metric(True, True, lambda o: ms_ssim, "MS-SSIM on RGB, whole image (weight-free, piq conventions)"),
    "gmsd": Metric(True, False, lambda o: gmsd, "GMSD on luma, whole image (weight-free, piq conventions)"),
    "haarpsi": Metric(True, True, lambda o: haarpsi, "HaarPSI on YIQ, whole image (weight-free, piq conventions)"),
    "lpips": Metric(
        True,
        False,
        lambda o: external.perceptual_metric("lpips", o.vgg_weights, o.lpips_weights, torch.device(o.device)),
        "LPIPS (VGG, local weights)",
    ),
    "dists": Metric(
        True,
        False,
        lambda o: external.perceptual_metric("dists", o.vgg_weights, o.dists_weights, torch.device(o.device)),
        "DISTS (local weights)",
    ),
    **{name: _pyiqa(name) for name in external.PYIQA_METRICS},
}
