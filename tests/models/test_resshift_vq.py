"""The official ResShift VQGAN-f4 (in osdsr.models.autoencoders): names, size, quantised decoding."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from osdsr.models.autoencoders import VQAutoencoderConfig, VQAutoencoderF4

REFERENCE = json.loads((Path(__file__).parent / "resshift_official_reference.json").read_text())
PUBLISHED_PARAMS = 55.32e6  # TAD-SR Table I (ResShift autoencoder)


def test_full_size_state_dict_matches_the_official_names_and_shapes() -> None:
    with torch.device("meta"):
        model = VQAutoencoderF4()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = REFERENCE["autoencoder"]
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    count = sum(p.numel() for p in model.parameters())
    assert count == 55_322_782  # the official model definition's count
    assert abs(count - PUBLISHED_PARAMS) / PUBLISHED_PARAMS < 0.005


def test_tiny_encode_is_f4_and_decode_uses_the_nearest_codes() -> None:
    model = VQAutoencoderF4(VQAutoencoderConfig.tiny()).eval()
    image = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        latent = model.encode(image)
        assert latent.shape == (2, 3, 8, 12)
        quantised = model.quantize(latent)
        codes = model.quantize.embedding.weight
        vectors = quantised.permute(0, 2, 3, 1).reshape(-1, 3)
        nearest = codes[torch.cdist(latent.permute(0, 2, 3, 1).reshape(-1, 3), codes).argmin(dim=1)]
        torch.testing.assert_close(vectors, nearest)
        decoded = model.decode(latent)
        assert decoded.shape == image.shape
        # decoding quantises first: latents that share their nearest codes decode identically
        torch.testing.assert_close(model.decode(quantised), decoded)


def test_quantiser_passes_gradients_straight_through() -> None:
    model = VQAutoencoderF4(VQAutoencoderConfig.tiny())
    latent = torch.randn(1, 3, 4, 4, requires_grad=True)
    model.quantize(latent).sum().backward()
    torch.testing.assert_close(latent.grad, torch.ones_like(latent))
