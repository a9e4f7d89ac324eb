"""Every D3SR ablation trains through ``osdsr train``; an exported LoRA file reloads and upscales."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from osdsr.cli import main
from osdsr.config import from_dict
from osdsr.models.sd_generator import SDGeneratorConfig, load_sd_generator, save_sd_model, trainable_state_dict
from osdsr.weights_io import read_safetensors

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO_ROOT / "configs" / "d3sr-tiny.yaml"
TINY_LORA = "{rank: 4, alpha: 4}"


def train(output: Path, settings: list[str], steps: int = 2) -> int:
    return main(["train", str(TINY_CONFIG), "--output", str(output), "--max-steps", str(steps), *settings])


def read_log(output: Path) -> list[dict[str, float]]:
    with (output / "log.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def assert_trained(output: Path, steps: int = 2) -> list[dict[str, float]]:
    rows = read_log(output)
    assert [row["step"] for row in rows] == list(range(1, steps + 1))
    assert all(math.isfinite(v) for row in rows for v in row.values())
    return rows


@pytest.mark.parametrize("perceptual", ["mse", "lpips", "ea-lpips", "dists", "ea-dists"])
def test_perceptual_loss_ablations(perceptual: str, tmp_path: Path, small_run: Callable[..., list[str]]) -> None:
    settings = small_run(
        f"loss.perceptual={perceptual}", "loss.allow_random_perceptual=true", "discriminator.kind=none"
    )
    assert train(tmp_path, settings) == 0
    rows = assert_trained(tmp_path)
    assert ("g/perceptual" in rows[0]) == (perceptual != "mse")
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_perceptual_loss_without_weights_refuses_to_start(
    tmp_path: Path, small_run: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(tmp_path, small_run("loss.perceptual=ea-dists")) == 2
    assert "vgg_weights" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["none", "cnn", "diffusion-gan", "sd21", "sdxl"])
def test_discriminator_ablations(
    kind: str, tmp_path: Path, small_run: Callable[..., list[str]], tiny_sd_folder: Path, tiny_sdxl_folder: Path
) -> None:
    pretrained = {"sd21": tiny_sd_folder, "sdxl": tiny_sdxl_folder}.get(kind)
    extra = [f"discriminator.pretrained={pretrained}", f"discriminator.lora={TINY_LORA}"] if pretrained else []
    assert train(tmp_path / "run", small_run(f"discriminator.kind={kind}", "discriminator.channels=8", *extra)) == 0
    rows = assert_trained(tmp_path / "run")
    assert ("g/adversarial" in rows[0]) == ("d/adversarial" in rows[0]) == (kind != "none")
    checkpoint = torch.load(next((tmp_path / "run" / "checkpoints").iterdir()), weights_only=True)
    assert ("discriminator" in checkpoint) == (kind != "none")


def test_nad_without_base_folder_is_one_clear_line(
    tmp_path: Path, small_run: Callable[..., list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(tmp_path, small_run("discriminator.kind=sdxl")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--set discriminator.pretrained=DIR" in err[0]


@pytest.mark.parametrize("config", ["d3sr.yaml", "dfosd.yaml"])
def test_full_configs_ask_for_the_sd_base_folder(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", str(REPO_ROOT / "configs" / config), "--output", str(tmp_path), "--max-steps", "1"])
    assert code == 2
    assert "--set generator.pretrained=DIR" in capsys.readouterr().err


def upscale(model: Path, base: Path, image: Path, out_dir: Path) -> bytes:
    args = ["upscale", str(image), "-o", str(out_dir), "--model", str(model), "--pretrained", str(base)]
    assert main(args) == 0
    return (out_dir / image.name).read_bytes()


def test_exported_lora_file_reloads_and_upscales(
    tmp_path: Path, small_run: Callable[..., list[str]], tiny_sd_folder: Path
) -> None:
    """SD base + LoRA + learnable prompt (DFOSD) + NAD: export -> upscale; save -> load -> upscale is bit-exact."""
    run = tmp_path / "run"
    settings = small_run(
        "method=dfosd",
        f"generator.pretrained={tiny_sd_folder}",
        f"generator.lora={TINY_LORA}",
        "generator.prompt_embedding=learnable",
        "discriminator.kind=sd21",
        f"discriminator.pretrained={tiny_sd_folder}",
        f"discriminator.lora={TINY_LORA}",
        "discriminator.channels=8",
    )
    assert train(run, settings) == 0
    exported = run / "model.safetensors"
    state, _ = read_safetensors(exported)
    assert "prompt_embedding" in state and all("lora_" in k for k in state if k != "prompt_embedding")

    checkpoint = torch.load(next((run / "checkpoints").iterdir()), weights_only=True)
    generator, meta = load_sd_generator(exported, tiny_sd_folder)
    assert meta["model_type"] == "dfosd"
    for key, value in trainable_state_dict(generator).items():  # the file holds exactly the trained weights
        assert torch.equal(value, checkpoint["generator"][key]), key

    image = tmp_path / "lr.png"
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    first = upscale(exported, tiny_sd_folder, image, tmp_path / "out1")
    assert Image.open(tmp_path / "out1" / image.name).size == (80, 48)

    resaved = tmp_path / "resaved.safetensors"
    save_sd_model(generator, from_dict(SDGeneratorConfig, meta["generator"]), resaved, model_type="dfosd")
    again, _ = read_safetensors(resaved)
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)
    assert upscale(resaved, tiny_sd_folder, image, tmp_path / "out2") == first


def test_teacher_distillation_with_a_strength_control_trains_exports_and_upscales(
    tmp_path: Path, small_run: Callable[..., list[str]], hr_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """data.teacher builds its cache on first use; the exported model keeps its strength control, whose
    ends give different images through ``osdsr upscale --strength``; a model without one refuses it."""
    from osdsr.model_loading import LoadOptions, load_sr_model
    from osdsr.models.realesrgan import RealESRGANConfig, RealESRGANSR, save_realesrgan_model
    from realesrgan_files import randomise

    teacher = RealESRGANSR(RealESRGANConfig.tiny("rrdbnet"))
    randomise(teacher.network)
    save_realesrgan_model(tmp_path / "teacher", teacher)
    cache = tmp_path / "cache"
    teacher_data = f"{{model: {tmp_path / 'teacher'}, samples: 3, shard_size: 2, folder: {cache}}}"
    settings = small_run(
        f"data.teacher={teacher_data}", "loss.teacher_weight=1.0", "generator.strength_timesteps=[50, 200]",
        "generator.default_strength=0.25", "discriminator.kind=none",
    )
    assert train(tmp_path / "run", settings) == 0
    rows = assert_trained(tmp_path / "run")
    assert {"g/teacher_mse", "g/mse", "g/edge"} <= set(rows[0])
    assert len(list(cache.glob("*/shard-*.safetensors"))) == 2
    model_dir = tmp_path / "run" / "model"
    assert load_sr_model(model_dir).strength == 0.25  # the model's own default
    outputs = {}
    for strength in ("0", "1"):
        out = tmp_path / f"out{strength}"
        assert main(["upscale", str(hr_folder / "photo0.png"), "-o", str(out), "--model", str(model_dir), "--strength", strength]) == 0
        outputs[strength] = np.asarray(Image.open(out / "photo0.png"), dtype=np.float64)
    assert np.abs(outputs["0"] - outputs["1"]).mean() > 0
    capsys.readouterr()
    assert main(["upscale", str(hr_folder / "photo0.png"), "-o", str(tmp_path / "x"), "--model", "bicubic", "--strength", "0.5"]) == 2
    assert "no strength control" in capsys.readouterr().err
    assert main(["upscale", str(hr_folder / "photo0.png"), "-o", str(tmp_path / "x"), "--model", str(model_dir), "--strength", "2"]) == 2
    with pytest.raises(ValueError, match="no strength control"):
        load_sr_model("bicubic", LoadOptions(strength=0.5))
    # the page's slider: a copy at another strength shares the weights and equals a model loaded at it
    from osdsr.inference import upscale_tensor
    from osdsr.models.sr_model import at_strength

    model, lr = load_sr_model(model_dir), torch.rand(1, 3, 16, 16)
    moved = at_strength(model, 1.0)
    assert moved.strength == 1.0 and model.strength == 0.25 and moved.generator is model.generator
    torch.testing.assert_close(upscale_tensor(moved, lr), upscale_tensor(load_sr_model(model_dir, LoadOptions(strength=1.0)), lr))
    bicubic = load_sr_model("bicubic")
    assert at_strength(bicubic, 0.5) is bicubic and at_strength(model, None) is model
    with pytest.raises(ValueError, match="must be in"):
        at_strength(model, 1.5)
