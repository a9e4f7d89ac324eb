"""A method's generator step outside the trainer, the way ``osdsr.train.Trainer`` runs it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from osdsr.train import Outputs, gradients_off


def generator_step(
    method: Any, batch: dict[str, torch.Tensor], generator: nn.Module, discriminator: nn.Module | None, rng: torch.Generator
) -> tuple[dict[str, torch.Tensor], Outputs]:
    """``generator_outputs`` then ``generator_losses`` (the discriminator's weights frozen): the loss terms
    and the detached outputs that ``discriminator_losses`` takes."""
    outputs = method.generator_outputs(batch, generator, rng)
    frozen = [p for p in discriminator.parameters() if p.requires_grad] if discriminator is not None else []
    with gradients_off(frozen):
        terms = method.generator_losses(batch, outputs, discriminator, rng)
    return terms, {k: v.detach() for k, v in outputs.items()}
