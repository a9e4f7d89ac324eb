"""TAD-SR's time-aware discriminator: teacher encoder taps (Eq. 9), FiLM + zero conv (Eq. 10), 1-D heads.

``tadsr_release_discriminator.npz`` holds the outputs of the authors' release (github.com/LearningHx/
TAD-SR, commit 8b0373f, ``TAD-SR/models/unet.py``: ``ProjectedDiscriminator``, ``DiscHead``,
``make_block``, ``SpectralConv1d``; ``shared.py``: ``ResidualBlock``; ResShift's ``basic_ops.py``). They
were made outside this repository: those classes, copied unchanged into a throwaway virtual environment
(torch 2.13 CPU, the release files alone on its path), were built as ``ProjectedDiscriminator(c_dim=64,
embed_dim=32)`` (heads of 32, 64, 64, 128, 128 channels) in train mode, every state-dict tensor set to
``0.5 * randn`` from a generator seeded with ``crc32(key)`` (``seeded_release_state`` below repeats
the rule; ``state_shapes`` lists the keys), and run as ``training_losses_D`` and
``training_losses_distill`` call it (gaussian_diffusion.py:902-908, 875-879): on the stored real
features, then on the stored fake features (detached), then on the fake features again for the
generator's term, whose gradient with respect to the fake features is stored too. ``t`` holds the steps;
the losses are per sample (the trainer takes their batch mean).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from osdsr.losses.adversarial import hinge_discriminator_loss, hinge_generator_loss
from osdsr.models.resshift_unet import SwinUNet, SwinUNetConfig
from osdsr.models.time_aware_discriminator import (
    LOGITS_PER_POSITION,
    TimeAwareDiscriminator,
    convert_release_state_dict,
    encoder_feature_channels,
    encoder_feature_sides,
    encoder_taps,
    teacher_encoder_features,
)

REFERENCE = Path(__file__).parent / "tadsr_release_discriminator.npz"
RELEASE_CHANNELS = [32, 64, 64, 128, 128]  # ProjectedDiscriminator(embed_dim=32): e, 2e, 2e, 4e, 4e
RELEASE_EMBED = 32


@pytest.fixture(scope="module")
def denoiser() -> SwinUNet:
    torch.manual_seed(0)
    return SwinUNet(SwinUNetConfig.tiny()).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return dict(data)


def inputs(batch: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, 3, size, size, generator=gen)
    lq = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    return sample, torch.tensor([3, 11][:batch]), lq


def seeded_release_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """The reference's weights: ``0.5 * randn(shape)`` from a generator seeded with ``crc32(key)``."""
    state = {}
    for key, shape in shapes.items():
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        state[key] = 0.5 * torch.randn(shape, generator=gen)
    return state


def with_weights(disc: TimeAwareDiscriminator, seed: int = 2) -> TimeAwareDiscriminator:
    """Give the zero-initialised convolutions weights, so that the heads see the features."""
    gen = torch.Generator().manual_seed(seed)
    for head in disc.heads:
        head.mix[1].weight.data = 0.1 * torch.randn(head.mix[1].weight.shape, generator=gen)
    return disc


def test_taps_of_the_official_layout_are_the_releases() -> None:
    # conv, 2 res, down (3), 2 res, down (6), 2 res, down (9), 2 res (11): unet.py ~l. 888
    assert encoder_taps(SwinUNetConfig()) == [3, 6, 9, 11]
    assert encoder_feature_channels(SwinUNetConfig()) == [160, 320, 320, 640, 640]
    assert encoder_feature_sides(SwinUNetConfig(), 64) == [32, 16, 8, 8, 8]
    tiny = SwinUNetConfig.tiny()  # conv, 2 res, down (3), 2 res (5)
    assert (encoder_taps(tiny), encoder_feature_sides(tiny, 16)) == ([3, 5], [8, 8, 8])


def test_features_are_the_activations_of_the_full_forward(denoiser: SwinUNet) -> None:
    sample, t, lq = inputs()
    seen: dict[str | int, torch.Tensor] = {}
    taps = encoder_taps(denoiser.config)
    hooks = [denoiser.input_blocks[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)) for i in taps]
    hooks.append(denoiser.middle_block.register_forward_hook(lambda m, a, out: seen.__setitem__("middle", out)))
    denoiser(sample, t, lq)
    for hook in hooks:
        hook.remove()
    features = teacher_encoder_features(denoiser, sample, t, lq)
    expected = [seen[i] for i in taps] + [seen["middle"]]
    assert [f.shape[1] for f in features] == encoder_feature_channels(denoiser.config)
    assert [f.shape[-1] for f in features] == encoder_feature_sides(denoiser.config, 16)
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_logits_of_all_heads_are_concatenated(denoiser: SwinUNet) -> None:
    sample, t, lq = inputs()
    features = teacher_encoder_features(denoiser, sample, t, lq)
    disc = TimeAwareDiscriminator(encoder_feature_channels(denoiser.config), embed_dim=32)
    positions = sum(f.shape[-2] * f.shape[-1] for f in features)
    assert disc(features, t).shape == (2, LOGITS_PER_POSITION * positions)


