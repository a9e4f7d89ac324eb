"""The ResShift-family student API (teacher, student, targets, export) and SinSR's loss terms and CLI."""

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
from osdsr.config import read_yaml
from osdsr.data.image_io import load_image
from osdsr.inference import upscale_image
from osdsr.methods.resshift_family import (
    TeacherConfig,
    distillation_chain,
    encode_pair,
    export_student,
    load_teacher,
    student_from_teacher,
    student_sr_model,
    student_z0,
    teacher_target,
)
from osdsr.methods.sinsr import SinSRConfig, SinSRLossConfig, SinSRMethod
from osdsr.model_loading import load_sr_model
from osdsr.models.resshift_sr import ResShiftModelConfig, build_resshift_sr_model, save_resshift_model
from osdsr.models.resshift_unet import SwinUNetConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO_ROOT / "configs" / "sinsr-tiny.yaml"


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ResShift teacher (pixel-unshuffle space; every weight random, none zero)."""
    config = ResShiftModelConfig(
        autoencoder="pixel_unshuffle", denoiser=dataclasses.replace(SwinUNetConfig.tiny(), latent_channels=48)
    )
    model = build_resshift_sr_model(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    folder = tmp_path_factory.mktemp("teacher")
    save_resshift_model(folder, model)
    return folder


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"lr": torch.rand(2, 3, 16, 16, generator=generator), "hr": torch.rand(2, 3, 64, 64, generator=generator)}


def test_student_starts_as_the_teacher_and_trains_alone(teacher_folder: Path) -> None:
    teacher = load_teacher(TeacherConfig(str(teacher_folder)))
    student = student_from_teacher(teacher)
    assert student is not teacher.denoiser and student.training and not teacher.training
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    y, z0, lr_cond = encode_pair(teacher, **batch())
    assert y.shape == z0.shape == (2, 48, 16, 16) and lr_cond.shape == (2, 3, 16, 16)
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    one_step_teacher = teacher_target(teacher, y, lr_cond, noise, steps=1)
    z_student = student_z0(student, teacher.schedule, y, lr_cond, noise)
    torch.testing.assert_close(z_student, one_step_teacher, rtol=0, atol=0)
    teacher.train()  # the teacher stays in eval mode whatever the trainer asks
    assert not teacher.training


def test_teacher_target_is_deterministic_and_starts_from_z_T(teacher_folder: Path) -> None:
    teacher = load_teacher(TeacherConfig(str(teacher_folder), steps=15))
    y, _, lr_cond = encode_pair(teacher, **batch())
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    target = teacher_target(teacher, y, lr_cond, noise)
    torch.testing.assert_close(teacher_target(teacher, y, lr_cond, noise.clone()), target, rtol=0, atol=0)
    assert not target.requires_grad
    assert not torch.allclose(teacher_target(teacher, y, lr_cond, -noise), target)
    assert not torch.allclose(teacher_target(teacher, y, lr_cond, noise, steps=4), target)
    short = distillation_chain(teacher.schedule, 4)
    assert short.model_timesteps == [0, 5, 9, 14]  # evenly spaced, always from T-1 (the student's z_T)
    assert distillation_chain(teacher.schedule, 15) is teacher.schedule


def test_load_teacher_names_what_is_wrong(teacher_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="teacher.path is not set"):
        load_teacher(TeacherConfig())
    with pytest.raises(FileNotFoundError, match="no ResShift model folder"):
        load_teacher(TeacherConfig(str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="T = 15"):
        load_teacher(TeacherConfig(str(teacher_folder), steps=16))
    teacher = load_teacher(TeacherConfig(str(teacher_folder)))
    export_student(student_from_teacher(teacher), teacher, tmp_path / "student", "sinsr")
    with pytest.raises(ValueError, match="one-step 'sinsr' model"):
        load_teacher(TeacherConfig(str(tmp_path / "student")))


def test_exported_student_round_trips_and_upscales_in_one_step(teacher_folder: Path, tmp_path: Path) -> None:
    teacher = load_teacher(TeacherConfig(str(teacher_folder)))
    student = student_from_teacher(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01)  # a student that has moved away from the teacher
    folder = export_student(student, teacher, tmp_path / "student", "tadsr")
    assert student.training  # exporting leaves a training student training
    assert read_yaml(folder / "config.json")["model_type"] == "tadsr"
    trained = student_sr_model(student, teacher, "tadsr")
    loaded = load_sr_model(folder)
    assert loaded.schedule.num_timesteps == 1 and loaded.deterministic
    reloaded_state = loaded.state_dict()
    for name, value in trained.state_dict().items():
        assert torch.equal(reloaded_state[name], value), name
    pixels = (np.random.default_rng(0).random((16, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "lr.png")
    image = load_image(tmp_path / "lr.png")
    in_memory = upscale_image(trained, image, generator=torch.Generator().manual_seed(7)).pixels
    reloaded = upscale_image(loaded, image, generator=torch.Generator().manual_seed(7)).pixels
    np.testing.assert_allclose(reloaded, in_memory, rtol=0, atol=1e-6)  # same weights; float summation order only
    outputs = []
    for run in ("a", "b"):
        assert main(["upscale", str(tmp_path / "lr.png"), "--model", str(folder), "-o", str(tmp_path / run)]) == 0
        outputs.append((tmp_path / run / "lr.png").read_bytes())
    assert outputs[0] == outputs[1]
    assert Image.open(tmp_path / "a" / "lr.png").size == (96, 64)


def test_sinsr_terms_follow_their_weights(teacher_folder: Path) -> None:
    config = SinSRConfig(teacher=TeacherConfig(str(teacher_folder), steps=1))
    method = SinSRMethod(config)
    terms, _ = generator_step(method, batch(), method.generator, None, torch.Generator().manual_seed(0))
    assert set(terms) == {"distill", "inverse", "gt"}
    assert terms["distill"].item() == 0.0  # a one-step teacher target equals the fresh student
    assert terms["inverse"].item() > 0 and terms["gt"].item() > 0
    only_gt = SinSRMethod(dataclasses.replace(config, loss=SinSRLossConfig(distill_weight=0, inverse_weight=0)))
    gt_terms, _ = generator_step(only_gt, batch(), only_gt.generator, None, torch.Generator().manual_seed(0))
    assert set(gt_terms) == {"gt"}
    torch.testing.assert_close(gt_terms["gt"], terms["gt"])
    with pytest.raises(ValueError, match="at least one positive"):
        SinSRLossConfig(distill_weight=0, inverse_weight=0, gt_weight=0)


def test_sinsr_inverse_term_maps_the_teacher_output_back_to_z_T(teacher_folder: Path) -> None:
    method = SinSRMethod(SinSRConfig(teacher=TeacherConfig(str(teacher_folder), steps=2)))
    data = batch()
    terms, _ = generator_step(method, data, method.generator, None, torch.Generator().manual_seed(4))
    rng = torch.Generator().manual_seed(4)
    y, _, lr_cond, noise = method.encode_batch(data, rng)
    schedule = method.teacher.schedule
    z_teacher = teacher_target(method.teacher, y, lr_cond, noise)
    step_0 = torch.zeros(2, dtype=torch.long)  # the inverse direction: step index 0, input scaled as at T-1
    z_T_pred = method.generator(schedule.scale_input(z_teacher, 14), step_0, lr_cond)
    expected = torch.nn.functional.mse_loss(z_T_pred, schedule.prior_sample(y, noise))
    torch.testing.assert_close(terms["inverse"], expected)


def test_sinsr_gt_term_trains_only_through_the_forward_step(teacher_folder: Path) -> None:
    config = SinSRConfig(
        teacher=TeacherConfig(str(teacher_folder), steps=1), loss=SinSRLossConfig(distill_weight=0, inverse_weight=0)
    )
    method = SinSRMethod(config)
    calls: list[bool] = []
    student = method.generator

    def recording(z: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        calls.append(torch.is_grad_enabled())
        return student(z, t, lq)

    terms, _ = generator_step(method, batch(), recording, None, torch.Generator().manual_seed(0))
    assert calls == [False, True]  # sg(f(z0_hr, 0)), then f(., T-1) with gradients
    terms["gt"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_train_sinsr_tiny_then_upscale_in_one_step(
    teacher_folder: Path, tmp_path: Path, small_run: Callable[..., list[str]]
) -> None:
    run = tmp_path / "run"
    settings = small_run(f"teacher.path={teacher_folder}", "teacher.steps=3", "data.crop_size=64")
    assert main(["train", str(TINY_CONFIG), "--output", str(run), "--max-steps", "2", *settings]) == 0
    with (run / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["step"] for row in rows] == ["1", "2"] and {"g/distill", "g/inverse", "g/gt"} <= set(rows[0])
    assert read_yaml(run / "model" / "config.json")["model_type"] == "sinsr"
    pixels = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "lr.png")
    out = tmp_path / "out"
    assert main(["upscale", str(tmp_path / "lr.png"), "--model", str(run / "model"), "-o", str(out)]) == 0
    assert Image.open(out / "lr.png").size == (64, 64)
