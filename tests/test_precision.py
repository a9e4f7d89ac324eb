"""Float64 tables where the device has float64, float32 on mps."""

from __future__ import annotations

import pytest
import torch

from osdsr.diffusion.ddpm import DDPMSchedule
from osdsr.precision import exact_dtype


@pytest.mark.parametrize(("device", "dtype"), [("cpu", torch.float64), ("cuda", torch.float64), ("mps", torch.float32),
                                               (torch.device("mps", 0), torch.float32), ("meta", torch.float64)])
def test_exact_dtype_is_float64_except_on_mps(device: str | torch.device, dtype: torch.dtype) -> None:
    assert exact_dtype(device) is dtype


def test_schedule_tables_reach_a_device_in_its_exact_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the CPU posing as a device without float64, the SD schedule's float64 table is cast before it is
    moved, and noising gives the float32 result of a float64 table to float32 rounding."""
    from osdsr.diffusion.ddpm import SD21_SCHEDULER_CONFIG

    schedule = DDPMSchedule(SD21_SCHEDULER_CONFIG)
    z, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([0, 500])
    exact = schedule.add_noise(z, t, noise)
    moved: list[torch.dtype] = []
    original = torch.Tensor.to

    def recording_to(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if self.dtype == torch.float64 and any(isinstance(a, torch.device) for a in args):
            moved.append(self.dtype)
        return original(self, *args, **kwargs)

    monkeypatch.setattr("osdsr.diffusion.ddpm.exact_dtype", lambda device: torch.float32)
    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    without_float64 = schedule.add_noise(z, t, noise)
    assert moved == []  # no float64 tensor was moved to the device
    torch.testing.assert_close(without_float64, exact)
