"""ResShift teacher training: the objective learns, the weights of Eq. 4, the frozen autoencoder, the CLI."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from method_step import generator_step
from PIL import Image

from osdsr.cli import main
from osdsr.config import from_dict, read_yaml
from osdsr.methods.resshift import ResShiftLossConfig, ResShiftMethod, ResShiftTrainConfig, mse_loss_weights
from osdsr.models.autoencoders import VQAutoencoderConfig
from osdsr.models.resshift_sr import ResShiftModelConfig, build_resshift_sr_model, save_resshift_model
from osdsr.models.resshift_unet import SwinUNet, SwinUNetConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO_ROOT / "configs" / "resshift-tiny.yaml"
FULL_CONFIG = REPO_ROOT / "configs" / "resshift.yaml"
PIXEL_DENOISER = dataclasses.replace(SwinUNetConfig.tiny(), latent_channels=48)


def smooth_batch(batch_size: int = 2, lr_size: int = 16) -> dict[str, torch.Tensor]:
    """HR images of smooth colour waves and their 4x box-downsampled LR images, in [0, 1]."""
    size = 4 * lr_size
    y, x = torch.meshgrid(torch.arange(size) / size, torch.arange(size) / size, indexing="ij")
    waves = [
        torch.stack([0.5 + 0.4 * torch.sin(6 * x * (b + 1) + c) * torch.cos(4 * y + b) for c in range(3)])
        for b in range(batch_size)
    ]
    hr = torch.stack(waves)
    return {"lr": torch.nn.functional.avg_pool2d(hr, 4), "hr": hr}


def test_teacher_objective_falls_on_a_fixed_batch() -> None:
    config = ResShiftTrainConfig(autoencoder="pixel_unshuffle", denoiser=PIXEL_DENOISER)
    method = ResShiftMethod(config)
    generator = method.generator
    optimizer = torch.optim.Adam(generator.parameters(), lr=2e-3)
    batch = smooth_batch()
    losses = []
    for _ in range(20):
        terms, _ = generator_step(method, batch, generator, None, torch.Generator().manual_seed(3))
        optimizer.zero_grad()
        terms["mse"].backward()
        optimizer.step()
        losses.append(terms["mse"].item())
    assert losses[-1] < 0.1 * losses[0]


def test_teacher_objective_draws_steps_over_the_whole_chain_and_regresses_z0() -> None:
    config = ResShiftTrainConfig(autoencoder="pixel_unshuffle", denoiser=PIXEL_DENOISER)
    method = ResShiftMethod(config)
    batch = smooth_batch(batch_size=1)
    seen: set[int] = set()

    def recording_denoiser(z_scaled: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        seen.update(t.tolist())
        torch.testing.assert_close(lq, batch["lr"] * 2 - 1)
        return torch.zeros_like(z_scaled)

    for seed in range(120):
        terms, _ = generator_step(method, batch, recording_denoiser, None, torch.Generator().manual_seed(seed))
    assert seen == set(range(15))  # t ~ U{0, ..., T-1}
    z0 = torch.nn.functional.pixel_unshuffle(batch["hr"] * 2 - 1, 4)
    assert terms["mse"].item() == pytest.approx(z0.pow(2).mean().item(), rel=1e-5)  # ||0 - z0||^2 / (C H W)


def test_weighted_mse_uses_the_weights_of_eq_4() -> None:
    method = ResShiftMethod(ResShiftTrainConfig(autoencoder="pixel_unshuffle", denoiser=PIXEL_DENOISER))
    schedule = method.schedule
    weights = mse_loss_weights(schedule)
    etas, kappa = schedule.etas, schedule.kappa
    for t in range(1, 15):  # w_t = alpha_t / (2 kappa^2 eta_t eta_{t-1})
        expected = (etas[t] - etas[t - 1]) / (2 * kappa**2 * etas[t] * etas[t - 1])
        assert weights[t].item() == pytest.approx(expected.item(), rel=1e-9)
    variance_2 = kappa**2 * etas[0] / etas[1] * (etas[1] - etas[0])  # t = 1 borrows the variance of t = 2
    assert weights[0].item() == pytest.approx((0.5 / variance_2 * 1.0).item(), rel=1e-9)  # alpha_1 / eta_1 = 1

    weighted = ResShiftMethod(dataclasses.replace(method.config, loss=ResShiftLossConfig(weighted_mse=True)))
    batch = smooth_batch(batch_size=1)

    def zero(z_scaled: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(z_scaled)

    seed = 5
    t = torch.randint(0, 15, (1,), generator=torch.Generator().manual_seed(seed))  # the method's first draw
    plain, _ = generator_step(method, batch, zero, None, torch.Generator().manual_seed(seed))
    scaled, _ = generator_step(weighted, batch, zero, None, torch.Generator().manual_seed(seed))
    assert scaled["mse"].item() == pytest.approx(plain["mse"].item() * weights[t].item(), rel=1e-5)


def test_vq_autoencoder_is_read_frozen_from_a_model_folder(tmp_path: Path) -> None:
    source = build_resshift_sr_model(ResShiftModelConfig.tiny())
    with torch.no_grad():
        for p in source.autoencoder.parameters():
            p.normal_()
    save_resshift_model(tmp_path / "vq", source)
    config = ResShiftTrainConfig(
        autoencoder=VQAutoencoderConfig.tiny(), autoencoder_path=str(tmp_path / "vq"), denoiser=SwinUNetConfig.tiny()
    )
    method = ResShiftMethod(config)
    for name, value in source.autoencoder.state_dict().items():
        torch.testing.assert_close(method.autoencoder.state_dict()[name], value)
    assert not any(p.requires_grad for p in method.autoencoder.parameters())
    with pytest.raises(ValueError, match="autoencoder_path is not set"):
        ResShiftMethod(dataclasses.replace(config, autoencoder_path=None))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        ResShiftMethod(dataclasses.replace(config, autoencoder_path=str(tmp_path / "missing")))
    other = dataclasses.replace(VQAutoencoderConfig.tiny(), n_embed=VQAutoencoderConfig.tiny().n_embed * 2)
    with pytest.raises(ValueError, match="settings differ"):
        ResShiftMethod(dataclasses.replace(config, autoencoder=other))


def test_full_config_is_the_official_release_on_meta() -> None:
    config = from_dict(ResShiftTrainConfig, read_yaml(FULL_CONFIG))
    assert config.model_config() == ResShiftModelConfig()  # the release's denoiser, VQ-f4 and schedule
    with torch.device("meta"):
        denoiser = SwinUNet(config.denoiser)
    assert sum(p.numel() for p in denoiser.parameters()) / 1e6 == pytest.approx(118.59, abs=0.01)
    assert (config.optimizer.lr, config.trainer.batch_size, config.trainer.ema_decay) == (5e-5, 64, 0.999)


def write_lr_image(path: Path, size: int = 16) -> Path:
    pixels = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_train_then_upscale_with_15_steps(tmp_path: Path, small_run: Callable[..., list[str]]) -> None:
    run = tmp_path / "run"
    settings = small_run("data.crop_size=64", "trainer.batch_size=2")
    assert main(["train", str(TINY_CONFIG), "--output", str(run), "--max-steps", "2", *settings]) == 0
    with (run / "log.csv").open() as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["1", "2"]
    assert read_yaml(run / "model" / "config.json")["model_type"] == "resshift"
    image = write_lr_image(tmp_path / "lr.png")
    out = tmp_path / "out"
    assert main(["upscale", str(image), "--model", str(run / "model"), "--steps", "15", "-o", str(out)]) == 0
    assert Image.open(out / "lr.png").size == (64, 64)
