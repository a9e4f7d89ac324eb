"""Tiny local diffusers folders (SD-2.1-shaped, SDXL-shaped UNet) and a tiny HR image folder for D3SR tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sd import TINY_SD_UNET, TINY_SD_VAE, TINY_SDXL_UNET

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO_ROOT / "configs" / "d3sr-tiny.yaml"

@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local diffusers SD folder: unet/, vae/, scheduler/ (no text encoder: prompts start at zeros)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from osdsr.diffusion.ddpm import SD21_SCHEDULER_CONFIG

    root = tmp_path_factory.mktemp("tiny-sd21")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        UNet2DConditionModel(**TINY_SD_UNET).save_pretrained(root / "unet")
        AutoencoderKL(**TINY_SD_VAE).save_pretrained(root / "vae")
    DDPMScheduler.from_config(SD21_SCHEDULER_CONFIG).save_config(root / "scheduler")
    return root


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local diffusers folder with an SDXL-shaped UNet (text-time added conditioning)."""
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("tiny-sdxl")
    with torch.random.fork_rng():
        torch.manual_seed(2)
        UNet2DConditionModel(**TINY_SDXL_UNET).save_pretrained(root / "unet")
    return root


@pytest.fixture(scope="session")
def hr_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small textured RGB photos-to-be (smooth gradients + stripes + noise), 80x72 px."""
    root = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:72, 0:80].astype(np.float64)
    for i in range(2):
        channels = [
            128 + 100 * np.sin(x / (4 + i) + c) * np.cos(y / (6 + c)) + rng.normal(0, 8, x.shape) for c in range(3)
        ]
        pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"photo{i}.png")
    return root


@pytest.fixture
def small_run(hr_folder: Path) -> Callable[..., list[str]]:
    """``--set`` arguments that make any D3SR config a seconds-long CPU run on ``hr_folder``."""

    def arguments(*overrides: str) -> list[str]:
        settings = [
            f"data.sources=[{{path: {hr_folder}}}]",
            "data.exclude_list=null",
            "data.crop_size=32",
            "trainer.batch_size=1",
            "trainer.num_threads=null",  # leave the test process's thread count alone
            "trainer.log_every=1",
            *overrides,
        ]
        return [arg for setting in settings for arg in ("--set", setting)]

    return arguments
