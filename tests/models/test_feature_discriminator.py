"""TDDSR's StyleGAN-T-style discriminator: one head per feature stage; the feature network trained or frozen."""

from __future__ import annotations

import pytest
import torch

from osdsr.models.feature_discriminator import FeatureDiscriminator, FeatureDiscriminatorConfig


def test_one_logit_map_per_stage() -> None:
    disc = FeatureDiscriminator(FeatureDiscriminatorConfig.tiny())
    logits = disc(torch.rand(2, 3, 32, 24) * 2 - 1)
    assert [tuple(l.shape) for l in logits] == [(2, 1, 16, 12), (2, 1, 8, 6), (2, 1, 4, 3)]


@pytest.mark.parametrize("train_features", [True, False])
def test_feature_network_trained_or_frozen(train_features: bool) -> None:
    config = FeatureDiscriminatorConfig(channels=(8, 16), head_channels=8, train_features=train_features)
    disc = FeatureDiscriminator(config)
    image = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    sum(l.mean() for l in disc(image)).backward()
    assert all(p.requires_grad == train_features for p in disc.features.parameters())
    assert all((p.grad is not None) == train_features for p in disc.features.parameters())
    assert all(p.grad is not None for p in disc.heads.parameters())
    assert image.grad is not None and image.grad.abs().sum() > 0  # the generator's gradient path


def test_heads_are_spectrally_normalised() -> None:
    torch.manual_seed(0)
    disc = FeatureDiscriminator(FeatureDiscriminatorConfig.tiny())
    with torch.no_grad():
        for _ in range(30):  # power iterations run in training-mode forwards
            disc(torch.rand(1, 3, 16, 16))
    disc.eval()
    for head in disc.heads:
        weight = head.block[0].weight.detach()  # the normalised weight the convolution uses
        assert torch.linalg.matrix_norm(weight.flatten(1), ord=2) == pytest.approx(1.0, abs=0.05)


def test_config_rejects_empty_network() -> None:
    with pytest.raises(ValueError, match="positive"):
        FeatureDiscriminatorConfig(channels=())
