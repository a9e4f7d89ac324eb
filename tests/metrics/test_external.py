"""Network metrics: unavailable (with a reason) without weights or pyiqa, and the image-to-tensor bridge."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from osdsr.losses.perceptual import build_perceptual_loss
from osdsr.metrics import external
from osdsr.metrics.evaluation import build_metrics
from osdsr.metrics.external import FullReferenceNetwork, MetricUnavailable, perceptual_metric, pyiqa_metric
from osdsr.metrics.registry import MetricOptions

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", ["lpips", "dists"])
def test_perceptual_metric_without_weights_is_unavailable(name: str) -> None:
    with pytest.raises(MetricUnavailable, match=f"--vgg-weights .* and --{name}-weights"):
        perceptual_metric(name, None, None, CPU)
    with pytest.raises(MetricUnavailable, match=f"--{name}-weights") as info:
        perceptual_metric(name, Path("vgg16.pth"), None, CPU)
    assert "--vgg-weights" not in str(info.value)


def test_given_but_missing_weight_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vgg16.pth"):
        perceptual_metric("lpips", tmp_path / "vgg16.pth", tmp_path / "lpips.pth", CPU)


def test_network_bridge_compares_images_and_repeats_gray() -> None:
    tiny_lpips = build_perceptual_loss("lpips", allow_random=True, vgg_width_divisor=16)
    metric = FullReferenceNetwork(tiny_lpips, CPU)
    rng = np.random.default_rng(0)
    gray_a, gray_b = rng.random((2, 32, 32, 1), dtype=np.float32)
    assert metric(gray_a, gray_a) == pytest.approx(0.0, abs=1e-7)
    distance = metric(gray_a, gray_b)
    assert distance > 0
    assert metric(np.repeat(gray_a, 3, axis=2), np.repeat(gray_b, 3, axis=2)) == pytest.approx(distance, rel=1e-6)


def _pretend_pyiqa_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        external.importlib.util, "find_spec", lambda name, *a: object() if name == "pyiqa" else real_find_spec(name, *a)
    )


@pytest.mark.parametrize("name", ["musiq", "maniqa", "clipiqa"])
def test_pyiqa_metrics_are_unavailable_without_pyiqa_or_weights(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(external.importlib.util, "find_spec", lambda *_: None)
    with pytest.raises(MetricUnavailable, match="pyiqa is not installed"):
        pyiqa_metric(name, Path("checkpoint.pth"), CPU)
    _pretend_pyiqa_installed(monkeypatch)
    with pytest.raises(MetricUnavailable, match=f"--pyiqa-weights {name}=PATH"):
        pyiqa_metric(name, None, CPU)


def test_build_metrics_separates_available_from_unavailable() -> None:
    built, unavailable = build_metrics(["psnr", "niqe", "lpips", "musiq"], MetricOptions())
    assert sorted(built) == ["niqe", "psnr"]
    assert sorted(unavailable) == ["lpips", "musiq"]
    assert all(reason for reason in unavailable.values())
