"""The trainer's optimiser step: gradient accumulation with several networks, the order of the generator
and discriminator updates, the D:G ratio, per-optimiser warm-up and gradient clipping (d3sr-tiny)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_train import TINY_CONFIG, losses, settings
from torch import nn

from osdsr.cli import main
from osdsr.commands.train import load_run_config
from osdsr.data.degradation import degrade
from osdsr.methods.d3sr import D3SRMethod
from osdsr.models.sd_generator import upsample_lr
from osdsr.train import Trainer, TrainingData


def make_trainer(output: Path, hr: Path, *overrides: str) -> Trainer:
    """A d3sr-tiny trainer as ``osdsr train`` builds it, on 32 px crops of ``hr``."""
    config = load_run_config(TINY_CONFIG, settings(hr, "trainer.checkpoint_every=1000", *overrides)[1::2])
    with torch.random.fork_rng():
        torch.manual_seed(config.trainer.seed)
        method = D3SRMethod(config)
    return Trainer(method, config, config.trainer, config.data, output)


def parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p)}


def trainable(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def optimizer_steps(trainer: Trainer, name: str) -> set[int]:
    """The step counts in the optimiser's state (one per parameter): the updates it really made."""
    torch_optimizer = trainer.optimizers[name].optimizer
    return {int(state["step"]) for state in torch_optimizer.state.values()}


def train_and_diff(trainer: Trainer, steps: int) -> tuple[set[str], set[str]]:
    """Train ``steps`` steps; the names of the generator's and the discriminator's changed parameters."""
    g_before = parameters(trainer.unwrapped_generator)
    d_module = trainer.method.discriminator
    d_before = parameters(d_module) if d_module is not None else {}
    trainer.train(steps, progress=False)
    return changed(g_before, trainer.unwrapped_generator), changed(d_before, d_module) if d_module is not None else set()


def test_accumulation_steps_every_network_once_per_step(tmp_path: Path, hr_folder: Path) -> None:
    """gradient_accumulation_steps=2, 4 steps, a pixel CNN discriminator: the generator trains the same
    tensors as without a discriminator (the UNet's; not the cross-attention keys and values, which see
    the zero prompt embedding and get no gradient), and each optimiser made 4 updates."""
    accumulate = "trainer.gradient_accumulation_steps=2"
    with_d = make_trainer(tmp_path / "cnn", hr_folder, accumulate, "discriminator.kind=cnn")
    g_changed, d_changed = train_and_diff(with_d, 4)
    without_d = make_trainer(tmp_path / "none", hr_folder, accumulate, "discriminator.kind=none")
    g_changed_alone, _ = train_and_diff(without_d, 4)
    assert g_changed == g_changed_alone
    assert {name for name in g_changed if name.startswith("unet.")} and g_changed <= trainable(with_d.unwrapped_generator)
    assert d_changed == trainable(with_d.method.discriminator)
    assert optimizer_steps(with_d, "generator") == optimizer_steps(with_d, "discriminator") == {4}
    assert optimizer_steps(without_d, "generator") == {4}


def degrade_each_image_alone(self: TrainingData, indices: list[int], rng: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """``TrainingData.batch`` with each image degraded by a generator of its own dataset index, so that a
    batch is the concatenation of its images whatever the batch size."""
    hr = torch.stack([self.dataset[i]["hr"] for i in indices]).to(device)
    lr = [degrade(hr[k : k + 1], self.presets, torch.Generator().manual_seed(i), scale=self.scale).lr for k, i in enumerate(indices)]
    return {"lr": torch.cat(lr), "hr": hr}


def sgd_optimizers(self: D3SRMethod, generator: nn.Module, discriminator: nn.Module | None) -> dict[str, torch.optim.Optimizer]:
    modules = {"generator": generator, "discriminator": discriminator}
    return {
        name: torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.01)
        for name, module in modules.items() if module is not None
    }


