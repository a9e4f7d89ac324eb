"""Training-memory estimates on fake tensors: the same count as the same step on real tensors, and what
checkpointing and bf16 change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from osdsr import methods
from osdsr.cli import main
from osdsr.commands.train import load_run_config
from osdsr.memory import estimate_training_memory, method_modules, simulate_step, weight_bytes

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny(name: str) -> object:
    return load_run_config(REPO_ROOT / "configs" / f"{name}-tiny.yaml", [])


def counted_on_real_tensors(config: object, batch_size: int) -> tuple[int, int]:
    """(weight bytes, step peak) of one step of the method built for real, by the estimator's own counter."""
    _, build = methods.resolve_method(config.method)
    torch.manual_seed(0)
    method = build(config)
    crop = config.data.crop_size
    batch = {"lr": torch.rand(batch_size, 3, crop // 4, crop // 4), "hr": torch.rand(batch_size, 3, crop, crop)}
    counter = simulate_step(method, batch, None, config.trainer.grad_clip)
    return weight_bytes(method_modules(method))[0], counter.peak


@pytest.mark.parametrize("name", ["resshift", "d3sr"])
def test_the_fake_estimate_is_the_count_of_the_real_step(name: str) -> None:
    config = tiny(name)
    estimate = estimate_training_memory(config, batch_size=2)
    weights, peak = counted_on_real_tensors(config, batch_size=2)
    assert estimate.weights == weights
    assert estimate.step_peak == pytest.approx(peak, rel=0.02)
    assert 0 < estimate.optimizer_state < estimate.step_peak
    assert estimate.optimizer_state == pytest.approx(2 * estimate.trainable, rel=0.01)  # AdamW: two moments per weight


def test_the_ema_copy_is_counted_when_the_trainer_keeps_one() -> None:
    """osdsr.train.EMA clones the generator's trainable parameters: that much more, and only with an EMA."""
    import dataclasses

    from osdsr.train import EMA

    config = tiny("d3sr")
    without = estimate_training_memory(dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, ema_decay=0.0)))
    with_ema = estimate_training_memory(dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, ema_decay=0.999)))
    _, build = methods.resolve_method(config.method)
    shadow = EMA(build(config).generator, 0.999).shadow
    assert without.ema == 0
    assert with_ema.ema == sum(v.numel() * v.element_size() for v in shadow.values()) > 0
    assert with_ema.total == without.total + with_ema.ema


def test_checkpointing_and_bf16_lower_the_estimate() -> None:
    config = tiny("d3sr")
    fp32 = estimate_training_memory(config, batch_size=4)
    checkpointed = estimate_training_memory(config, batch_size=4, gradient_checkpointing=True)
    bf16 = estimate_training_memory(config, batch_size=4, mixed_precision="bf16")
    assert checkpointed.step_peak < fp32.step_peak and checkpointed.weights == fp32.weights
    assert bf16.weights < fp32.weights  # the frozen VAE in bf16, as the trainer places it
    assert bf16.step_peak < fp32.step_peak


def test_complexity_memory_command_reports_four_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(methods, "full_config", lambda name: tiny(name))
    assert main(["complexity", "resshift", "--train", "--memory", "--batch", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["batch"], report["crop"]) == (1, tiny("resshift").data.crop_size)
    assert list(report["estimates"]) == ["fp32", "fp32 + checkpointing", "bf16", "bf16 + checkpointing"]
    assert all(e["total"] == e["weights"] + e["ema"] + e["step_peak"] for e in report["estimates"].values())
    assert main(["complexity", "resshift", "--memory"]) == 2
    assert "add --train" in capsys.readouterr().err
