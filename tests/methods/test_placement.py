"""The trainer places every network a method holds (generator, discriminator, perceptual network,
teacher, autoencoder): on its device, and under mixed precision frozen weights in bf16, trainable weights
and optimiser state in float32. A patched ``meta`` device stands in for a GPU."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from resshift_teachers import save_tiny_teacher
from torch import nn

from osdsr.commands.train import load_run_config
from osdsr.methods import resolve_method
from osdsr.train import Trainer

REPO_ROOT = Path(__file__).resolve().parents[2]
# config -> its extra settings, and the networks the method must hold
METHODS = {
    "d3sr-tiny.yaml": (("loss.perceptual=lpips", "loss.allow_random_perceptual=true"), {"generator", "discriminator", "perceptual"}),
    "tadsr-tiny.yaml": (("teacher.steps=2",), {"generator", "discriminator", "teacher"}),
    "tddsr-tiny.yaml": (("teacher.steps=2",), {"generator", "discriminator", "teacher"}),
    "sinsr-tiny.yaml": (("teacher.steps=2",), {"generator", "teacher"}),
    "resshift-tiny.yaml": ((), {"generator", "autoencoder"}),
}


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def build_trainer(config: str, output: Path, settings: list[str], teacher: Path) -> Trainer:
    extra, _ = METHODS[config]
    if "teacher.steps=2" in extra:
        settings = [*settings, f"teacher.path={teacher}"]
    run_config = load_run_config(REPO_ROOT / "configs" / config, [*settings, *extra])
    _, build = resolve_method(run_config.method)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        method = build(run_config)
    return Trainer(method, run_config, run_config.trainer, run_config.data, output)


def held_networks(method: object) -> dict[str, nn.Module]:
    """Every network the method object holds, found by looking at its attributes (not by asking it)."""
    return {name: value for name, value in vars(method).items() if isinstance(value, nn.Module)}


def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return dict(itertools.chain(module.named_parameters(), module.named_buffers()))


@pytest.mark.parametrize("config", sorted(METHODS))
def test_every_network_follows_the_trainer_device(
    config: str, tmp_path: Path, small_run: Callable[..., list[str]], teacher_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Accelerator, "device", property(lambda self: torch.device("meta")))
    trainer = build_trainer(config, tmp_path, small_run()[1::2], teacher_folder)
    networks = held_networks(trainer.method)
    assert set(networks) == METHODS[config][1]
    for name, network in networks.items():
        elsewhere = {k: str(v.device) for k, v in tensors(network).items() if v.device.type != "meta"}
        assert not elsewhere, f"{name}: {dict(list(elsewhere.items())[:3])}"
    assert all(v.device.type == "meta" for v in trainer.ema.shadow.values()) if trainer.ema else True


@pytest.fixture
def fresh_accelerator_state() -> Iterator[None]:
    """accelerate keeps one process-wide state, fixed by its first Accelerator: start and leave it blank."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("config", ["d3sr-tiny.yaml", "tadsr-tiny.yaml"])
def test_bf16_keeps_frozen_weights_in_bf16_and_trains_in_float32(
    config: str, tmp_path: Path, small_run: Callable[..., list[str]], teacher_folder: Path, fresh_accelerator_state: None
) -> None:
    """One bf16 step on the CPU: the frozen networks (VAE, VGG / teacher) are bf16, every trainable weight
    and its Adam moments float32, the losses finite; the export afterwards works in float32."""
    settings = small_run("trainer.mixed_precision=bf16", "trainer.max_steps=1")[1::2]
    trainer = build_trainer(config, tmp_path, settings, teacher_folder)
    logs = trainer.train(progress=False)
    assert all(math.isfinite(v) for v in logs.values())
    frozen = trainable = 0
    for name, network in held_networks(trainer.method).items():
        for key, param in network.named_parameters():
            expected = torch.float32 if param.requires_grad else torch.bfloat16
            assert param.dtype == expected, f"{name}.{key}: {param.dtype}"
            frozen, trainable = frozen + (not param.requires_grad), trainable + param.requires_grad
    assert frozen and trainable
    moments = [v for opt in trainer.optimizers.values() for state in opt.state.values() for v in state.values()]
    assert moments and all(v.dtype == torch.float32 for v in moments if v.dim() > 0)
    assert trainer.export() is not None


