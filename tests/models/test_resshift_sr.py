"""ResShift-family SR models: the SR-model contract, model folders, complexity parts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from osdsr.model_loading import LoadOptions
from osdsr.models.resshift_sr import (
    ResShiftModelConfig,
    ResShiftSR,
    build_resshift_sr_model,
    load_resshift_sr_model,
    resshift_complexity_parts,
    save_resshift_model,
)
from osdsr.models.resshift_unet import SwinUNetConfig
from osdsr.models.sr_model import SRModel


def randomised(model: ResShiftSR) -> ResShiftSR:
    """Random weights everywhere (the zero-initialised convolutions would hide the inputs)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model.eval()


def run(model: ResShiftSR, lr: torch.Tensor, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(lr.shape[0], model.noise_channels, *lr.shape[2:], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.decode(model.denoise(model.encode(lr), noise))


def test_teacher_follows_the_sr_model_contract() -> None:
    model = randomised(build_resshift_sr_model(ResShiftModelConfig.tiny()))
    assert isinstance(model, SRModel)
    assert (model.scale, model.latent_stride, model.lr_multiple) == (4, 4, 16)
    assert model.noise_channels == 3 * 15  # prior noise + one draw for each of the 14 noisy steps
    lr = torch.rand(1, 3, 16, 32)
    condition = model.encode(lr)
    assert condition.shape == (1, 6, 16, 32)  # [y | LR] on the LR grid
    torch.testing.assert_close(condition[:, 3:], lr * 2 - 1)  # the LR image in [-1, 1] rides along
    hr = run(model, lr)
    assert hr.shape == (1, 3, 64, 128) and hr.min() >= 0 and hr.max() <= 1
    torch.testing.assert_close(run(model, lr, seed=0), hr)
    assert not torch.allclose(run(model, lr, seed=1), hr)


def test_steps_respace_the_teacher_and_students_take_one_step() -> None:
    teacher = build_resshift_sr_model(ResShiftModelConfig.tiny(), steps=5)
    assert teacher.schedule.model_timesteps == [0, 3, 6, 9, 12] and teacher.noise_channels == 15
    deterministic = build_resshift_sr_model(ResShiftModelConfig.tiny(), deterministic=True)
    assert deterministic.noise_channels == 3
    for steps in (None, 15):  # one-step students ignore --steps, as osdsr upscale documents
        student = build_resshift_sr_model(ResShiftModelConfig.tiny("tadsr"), steps=steps)
        assert student.schedule.model_timesteps == [14] and student.noise_channels == 3


def test_student_output_is_one_denoiser_evaluation_from_the_prior() -> None:
    model = randomised(build_resshift_sr_model(ResShiftModelConfig.tiny("sinsr")))
    lr = torch.rand(1, 3, 16, 16)
    noise = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        condition = model.encode(lr)
        y, lq = condition[:, :3], condition[:, 3:]
        z_T = y + 2.0 * 0.99 * noise
        expected = model.denoiser(z_T / (4 * 0.9801 + 1) ** 0.5, torch.tensor([14]), lq)
        torch.testing.assert_close(model.denoise(condition, noise), expected)


def test_pixel_unshuffle_variant() -> None:
    denoiser = dataclasses.replace(SwinUNetConfig.tiny(), latent_channels=48)
    config = ResShiftModelConfig(model_type="tddsr", autoencoder="pixel_unshuffle", denoiser=denoiser)
    model = build_resshift_sr_model(config)
    assert model.noise_channels == 48
    hr = run(randomised(model), torch.rand(1, 3, 16, 16))
    assert hr.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="latent channels"):
        ResShiftModelConfig(autoencoder="pixel_unshuffle", denoiser=SwinUNetConfig.tiny())


def test_folder_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = randomised(build_resshift_sr_model(ResShiftModelConfig.tiny()))
    save_resshift_model(tmp_path / "m", model)
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_resshift_model(tmp_path / "m", model)
    loaded = load_resshift_sr_model(tmp_path / "m", LoadOptions(steps=4))
    assert loaded.schedule.num_timesteps == 4 and loaded.config == model.config
    reference = build_resshift_sr_model(ResShiftModelConfig.tiny(), steps=4)
    reference.load_state_dict(model.state_dict())
    lr = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(run(loaded, lr), run(reference.eval(), lr))


def test_loading_refuses_missing_and_unexpected_weights(tmp_path: Path) -> None:
    model = build_resshift_sr_model(ResShiftModelConfig.tiny())
    save_resshift_model(tmp_path / "m", model)
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(str(weights))
    state["denoiser.extra.weight"] = state.pop("denoiser.out.2.weight")
    save_file(state, str(weights))
    expected = r"1 missing key\(s\): denoiser\.out\.2\.weight.*1 unexpected key\(s\): denoiser\.extra"
    with pytest.raises(ValueError, match=expected):
        load_resshift_sr_model(tmp_path / "m", LoadOptions())


def test_complexity_parts_are_the_full_size_stages_on_meta() -> None:
    with pytest.raises(ValueError, match="multiples of 256"):
        resshift_complexity_parts(320)
    parts = resshift_complexity_parts(512, "sinsr")  # one denoiser evaluation: meta runs are slow in Python
    assert list(parts) == ["encoder", "denoiser", "decoder"]
    params = {name: sum(p.numel() for p in module.parameters()) for name, (module, _) in parts.items()}
    assert params["denoiser"] == 118_593_583
    assert params["encoder"] + params["decoder"] == 55_322_782
    shapes = {name: module(*inputs()).shape for name, (module, inputs) in parts.items()}
    assert shapes == {"encoder": (1, 6, 128, 128), "denoiser": (1, 3, 128, 128), "decoder": (1, 3, 512, 512)}
