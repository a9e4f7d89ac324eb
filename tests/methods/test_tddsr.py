"""TDDSR: every path switch trains through ``osdsr train``; the loss forms of Eq. 7-10; step hygiene; export."""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from method_step import generator_step
from PIL import Image
from resshift_teachers import save_tiny_teacher

from osdsr.cli import main
from osdsr.config import from_dict, read_yaml
from osdsr.methods.resshift_family import TeacherConfig
from osdsr.methods.tddsr import TDDSRConfig, TDDSRMethod, discriminator_cross_entropy, expected_fakeness
from osdsr.models.feature_discriminator import FeatureDiscriminator, FeatureDiscriminatorConfig
from osdsr.models.resshift_unet import SwinUNet
from osdsr.train import step_generator

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO_ROOT / "configs" / "tddsr-tiny.yaml"
FULL_CONFIG = REPO_ROOT / "configs" / "tddsr.yaml"
SMALL_DISCRIMINATORS = (
    "hr_discriminator.channels=[8, 16]",
    "lr_discriminator.channels=[8, 16]",
    "downsampler.channels=8",
)


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def make_method(teacher_folder: Path, train_features: bool = True, **loss: float) -> TDDSRMethod:
    config = from_dict(TDDSRConfig, read_yaml(TINY_CONFIG))
    small = FeatureDiscriminatorConfig(channels=(8, 16), head_channels=8, train_features=train_features)
    config = dataclasses.replace(
        config,
        teacher=TeacherConfig(str(teacher_folder), steps=4),
        loss=dataclasses.replace(config.loss, **loss),
        hr_discriminator=small,
        lr_discriminator=small,
    )
    torch.manual_seed(0)
    return TDDSRMethod(config)


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"lr": torch.rand(2, 3, 8, 8, generator=gen), "hr": torch.rand(2, 3, 32, 32, generator=gen)}


