"""TAD-SR's time-aware discriminator: teacher encoder features (Eq. 9), FiLM by the step (Eq. 10), heads."""

from __future__ import annotations

import pytest
import torch

from osdsr.models.resshift_unet import SwinUNet, SwinUNetConfig
from osdsr.models.time_aware_discriminator import (
    TimeAwareDiscriminator,
    encoder_feature_channels,
    encoder_level_ends,
    teacher_encoder_features,
)


@pytest.fixture(scope="module")
def denoiser() -> SwinUNet:
    torch.manual_seed(0)
    return SwinUNet(SwinUNetConfig.tiny()).eval().requires_grad_(False)


def inputs(batch: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, 3, size, size, generator=gen)
    lq = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    return sample, torch.tensor([3, 11][:batch]), lq


def test_level_ends_of_the_official_layout() -> None:
    # conv, 2 res, down, 2 res, down, 2 res, down, 2 res: the last res block of each level
    assert encoder_level_ends(SwinUNetConfig()) == [2, 5, 8, 11]
    assert encoder_feature_channels(SwinUNetConfig()) == [160, 320, 320, 640, 640]


def test_features_are_the_activations_of_the_full_forward(denoiser: SwinUNet) -> None:
    sample, t, lq = inputs()
    seen: dict[str, torch.Tensor] = {}
    hooks = [denoiser.input_blocks[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
             for i in encoder_level_ends(denoiser.config)]
    hooks.append(denoiser.middle_block.register_forward_hook(lambda m, a, out: seen.__setitem__("middle", out)))
    denoiser(sample, t, lq)
    for hook in hooks:
        hook.remove()
    features = teacher_encoder_features(denoiser, sample, t, lq)
    expected = [seen[i] for i in encoder_level_ends(denoiser.config)] + [seen["middle"]]
    assert [f.shape[1] for f in features] == encoder_feature_channels(denoiser.config)
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_output_changes_with_the_step_for_fixed_features(denoiser: SwinUNet) -> None:
    sample, _, lq = inputs(batch=1)
    features = teacher_encoder_features(denoiser, sample, torch.tensor([5]), lq)
    torch.manual_seed(2)
    disc = TimeAwareDiscriminator(encoder_feature_channels(denoiser.config), head_channels=8, embed_dim=16)
    for head in disc.heads:  # the FiLM output layer starts at zero (identity modulation): give it weights
        torch.nn.init.normal_(head.film.to_scale_shift[-1].weight, std=0.5)
    early, late = disc(features, torch.tensor([0])), disc(features, torch.tensor([14]))
    assert len(early) == len(features)
    for a, b, f in zip(early, late, features):
        assert a.shape == (1, 1, *f.shape[-2:])
        assert (a - b).abs().max() > 1e-3


def test_fresh_discriminator_modulates_by_identity(denoiser: SwinUNet) -> None:
    sample, _, lq = inputs(batch=1)
    features = teacher_encoder_features(denoiser, sample, torch.tensor([5]), lq)
    disc = TimeAwareDiscriminator(encoder_feature_channels(denoiser.config), head_channels=8, embed_dim=16)
    for a, b in zip(disc(features, torch.tensor([0])), disc(features, torch.tensor([14]))):
        torch.testing.assert_close(a, b)


def test_gradient_reaches_the_input_not_the_frozen_teacher(denoiser: SwinUNet) -> None:
    sample, t, lq = inputs()
    sample.requires_grad_(True)
    disc = TimeAwareDiscriminator(encoder_feature_channels(denoiser.config), head_channels=8, embed_dim=16)
    sum(l.mean() for l in disc(teacher_encoder_features(denoiser, sample, t, lq), t)).backward()
    assert sample.grad is not None and sample.grad.abs().sum() > 0
    assert all(p.grad is None for p in denoiser.parameters())


def test_refuses_wrong_number_of_scales_and_bad_sizes(denoiser: SwinUNet) -> None:
    disc = TimeAwareDiscriminator([32, 64], head_channels=8, embed_dim=16)
    sample, t, lq = inputs()
    with pytest.raises(ValueError, match="3 feature maps for 2 heads"):
        disc(teacher_encoder_features(denoiser, sample, t, lq), t)
    with pytest.raises(ValueError, match="multiples of 16"):
        teacher_encoder_features(denoiser, sample[..., :12, :12], t, lq[..., :12, :12])
