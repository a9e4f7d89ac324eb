"""TAD-SR: terms of Eq. 13 through the method, discriminator step hygiene, CLI training and a one-step export."""

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
from torch import nn

from osdsr.cli import main
from osdsr.config import from_dict, read_yaml
from osdsr.methods.resshift_family import TeacherConfig
from osdsr.methods import tadsr
from osdsr.methods.tadsr import ReleaseCompatConfig, TADSRConfig, TADSRMethod, TimeAwareDiscriminatorConfig
from osdsr.models.resshift_unet import SwinUNet
from osdsr.train import step_generator

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO_ROOT / "configs" / "tadsr-tiny.yaml"
FULL_CONFIG = REPO_ROOT / "configs" / "tadsr.yaml"


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def make_method(teacher_folder: Path, compat: ReleaseCompatConfig | None = None, **loss: float) -> TADSRMethod:
    config = from_dict(TADSRConfig, read_yaml(TINY_CONFIG))
    config = dataclasses.replace(
        config,
        teacher=TeacherConfig(str(teacher_folder), steps=4),
        loss=dataclasses.replace(config.loss, **loss),
        release_compat=compat or ReleaseCompatConfig(),
    )
    torch.manual_seed(0)
    return TADSRMethod(config)


def make_batch(seed: int = 0, batch_size: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lr = torch.rand(batch_size, 3, 8, 8, generator=gen)
    return {"lr": lr, "hr": torch.rand(batch_size, 3, 32, 32, generator=gen)}


def first_step_rng() -> torch.Generator:
    return step_generator(0, 0, 0, torch.device("cpu"))


class FixedLogits(nn.Module):
    """A stand-in discriminator: per call (in order), heads of given (logit, number of logits), concatenated."""

    def __init__(self, *calls: list[tuple[float, int]]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls = list(calls)

    def forward(self, features: list[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        heads = [torch.full((t.shape[0], n), v) for v, n in self.calls.pop(0)]
        return torch.cat(heads, dim=1) + self.weight


def test_distill_and_hsd_vanish_when_the_student_equals_the_teacher(teacher_folder: Path) -> None:
    # a one-step teacher target from the teacher's own weights is exactly the fresh student's output
    method = make_method(teacher_folder)
    method.teacher.steps = 1
    terms, _ = generator_step(method, make_batch(), method.generator, method.discriminator, first_step_rng())
    assert terms["distill"].item() == 0.0
    assert terms["hsd"].item() == 0.0
    assert terms["adversarial"].abs().item() > 0


def test_hsd_pulls_a_perturbed_student(teacher_folder: Path) -> None:
    method = make_method(teacher_folder, distill_weight=0.0, adversarial_weight=0.0)
    method.teacher.steps = 1
    with torch.no_grad():
        method.generator.out[-1].bias.add_(0.1)  # the student's z0 now differs from the teacher's
    terms, _ = generator_step(method, make_batch(), method.generator, None, first_step_rng())
    assert set(terms) == {"hsd"}
    assert terms["hsd"].item() > 0
    terms["hsd"].backward()
    assert method.generator.out[-1].bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())


def test_hinge_losses_on_hand_computed_logits(teacher_folder: Path) -> None:
    method = make_method(teacher_folder, distill_weight=0.0, hsd_weight=0.0, adversarial_weight=0.5)
    rng = first_step_rng()
    batch = make_batch()
    fake_for_generator = [(0.5, 3), (-2.5, 1)]
    g_terms, cache = generator_step(method, batch, method.generator, FixedLogits(fake_for_generator), rng)
    # Eq. 11 over all heads' logits (each head weighted by its size): -(3 * 0.5 - 2.5) / 4, times lambda2
    assert g_terms["adversarial"].item() == pytest.approx(0.5 * 0.25)
    real, fake = [(2.0, 1), (0.25, 3)], [(-0.5, 3), (3.0, 1)]
    d_terms = method.discriminator_losses(batch, cache, FixedLogits(real, fake), rng)
    # Eq. 12: mean max(0, 1 - real) + mean max(0, 1 + fake), over all heads' logits
    expected = (0.0 + 3 * 0.75) / 4 + (3 * 0.5 + 4.0) / 4
    assert d_terms["adversarial"].item() == pytest.approx(expected)


def test_switched_off_terms_are_not_computed(teacher_folder: Path) -> None:
    method = make_method(teacher_folder, hsd_weight=0.0, adversarial_weight=0.0)
    assert method.discriminator is None
    terms, outputs = generator_step(method, make_batch(), method.generator, None, first_step_rng())
    assert set(terms) == {"distill"} and not {"t_hsd", "hsd_noise", "t", "noise"} & set(outputs)  # nothing drawn


def test_discriminator_step_reaches_only_the_discriminator(teacher_folder: Path) -> None:
    method = make_method(teacher_folder)
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    rng = first_step_rng()
    batch = make_batch()
    terms, cache = generator_step(method, batch, method.generator, method.discriminator, rng)
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in method.generator.parameters() if p.requires_grad)
    assert all(p.grad is None for p in method.discriminator.parameters())  # frozen for the generator step
    assert all(p.requires_grad for p in method.discriminator.parameters())  # and unfrozen after it
    method.generator.zero_grad(set_to_none=True)
    d_terms = method.discriminator_losses(batch, cache, method.discriminator, rng)
    d_terms["adversarial"].backward()
    assert all(p.grad is None for p in method.generator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.discriminator.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())
    for key, value in method.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key])


