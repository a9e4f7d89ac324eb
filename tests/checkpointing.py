"""Gradient checkpointing checks shared by the model tests: fewer tensors kept for backward, same gradients."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def saved_tensors_and_gradients(module: nn.Module, loss_of: Callable[[], torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
    """How many tensors the forward of ``loss_of()`` keeps for backward, and the gradients it gives ``module``."""
    count = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        return tensor

    module.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_of()
    loss.backward()
    return count, {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def assert_checkpointing_keeps_less_and_same_gradients(
    module: nn.Module, enable: Callable[[], None], loss_of: Callable[[], torch.Tensor]
) -> None:
    """Turning checkpointing on (``enable``) keeps fewer tensors for backward and changes no gradient."""
    kept, gradients = saved_tensors_and_gradients(module, loss_of)
    enable()
    kept_checkpointed, gradients_checkpointed = saved_tensors_and_gradients(module, loss_of)
    assert gradients and gradients.keys() == gradients_checkpointed.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradients_checkpointed[name], gradient, rtol=1e-4, atol=1e-6, msg=name)
    assert kept_checkpointed < kept / 2, (kept_checkpointed, kept)
