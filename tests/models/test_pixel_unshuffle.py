"""The pixel-unshuffle autoencoder: channels-last latents hold pixel_unshuffle's values; decode takes any layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from osdsr.models.autoencoders import PixelUnshuffleAutoencoder


def test_channels_last_latents_are_pixel_unshuffle_and_decode_back_to_a_contiguous_image() -> None:
    image = torch.rand(2, 3, 24, 16, generator=torch.Generator().manual_seed(0))
    latent = PixelUnshuffleAutoencoder(4, channels_last_latents=True).encode(image)
    assert torch.equal(latent, F.pixel_unshuffle(image, 4))
    assert latent.is_contiguous(memory_format=torch.channels_last) and not latent.is_contiguous()
    autoencoder = PixelUnshuffleAutoencoder(4)
    for z in (latent, latent[:, :, 1:5, 1:3], F.pixel_unshuffle(image, 4)[:, :, 1:5, 1:3]):  # any layout
        decoded = autoencoder.decode(z)
        assert decoded.is_contiguous() and torch.equal(decoded, F.pixel_shuffle(z.contiguous(), 4))
