"""The frozen SR teacher: targets of a Real-ESRGAN net and of a stochastic ResShift teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from osdsr.models.realesrgan import RealESRGANConfig, RealESRGANSR, save_realesrgan_model
from osdsr.models.resshift_sr import ResShiftModelConfig, build_resshift_sr_model
from osdsr.models.teacher import SRTeacher
from realesrgan_files import randomise


def _lr(batch: int = 2, side: int = 8) -> torch.Tensor:
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(3))


def test_realesrgan_teacher_gives_its_network_output_frozen(tmp_path: Path) -> None:
    model = RealESRGANSR(RealESRGANConfig.tiny("rrdbnet"))
    randomise(model.network)
    save_realesrgan_model(tmp_path / "teacher", model)
    teacher = SRTeacher.from_pretrained(tmp_path / "teacher")
    lr = _lr()
    targets = teacher(lr)
    with torch.no_grad():
        expected = model.network(lr).clamp(0, 1)
    torch.testing.assert_close(targets, expected)
    assert teacher.scale == 4 and targets.dtype == torch.float32 and not targets.requires_grad
    assert not any(p.requires_grad for p in teacher.model.parameters()) and not teacher.model.training
    student = torch.nn.Conv2d(3, 3 * 16, 3, padding=1)
    loss = F.mse_loss(F.pixel_shuffle(student(lr), 4), targets)  # the targets can enter a student's graph
    loss.backward()
    assert student.weight.grad is not None
    bf16 = SRTeacher.from_pretrained(tmp_path / "teacher", dtype=torch.bfloat16)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(bf16(lr), expected, atol=0.1, rtol=0)


def test_stochastic_teacher_draws_from_its_own_seed() -> None:
    model = build_resshift_sr_model(ResShiftModelConfig.tiny(), steps=2)
    first, again, other = (SRTeacher(model, seed=s)(_lr(1, 16)) for s in (0, 0, 1))
    assert first.shape == (1, 3, 64, 64)
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)


def test_bad_crops_are_refused() -> None:
    teacher = SRTeacher(RealESRGANSR(RealESRGANConfig.tiny("srvgg_compact")))
    with pytest.raises(ValueError, match="expected float RGB crops"):
        teacher(torch.zeros(1, 1, 8, 8))
    resshift = SRTeacher(build_resshift_sr_model(ResShiftModelConfig.tiny(), steps=1))
    with pytest.raises(ValueError, match="multiples of 16"):
        resshift(_lr(1, 8))