def test_fresh_discriminator_gives_the_student_exactly_no_signal(denoiser: SwinUNet) -> None:
    sample, t, lq = inputs()
    sample.requires_grad_(True)
    # eval: training-mode calls advance the spectral norms' power iteration, which changes the output
    disc = TimeAwareDiscriminator(encoder_feature_channels(denoiser.config), embed_dim=32).eval()
    logits = disc(teacher_encoder_features(denoiser, sample, t, lq), t)
    hinge_generator_loss(logits).backward()
    assert sample.grad is not None and sample.grad.abs().max() == 0  # the zero conv blocks every path
    other = disc(teacher_encoder_features(denoiser, -sample.detach(), torch.tensor([0, 14]), lq), t)
    torch.testing.assert_close(logits, other, rtol=0, atol=0)  # the output ignores the features


def test_output_changes_with_the_step_for_fixed_features(denoiser: SwinUNet) -> None:
    sample, _, lq = inputs(batch=1)
    features = teacher_encoder_features(denoiser, sample, torch.tensor([5]), lq)
    torch.manual_seed(2)
    disc = with_weights(TimeAwareDiscriminator(encoder_feature_channels(denoiser.config), embed_dim=32)).eval()
    early, late = disc(features, torch.tensor([0])), disc(features, torch.tensor([14]))
    assert (early - late).abs().max() > 1e-3


def test_gradient_reaches_the_input_not_the_frozen_teacher(denoiser: SwinUNet) -> None:
    sample, t, lq = inputs()
    sample.requires_grad_(True)
    disc = with_weights(TimeAwareDiscriminator(encoder_feature_channels(denoiser.config), embed_dim=32))
    disc(teacher_encoder_features(denoiser, sample, t, lq), t).mean().backward()
    assert sample.grad is not None and sample.grad.abs().sum() > 0
    assert all(p.grad is None for p in denoiser.parameters())


def test_matches_the_release(reference: dict[str, np.ndarray]) -> None:
    shapes = json.loads(str(reference["state_shapes"]))
    disc = TimeAwareDiscriminator(RELEASE_CHANNELS, RELEASE_EMBED).train()  # the release trains in train mode
    disc.load_state_dict(convert_release_state_dict(seeded_release_state(shapes)), strict=True)
    t = torch.from_numpy(reference["t"])
    real = [torch.from_numpy(reference[f"real_{k}"]) for k in range(5)]
    fake = [torch.from_numpy(reference[f"fake_{k}"]).requires_grad_(True) for k in range(5)]
    # the release's call order: each training-mode call advances the spectral norms' power iteration
    logits_real = disc(real, t)
    logits_fake = disc([f.detach() for f in fake], t)
    logits_fake_generator = disc(fake, t)
    loss_generator = hinge_generator_loss(logits_fake_generator)
    loss_generator.backward()

    def check(got: torch.Tensor, name: str, batch_mean: bool = False) -> None:
        want = torch.from_numpy(reference[name])
        want = want.mean() if batch_mean else want
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))

    check(logits_real, "logits_real")
    check(logits_fake, "logits_fake")
    check(logits_fake_generator, "logits_fake_generator")
    # the release's losses are per sample; its trainer takes their batch mean
    loss_discriminator = hinge_discriminator_loss(logits_real, logits_fake)
    check(loss_discriminator, "loss_discriminator", batch_mean=True)
    check(loss_generator, "loss_generator", batch_mean=True)
    for k, features in enumerate(fake):
        assert features.grad is not None
        check(features.grad, f"grad_fake_{k}")


def test_release_state_dict_converts_onto_every_key() -> None:
    shapes = json.loads(str(np.load(REFERENCE)["state_shapes"]))
    converted = convert_release_state_dict({f"module.{k}": v for k, v in seeded_release_state(shapes).items()})
    assert set(converted) == set(TimeAwareDiscriminator(RELEASE_CHANNELS, RELEASE_EMBED).state_dict())
    with pytest.raises(ValueError, match="unexpected key 'heads.0.extra.weight'"):
        convert_release_state_dict({"heads.0.extra.weight": torch.zeros(1)})


def test_refuses_wrong_number_of_scales_bad_sizes_and_widths(denoiser: SwinUNet) -> None:
    disc = TimeAwareDiscriminator([32, 64], embed_dim=32)
    sample, t, lq = inputs()
    with pytest.raises(ValueError, match="3 feature maps for 2 heads"):
        disc(teacher_encoder_features(denoiser, sample, t, lq), t)
    with pytest.raises(ValueError, match="multiples of 16"):
        teacher_encoder_features(denoiser, sample[..., :12, :12], t, lq[..., :12, :12])
    with pytest.raises(ValueError, match="48 channels"):
        TimeAwareDiscriminator([48], embed_dim=32)