def read_log(output: Path) -> list[dict[str, float]]:
    with (output / "log.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_loss_forms_on_hand_computed_logits() -> None:
    real = [torch.tensor([[2.0]]), torch.tensor([[0.0]])]
    fake = [torch.tensor([[-1.0]]), torch.tensor([[0.5]])]
    sig = torch.sigmoid
    # Eq. 8 / 10: E[1 - D(fake)], D = sigmoid(logit), heads averaged
    assert expected_fakeness(fake).item() == pytest.approx(((1 - sig(fake[0])) + (1 - sig(fake[1]))).item() / 2)
    # Eq. 7 / 9 (cross-entropy form): -log D(real) - log(1 - D(fake)), heads averaged
    per_head = [-torch.log(sig(r)) - torch.log(1 - sig(f)) for r, f in zip(real, fake)]
    assert discriminator_cross_entropy(real, fake).item() == pytest.approx(sum(per_head).item() / 2, rel=1e-6)


@pytest.mark.parametrize(
    ("hr_weight", "lr_weight", "train_features"),
    [(0.02, 0.02, True), (0.02, 0.0, True), (0.0, 0.02, True), (0.0, 0.0, True), (0.02, 0.02, False)],
    ids=["distill+hr+lr", "distill+hr", "distill+lr", "distill", "frozen-feature-networks"],
)
def test_path_switches_train_through_the_cli(
    hr_weight: float,
    lr_weight: float,
    train_features: bool,
    teacher_folder: Path,
    tmp_path: Path,
    small_run: Callable[..., list[str]],
) -> None:
    settings = small_run(
        f"teacher.path={teacher_folder}",
        "teacher.steps=4",
        f"loss.hr_adversarial_weight={hr_weight}",
        f"loss.lr_adversarial_weight={lr_weight}",
        f"hr_discriminator.train_features={str(train_features).lower()}",
        f"lr_discriminator.train_features={str(train_features).lower()}",
        *SMALL_DISCRIMINATORS,
    )
    assert main(["train", str(TINY_CONFIG), "--output", str(tmp_path), "--max-steps", "2", *settings]) == 0
    rows = read_log(tmp_path)
    assert [row["step"] for row in rows] == [1, 2]
    assert all(math.isfinite(v) for row in rows for v in row.values())
    assert "g/distill" in rows[0]
    for path, weight in (("hr", hr_weight), ("lr", lr_weight)):
        assert (f"g/{path}_adversarial" in rows[0]) == (weight > 0)
        assert (f"d/{path}_adversarial" in rows[0]) == (weight > 0)
    assert (tmp_path / "model" / "model.safetensors").is_file()

    state = torch.load(next((tmp_path / "checkpoints").iterdir()), map_location="cpu", weights_only=True)
    assert any(k.startswith("downsampler.") for k in state["generator"]) == (lr_weight > 0)


def test_feature_network_moves_only_when_trained(teacher_folder: Path) -> None:
    for train_features in (True, False):
        method = make_method(teacher_folder, train_features=train_features)
        before = {k: v.clone() for k, v in method.discriminator.hr.features.state_dict().items()}
        optimizers = method.optimizers(method.generator, method.discriminator)
        rng = step_generator(0, 0, 0, torch.device("cpu"))
        batch = make_batch()
        _, cache = generator_step(method, batch, method.generator, method.discriminator, rng)
        d_loss = sum(method.discriminator_losses(batch, cache, method.discriminator, rng).values())
        d_loss.backward()
        optimizers["discriminator"].step()
        after = method.discriminator.hr.features.state_dict()
        moved = any(not torch.equal(before[k], after[k]) for k in before)
        assert moved == train_features
        heads = method.discriminator.hr.heads
        assert all(p.grad is not None for p in heads.parameters())  # the heads learn either way


def test_generator_step_trains_student_and_downsampler_not_discriminators(teacher_folder: Path) -> None:
    method = make_method(teacher_folder)
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    rng = step_generator(0, 0, 0, torch.device("cpu"))
    batch = make_batch()
    terms, cache = generator_step(method, batch, method.generator, method.discriminator, rng)
    assert set(terms) == {"distill", "hr_adversarial", "lr_adversarial"}
    terms["lr_adversarial"].backward(retain_graph=True)  # Eq. 10 reaches the downsampler and the student
    assert all(p.grad is not None for p in method.generator.downsampler.parameters())
    assert method.generator.student.out[-1].weight.grad.abs().sum() > 0
    sum(terms.values()).backward()
    assert all(p.grad is None for p in method.discriminator.parameters())
    assert all(p.requires_grad for p in method.discriminator.hr.heads.parameters())

    method.generator.zero_grad(set_to_none=True)
    d_terms = method.discriminator_losses(batch, cache, method.discriminator, rng)
    sum(d_terms.values()).backward()
    assert all(p.grad is None for p in method.generator.parameters())  # student and downsampler untouched
    assert all(p.grad is not None for p in method.discriminator.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())
    for key, value in method.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key])


def test_exported_student_upscales_in_one_step(
    teacher_folder: Path, tmp_path: Path, small_run: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    settings = small_run(f"teacher.path={teacher_folder}", "teacher.steps=4", *SMALL_DISCRIMINATORS)
    assert main(["train", str(TINY_CONFIG), "--output", str(run), "--max-steps", "1", *settings]) == 0
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (16, 8, 3), dtype=np.uint8)).save(photo)
    calls = []
    forward = SwinUNet.forward
    monkeypatch.setattr(SwinUNet, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    out_dir = tmp_path / "out"
    assert main(["upscale", str(photo), "--model", str(run / "model"), "-o", str(out_dir), "--color-fix", "none"]) == 0
    assert len(calls) == 1
    with Image.open(out_dir / "photo.png") as image:
        assert image.size == (32, 64)


def test_full_config_builds_on_meta() -> None:
    from osdsr.models.downsampler import LearnableDownsampler

    config = from_dict(TDDSRConfig, read_yaml(FULL_CONFIG))
    assert (config.optimizer.lr, config.trainer.max_steps) == (5e-5, 20_000)
    with torch.device("meta"):
        hr, lr = FeatureDiscriminator(config.hr_discriminator), FeatureDiscriminator(config.lr_discriminator)
        down = LearnableDownsampler(4, config.downsampler.channels)
    for module in (hr, lr, down):
        assert sum(p.numel() for p in module.parameters()) > 0
