"""Adversarial losses on discriminator logits (raw scores, before any sigmoid).

Each function takes the logits of one discriminator as a tensor of any shape (per image, per patch),
or a sequence of such tensors, one per discriminator head: the loss of each head is its mean over all
elements, and the heads' losses are summed (the sum over k in TAD-SR Eq. 11-12).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Logits = torch.Tensor | Sequence[torch.Tensor]
GeneratorLoss = Callable[[Logits], torch.Tensor]
DiscriminatorLoss = Callable[[Logits, Logits], torch.Tensor]


def _sum_of_head_means(logits: Logits, per_element: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    heads = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    if not heads:
        raise ValueError("adversarial loss: got an empty sequence of discriminator heads")
    return torch.stack([per_element(head).mean() for head in heads]).sum()


def nonsaturating_generator_loss(fake_logits: Logits) -> torch.Tensor:
    """``-E[log D(fake)]`` with ``D = sigmoid(logit)``, i.e. ``E[softplus(-logit)]`` (D3SR Eq. 2)."""
    return _sum_of_head_means(fake_logits, lambda logit: F.softplus(-logit))  # -log sigmoid(l) = softplus(-l)


def nonsaturating_discriminator_loss(real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
    """``-E[log(1 - D(fake))] - E[log D(real)]`` = ``E[softplus(fake)] + E[softplus(-real)]`` (D3SR Eq. 3)."""
    fake_term = _sum_of_head_means(fake_logits, F.softplus)  # -log(1 - sigmoid(l)) = softplus(l)
    real_term = _sum_of_head_means(real_logits, lambda logit: F.softplus(-logit))  # -log sigmoid(l)
    return fake_term + real_term


def hinge_generator_loss(fake_logits: Logits) -> torch.Tensor:
    """``-E[D(fake)]`` (TAD-SR Eq. 11)."""
    return _sum_of_head_means(fake_logits, torch.neg)


def hinge_discriminator_loss(real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
    """``E[max(0, 1 + D(fake))] + E[max(0, 1 - D(real))]`` (TAD-SR Eq. 12)."""
    fake_term = _sum_of_head_means(fake_logits, lambda logit: F.relu(1.0 + logit))
    real_term = _sum_of_head_means(real_logits, lambda logit: F.relu(1.0 - logit))
    return fake_term + real_term


# name -> (generator loss, discriminator loss)
ADVERSARIAL_LOSSES: dict[str, tuple[GeneratorLoss, DiscriminatorLoss]] = {
    "nonsaturating": (nonsaturating_generator_loss, nonsaturating_discriminator_loss),
    "hinge": (hinge_generator_loss, hinge_discriminator_loss),
}