def test_pretrained_frozen_weights_are_read_in_bf16(
    tmp_path: Path,
    small_run: Callable[..., list[str]],
    tiny_sd_folder: Path,
    tiny_sdxl_folder: Path,
    fresh_accelerator_state: None,
) -> None:
    """bf16 training of D3SR on local diffusers folders: the SD UNet under LoRA, the VAE and the SDXL NAD's
    encoder come out of their files in bf16 (read so, not cast by the trainer later); after the trainer's
    placement every trainable weight (LoRA, head) and its Adam moments are float32, and two steps train."""
    lora = "{rank: 4, alpha: 4}"
    settings = small_run(
        "trainer.mixed_precision=bf16",
        "trainer.max_steps=2",
        f"generator.pretrained={tiny_sd_folder}",
        f"generator.lora={lora}",
        "discriminator.kind=sdxl",
        f"discriminator.pretrained={tiny_sdxl_folder}",
        f"discriminator.lora={lora}",
        "discriminator.channels=8",
    )[1::2]
    run_config = load_run_config(REPO_ROOT / "configs" / "d3sr-tiny.yaml", settings)
    _, build = resolve_method(run_config.method)
    method = build(run_config)
    read = {
        "unet": method.generator.unet,
        "vae": method.generator.autoencoder,
        "nad encoder": method.discriminator.encoder,
    }
    for name, network in read.items():
        frozen = {k: p.dtype for k, p in network.named_parameters() if not p.requires_grad}
        assert frozen and set(frozen.values()) == {torch.bfloat16}, name

    trainer = Trainer(method, run_config, run_config.trainer, run_config.data, tmp_path)
    before = {k: p.detach().clone() for k, p in trainer.unwrapped_generator.named_parameters() if p.requires_grad}
    logs = trainer.train(progress=False)
    assert trainer.step == run_config.trainer.max_steps and all(math.isfinite(v) for v in logs.values())
    for name, network in {"generator": method.generator, "discriminator": method.discriminator}.items():
        for key, param in network.named_parameters():
            expected = torch.float32 if param.requires_grad else torch.bfloat16
            assert param.dtype == expected, f"{name}.{key}: {param.dtype}"
    after = dict(trainer.unwrapped_generator.named_parameters())
    assert any("lora_" in k and not torch.equal(after[k], v) for k, v in before.items())
    moments = [v for opt in trainer.optimizers.values() for state in opt.state.values() for v in state.values()]
    assert moments and all(v.dtype == torch.float32 for v in moments if v.dim() > 0)


@pytest.mark.parametrize("config", ["d3sr-tiny.yaml", "resshift-tiny.yaml"])
def test_memory_estimate_counts_the_weights_the_trainer_places(
    config: str, tmp_path: Path, small_run: Callable[..., list[str]], teacher_folder: Path, fresh_accelerator_state: None
) -> None:
    """``osdsr.memory``'s bf16 weights are the trainer's: frozen networks (the VAE, ResShift's autoencoder) in
    bf16, trainable weights in float32 (not the frozen networks counted in float32). (The students' estimates
    build the official full-size teacher, so a tiny student run has other weights.)"""
    from osdsr.memory import estimate_training_memory, method_modules, weight_bytes

    settings = [s for s in small_run("trainer.mixed_precision=bf16")[1::2] if not s.startswith("data.crop_size")]
    trainer = build_trainer(config, tmp_path, settings, teacher_folder)  # at the config's crop (ResShift's minimum)
    placed, trainable = weight_bytes(method_modules(trainer.method))
    estimate = estimate_training_memory(trainer.run_config)
    assert (estimate.weights, estimate.trainable) == (placed, trainable)
