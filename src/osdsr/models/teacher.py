"""A frozen SR network as a teacher: HR targets for a batch of LR crops, for distillation.

Any model of the SR-model contract (``osdsr.models.sr_model``) can teach: the converted Real-ESRGAN,
the ResShift teacher (its stochastic sampler draws from the teacher's own generator), a trained
student. The teacher's parameters are frozen and it runs in eval mode without autograd; the crops
go through ``encode`` -> ``denoise`` -> ``decode`` in one piece (crops are small; no tiling and no
colour fix: the target is the network's own output). ``dtype`` is the compute precision (bf16 halves
the cost on CPUs with bf16 units); targets are always float32 in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch

from osdsr.model_loading import LoadOptions, load_sr_model
from osdsr.models.sr_model import SRModel


class SRTeacher:
    """``teacher(lr)`` -> HR targets ``[B, 3, scale*h, scale*w]`` (float32, [0, 1], no gradient)."""

    def __init__(self, model: SRModel, dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        self.model = model
        self.dtype = dtype
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        model.to(dtype=dtype, memory_format=torch.channels_last)  # oneDNN: ~25% faster on CPU, same results
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> SRTeacher:
        """A teacher from a model folder (or any name ``osdsr.model_loading.load_sr_model`` accepts)."""
        return cls(load_sr_model(name_or_path, LoadOptions(device=device, dtype=dtype)), dtype=dtype, seed=seed)

    @property
    def scale(self) -> int:
        return self.model.scale

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.dim() != 4 or lr.shape[1] != 3 or not lr.is_floating_point():
            raise ValueError(f"teacher input: expected float RGB crops [B, 3, h, w] in [0, 1], got {tuple(lr.shape)} {lr.dtype}")
        multiple = self.model.lr_multiple
        if lr.shape[2] % multiple or lr.shape[3] % multiple:
            raise ValueError(f"teacher input: crop sides must be multiples of {multiple}, got {lr.shape[3]}x{lr.shape[2]}")
        with torch.no_grad():  # not inference_mode: the targets enter the student's autograd graph
            condition = self.model.encode(lr.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last))
            noise = None
            if self.model.noise_channels:
                shape = (lr.shape[0], self.model.noise_channels, *condition.shape[2:])
                noise = torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype)
            hr = self.model.decode(self.model.denoise(condition, noise))
        return hr.float().clamp(0.0, 1.0).to(lr.device)
