"""The small discriminators: per-patch logits, and the step modulation of the Diffusion-GAN-style one."""

from __future__ import annotations

import torch

from osdsr.models.discriminators import LatentPatchDiscriminator, TimeFiLM, timestep_embedding


def test_patch_logits_shape() -> None:
    discriminator = LatentPatchDiscriminator(4, channels=8, num_layers=3)
    assert discriminator(torch.randn(2, 4, 16, 12)).shape == (2, 1, 4, 3)  # two stride-2 layers


def test_plain_cnn_ignores_the_step_and_film_starts_as_plain_norm() -> None:
    torch.manual_seed(0)
    plain = LatentPatchDiscriminator(4, channels=8, num_layers=2)
    z = torch.randn(3, 4, 8, 8)
    assert torch.equal(plain(z, torch.tensor([0, 10, 999])), plain(z))
    film = TimeFiLM(8, groups=4)  # zero-initialised last layer: gamma = beta = 0 at the start
    features = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(film(features, torch.tensor([0, 999])), film.norm(features))


def test_time_conditioned_logits_depend_on_the_step_once_trained() -> None:
    torch.manual_seed(0)
    discriminator = LatentPatchDiscriminator(4, channels=8, num_layers=2, time_conditioned=True)
    z = torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1)
    t = torch.tensor([0, 900])
    before = discriminator(z, t)
    torch.testing.assert_close(before[0], before[1])  # FiLM is the identity at initialisation
    optimizer = torch.optim.SGD(discriminator.parameters(), lr=0.5)
    (before[0].mean() - before[1].mean()).backward()  # push the two steps apart
    optimizer.step()
    after = discriminator(z, t)
    assert not torch.allclose(after[0], after[1])


def test_timestep_embedding_is_sinusoidal() -> None:
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), dim=4)
    # frequencies exp(-log(1e4) * [0, 1] / 2) = [1, 0.01]; cosines first, then sines
    args = torch.tensor([[0.0, 0.0], [3.0, 0.03]])
    torch.testing.assert_close(emb, torch.cat([args.cos(), args.sin()], dim=1))