@pytest.mark.parametrize("order", ["generator_first", "discriminator_first"])
def test_accumulating_two_batches_of_one_equals_one_batch_of_two(
    order: str, tmp_path: Path, hr_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Micro-step k of a 2 x 1 run holds dataset item k, step k of a 1 x 2 run items 2k and 2k+1: with each
    image degraded on its own (and no other randomness: pixel CNN discriminator, deterministic one-step
    generator) both runs see the same two images per step, so their losses and weights agree to float
    rounding. discriminator_first with 2 micro-batches remakes the generator outputs for the generator's
    update; with one it keeps their graph.

    The optimisers are plain SGD here: Adam's first updates are lr * g / (|g| + eps), which turns the
    float rounding of gradients near eps into differences of up to lr; SGD keeps the weights a linear,
    well-conditioned function of the accumulated gradients."""
    monkeypatch.setattr(TrainingData, "batch", degrade_each_image_alone)
    monkeypatch.setattr(D3SRMethod, "optimizers", sgd_optimizers)
    common = ("discriminator.kind=cnn", f"trainer.step_order={order}", "trainer.prefetch=false")
    accumulated = make_trainer(
        tmp_path / "2x1", hr_folder, *common, "trainer.gradient_accumulation_steps=2", "trainer.batch_size=1"
    )
    batched = make_trainer(tmp_path / "1x2", hr_folder, *common, "trainer.batch_size=2")
    networks = {"generator": (accumulated.unwrapped_generator, batched.unwrapped_generator),
                "discriminator": (accumulated.method.discriminator, batched.method.discriminator)}
    initial = {name: parameters(a) for name, (a, _) in networks.items()}
    for step in range(3):
        logs_a = accumulated.train(step + 1, progress=False)
        logs_b = batched.train(step + 1, progress=False)
        assert {k for k in logs_a if k.startswith(("g/", "d/"))} == {"g/mse", "g/edge", "g/adversarial", "d/adversarial"}
        for key in (k for k in logs_a if k.startswith(("g/", "d/"))):
            assert logs_a[key] == pytest.approx(logs_b[key], rel=1e-5, abs=1e-7), (step, key)
    for name, (a, b) in networks.items():  # the weights moved by the same amount: |dw_a - dw_b| << |dw_b|
        moved_a = torch.cat([(p - initial[name][n]).flatten() for n, p in a.named_parameters()])
        moved_b = torch.cat([(p - initial[name][n]).flatten() for n, p in b.named_parameters()])
        assert moved_b.norm() > 0.01 * 3 * 0.5, name  # three SGD steps of lr 0.01, clipped gradient norm 1
        assert (moved_a - moved_b).norm() < 1e-2 * moved_b.norm(), name  # rounding grows ~5x per step here


def test_discriminator_first_trains_the_generator_against_the_updated_discriminator(
    tmp_path: Path, hr_folder: Path
) -> None:
    """Step 1 of both orders: the same generator outputs, so the same spatial terms and the same
    discriminator loss (D_0 on G_0's outputs); the generator's adversarial term is D_0's (generator first)
    or D_1's (discriminator first) judgement of G_0's outputs."""
    logs, judges = {}, {}
    for order in ("generator_first", "discriminator_first"):
        trainer = make_trainer(tmp_path / order, hr_folder, "discriminator.kind=cnn", f"trainer.step_order={order}")
        g_0, d_0 = copy.deepcopy(trainer.unwrapped_generator), copy.deepcopy(trainer.method.discriminator)
        logs[order] = trainer.train(1, progress=False)
        judges[order] = d_0 if order == "generator_first" else trainer.method.discriminator
        batch, _ = trainer._prepare(0)
        with torch.no_grad():
            x_hr_pred = g_0(upsample_lr(batch["lr"]))[1]
            weight = trainer.method.config.loss.adversarial_weight
            expected = weight * trainer.method.g_adv(judges[order](x_hr_pred, None))
        assert logs[order]["g/adversarial"] == pytest.approx(float(expected), rel=1e-5)
    first, second = logs["generator_first"], logs["discriminator_first"]
    for key in ("g/mse", "g/edge", "d/adversarial"):
        assert first[key] == pytest.approx(second[key], rel=1e-6)
    assert first["g/adversarial"] != pytest.approx(second["g/adversarial"], rel=1e-6)


def test_discriminator_steps_two_per_generator_step_each_on_its_own_batch(
    tmp_path: Path, hr_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    original = Trainer._prepare

    def recording(self: Trainer, micro: int) -> tuple[dict[str, torch.Tensor], torch.Generator]:
        seen.append(micro)
        return original(self, micro)

    monkeypatch.setattr(Trainer, "_prepare", recording)
    trainer = make_trainer(
        tmp_path, hr_folder, "trainer.discriminator_steps=2", "trainer.gradient_accumulation_steps=2",
        "trainer.prefetch=false",
    )
    trainer.train(3, progress=False)
    assert optimizer_steps(trainer, "generator") == {3}
    assert optimizer_steps(trainer, "discriminator") == {6}
    assert seen == list(range(12))  # 3 steps x 2 rounds x 2 micro-batches, each batch once


def test_warmup_of_each_optimiser_follows_its_formula(tmp_path: Path, hr_folder: Path) -> None:
    """lr at step k (0-based) = lr * min((k + 1) / warmup_steps, 1), for each optimiser with its own warm-up."""
    trainer = make_trainer(
        tmp_path, hr_folder, "optimizer.lr=0.002", "optimizer.warmup_steps=4",
        "discriminator.lr=0.001", "discriminator.warmup_steps=2",
    )
    for k in range(5):
        trainer.train(k + 1, progress=False)
        assert trainer.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(0.002 * min((k + 1) / 4, 1))
        assert trainer.optimizers["discriminator"].param_groups[0]["lr"] == pytest.approx(0.001 * min((k + 1) / 2, 1))


@pytest.mark.parametrize(("grad_clip", "clips_per_step"), [("null", 0), ("0.5", 2)])
def test_grad_clip_null_clips_nothing(
    grad_clip: str, clips_per_step: int, tmp_path: Path, hr_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer(tmp_path, hr_folder, f"trainer.grad_clip={grad_clip}")
    clipped = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, norm: clipped.append(norm))
    trainer.train(3, progress=False)
    assert len(clipped) == 3 * clips_per_step


@pytest.mark.parametrize(
    ("setting", "message"),
    [("trainer.grad_clip=0", "trainer.grad_clip: 0.0 is outside"), ("trainer.discriminator_steps=0", "trainer.discriminator_steps: 0 is outside"),
     ("trainer.step_order=sideways", "step_order")],
)
def test_bad_step_settings_are_one_clear_line(
    setting: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(TINY_CONFIG), "--output", str(tmp_path), "--set", setting]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("osdsr train: error:")]
    assert len(errors) == 1 and message in errors[0]


def test_the_fp16_loss_scale_is_checkpointed_and_resumed(tmp_path: Path, hr_folder: Path) -> None:
    """fp16 on a GPU trains with a GradScaler (accelerate makes none on a CPU, where fp16 has no autocast):
    the trainer is handed torch's CPU GradScaler, whose scale doubles every step here. A run resumed at
    step 2 continues with the saved scale: the same scale and losses as the uninterrupted run."""

    def with_scaler(trainer: Trainer) -> Trainer:
        trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1)
        return trainer

    common = ("trainer.grad_clip=null", "trainer.checkpoint_every=2")
    straight = with_scaler(make_trainer(tmp_path / "straight", hr_folder, *common))
    straight.train(4, progress=False)
    with_scaler(make_trainer(tmp_path / "split", hr_folder, *common)).train(2, progress=False)
    resumed = with_scaler(make_trainer(tmp_path / "split", hr_folder, *common))
    assert resumed.resume() and resumed.step == 2
    resumed.train(4, progress=False)
    assert straight.accelerator.scaler.get_scale() == 2.0**8  # one update per step: both networks share a scale
    assert resumed.accelerator.scaler.state_dict() == straight.accelerator.scaler.state_dict()
    for a, b in zip(losses(tmp_path / "straight"), losses(tmp_path / "split"), strict=True):
        assert a == pytest.approx(b, abs=1e-6)