def test_bad_hsd_steps_are_refused(teacher_folder: Path) -> None:
    with pytest.raises(ValueError, match="hsd_steps"):
        make_method(teacher_folder, hsd_steps=(2, 9))


def captured_hsd_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple, dict]]:
    calls: list[tuple[tuple, dict]] = []
    hsd = tadsr.hsd_loss
    monkeypatch.setattr(tadsr, "hsd_loss", lambda *a, **k: calls.append((a, k)) or hsd(*a, **k))
    return calls


@pytest.mark.parametrize("uniform", [False, True])
def test_release_compat_noise_and_double_scaling_reach_the_losses(
    teacher_folder: Path, monkeypatch: pytest.MonkeyPatch, uniform: bool
) -> None:
    compat = ReleaseCompatConfig(uniform_noise=uniform, scale_hsd_teacher_input_twice=uniform)
    method = make_method(teacher_folder, compat)
    calls = captured_hsd_calls(monkeypatch)
    _, cache = generator_step(method, make_batch(), method.generator, method.discriminator, first_step_rng())
    (args, kwargs), = calls
    hsd_noise, disc_noise = args[3], cache["noise"]
    assert kwargs["scale_teacher_input_twice"] is uniform
    for noise in (hsd_noise, disc_noise):  # U[0, 1) as released (gaussian_diffusion.py:838, 895), else N(0, I)
        assert bool(noise.min() >= 0 and noise.max() < 1) is uniform


def test_discriminator_steps_bound_its_perturbation(teacher_folder: Path) -> None:
    method = make_method(teacher_folder)
    config = dataclasses.replace(method.config, discriminator=TimeAwareDiscriminatorConfig(steps=(2, 3)))
    method = TADSRMethod(config)
    seen = set()
    for seed in range(8):
        _, cache = generator_step(method, make_batch(batch_size=4), method.generator, method.discriminator,
                                  step_generator(0, seed, 0, torch.device("cpu")))
        seen |= set(cache["t"].tolist())
    assert seen == {1, 2}  # paper steps 2..3 are chain indices 1..2
    with pytest.raises(ValueError, match="discriminator.steps"):
        TADSRMethod(dataclasses.replace(config, discriminator=TimeAwareDiscriminatorConfig(steps=(1, 5))))


