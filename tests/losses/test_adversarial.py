"""Adversarial losses (D3SR Eq. 2-3, TAD-SR Eq. 11-12) on hand-computed logits."""

from __future__ import annotations

import math

import pytest
import torch

from osdsr.losses.adversarial import (
    ADVERSARIAL_LOSSES,
    hinge_discriminator_loss,
    hinge_generator_loss,
    nonsaturating_discriminator_loss,
    nonsaturating_generator_loss,
)


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_nonsaturating_generator_by_hand() -> None:
    # -log sigmoid(0) = log 2; -log sigmoid(2) = log(1 + e^-2); mean of the two
    loss = nonsaturating_generator_loss(torch.tensor([0.0, 2.0]))
    assert loss.item() == pytest.approx((math.log(2.0) + math.log1p(math.exp(-2.0))) / 2, abs=1e-6)


def test_nonsaturating_generator_is_minus_log_d() -> None:
    logits = torch.tensor([[-1.5, 0.3], [2.0, -0.2]])
    assert torch.allclose(nonsaturating_generator_loss(logits), -torch.log(torch.sigmoid(logits)).mean())


def test_nonsaturating_generator_is_stable_and_has_the_hand_gradient() -> None:
    # naive -log(sigmoid(-200)) is inf in float32; softplus(200) = 200
    assert nonsaturating_generator_loss(torch.tensor([-200.0])).item() == pytest.approx(200.0)
    logit = torch.tensor([0.0], requires_grad=True)
    nonsaturating_generator_loss(logit).backward()
    assert logit.grad.item() == pytest.approx(-0.5)  # d/dl softplus(-l) = -sigmoid(-l)


def test_nonsaturating_discriminator_by_hand() -> None:
    # fake -1: -log(1 - sigmoid(-1)) = log(1 + e^-1); real 3: -log sigmoid(3) = log(1 + e^-3)
    loss = nonsaturating_discriminator_loss(torch.tensor([3.0]), torch.tensor([-1.0]))
    assert loss.item() == pytest.approx(_softplus(-1.0) + _softplus(-3.0), abs=1e-6)
    real, fake = torch.tensor([0.4, -0.9]), torch.tensor([1.1, -0.3])
    expected = -torch.log(1 - torch.sigmoid(fake)).mean() - torch.log(torch.sigmoid(real)).mean()
    assert torch.allclose(nonsaturating_discriminator_loss(real, fake), expected)


def test_hinge_generator_by_hand() -> None:
    assert hinge_generator_loss(torch.tensor([0.5, -2.0])).item() == pytest.approx(0.75)


def test_hinge_discriminator_by_hand() -> None:
    # real [0.5, 2]: relu(1 - 0.5) = 0.5, relu(1 - 2) = 0 -> 0.25
    # fake [0.5, -2]: relu(1 + 0.5) = 1.5, relu(1 - 2) = 0 -> 0.75
    loss = hinge_discriminator_loss(torch.tensor([0.5, 2.0]), torch.tensor([0.5, -2.0]))
    assert loss.item() == pytest.approx(1.0)


def test_heads_are_summed_over_k() -> None:
    # TAD-SR Eq. 11: -(mean of head 1 + mean of head 2) = -(2 + 0.5)
    heads = [torch.tensor([1.0, 3.0]), torch.tensor([[0.5]])]
    assert hinge_generator_loss(heads).item() == pytest.approx(-2.5)
    # Eq. 12 per head: head 1 real 2 -> 0, fake -0.5 -> 0.5; head 2 real 0 -> 1, fake 1 -> 2
    real = [torch.tensor([2.0]), torch.tensor([0.0])]
    fake = [torch.tensor([-0.5]), torch.tensor([1.0])]
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(3.5)
    assert nonsaturating_generator_loss(heads).item() == pytest.approx(
        (_softplus(-1.0) + _softplus(-3.0)) / 2 + _softplus(-0.5), abs=1e-6
    )
    with pytest.raises(ValueError, match="empty"):
        hinge_generator_loss([])


def test_registry_pairs_generator_and_discriminator_losses() -> None:
    assert ADVERSARIAL_LOSSES == {
        "nonsaturating": (nonsaturating_generator_loss, nonsaturating_discriminator_loss),
        "hinge": (hinge_generator_loss, hinge_discriminator_loss),
    }