@pytest.fixture
def validation_pair(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(4)
    lr_dir, hr_dir = tmp_path / "val_lr", tmp_path / "val_hr"
    lr_dir.mkdir(), hr_dir.mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(lr_dir / "a.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(hr_dir / "a.png")
    return lr_dir, hr_dir


def test_release_compat_validates_the_raw_weights(
    teacher_folder: Path, tmp_path: Path, small_run: Callable[..., list[str]], validation_pair: tuple[Path, Path]
) -> None:
    """Raw-weight validation under an EMA equals validation of a run without EMA (same raw weights)."""
    lr_dir, hr_dir = validation_pair
    common = [f"teacher.path={teacher_folder}", "teacher.steps=4", "trainer.validation.every=2",
              f"trainer.validation.lr_dir={lr_dir}", f"trainer.validation.hr_dir={hr_dir}", "trainer.validation.save_images=0"]
    runs = {
        "raw": ["trainer.ema_decay=0.5", "release_compat.validate_raw_weights=true"],
        "no_ema": ["trainer.ema_decay=0.0"],
    }
    metrics = {}
    for name, extra in runs.items():
        output = tmp_path / name
        assert main(["train", str(TINY_CONFIG), "--output", str(output), "--max-steps", "2",
                     *small_run(*common, *extra)]) == 0
        with (output / "validation.csv").open() as f:
            metrics[name] = list(csv.DictReader(f))
    assert metrics["raw"] == metrics["no_ema"] and len(metrics["raw"]) == 1


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(path)
    return path


def test_trains_through_the_cli_and_exports_a_one_step_model(
    teacher_folder: Path,
    tmp_path: Path,
    small_run: Callable[..., list[str]],
    photo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    output = tmp_path / "run"
    settings = small_run(f"teacher.path={teacher_folder}", "teacher.steps=4", "trainer.batch_size=2")
    assert main(["train", str(TINY_CONFIG), "--output", str(output), "--max-steps", "2", *settings]) == 0
    with (output / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert {"g/distill", "g/hsd", "g/adversarial", "d/adversarial"} <= set(rows[0])
    assert all(math.isfinite(float(v)) for r in rows for v in r.values())

    calls = []
    forward = SwinUNet.forward
    monkeypatch.setattr(SwinUNet, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    out_dir = tmp_path / "out"
    upscale = ["upscale", str(photo), "--model", str(output / "model"), "-o", str(out_dir), "--color-fix", "none"]
    assert main(upscale) == 0
    assert len(calls) == 1  # one denoiser evaluation: one step
    with Image.open(out_dir / "photo.png") as image:
        assert image.size == (96, 64)


def test_full_config_builds_on_meta() -> None:
    from osdsr.methods.tadsr import build_discriminator
    from osdsr.models.resshift_unet import SwinUNetConfig

    config = from_dict(TADSRConfig, read_yaml(FULL_CONFIG))
    assert (config.loss.hsd_weight, config.loss.adversarial_weight, config.trainer.max_steps) == (1.0, 0.02, 30_000)
    # the release's schedule (TAD-SR.yaml, trainer.py): 5k warm-up of G only, D first, no clipping, t in 1..14
    assert (config.optimizer.warmup_steps, config.discriminator.warmup_steps) == (5000, 0)
    assert (config.trainer.step_order, config.trainer.discriminator_steps, config.trainer.grad_clip) == (
        "discriminator_first", 1, None)
    assert config.discriminator.steps == (1, 14) and config.release_compat == ReleaseCompatConfig()
    with torch.device("meta"):
        disc = build_discriminator(SwinUNetConfig(), config.discriminator)
    assert len(disc.heads) == 5 and disc.heads[0].embed_dim == 160  # the release: embed_dim = model_channels
    assert 2e7 < sum(p.numel() for p in disc.parameters()) < 2.2e7  # the release's ProjectedDiscriminator: 20.8M
