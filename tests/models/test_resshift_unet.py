"""ResShift's Swin-UNet denoiser: official names and shapes (on meta), masks, tiny forward passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checkpointing import assert_checkpointing_keeps_less_and_same_gradients

from osdsr.models.resshift_unet import (
    MASKED_LOGIT,
    SwinUNet,
    SwinUNetConfig,
    relative_position_index,
    shifted_window_mask,
    timestep_embedding,
)

REFERENCE = json.loads((Path(__file__).parent / "resshift_official_reference.json").read_text())
PUBLISHED_PARAMS = 118.59e6  # TAD-SR Table I (ResShift denoiser)


@pytest.fixture(scope="module")
def full_size() -> SwinUNet:
    with torch.device("meta"):
        return SwinUNet()


def test_full_size_state_dict_matches_the_official_names_and_shapes(full_size: SwinUNet) -> None:
    ours = {k: list(v.shape) for k, v in full_size.state_dict().items()}
    expected = REFERENCE["denoiser"]
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}


def test_full_size_parameter_count_matches_the_paper(full_size: SwinUNet) -> None:
    count = sum(p.numel() for p in full_size.parameters())
    assert count == 118_593_583  # the official model definition's count
    assert abs(count - PUBLISHED_PARAMS) / PUBLISHED_PARAMS < 0.005


def test_position_indices_and_masks_are_persistent_buffers(full_size: SwinUNet) -> None:
    buffers = [k for k, _ in full_size.named_buffers()]
    assert len(buffers) == 24  # 18 Swin blocks' relative_position_index + 6 shifted blocks' attn_mask
    state = full_size.state_dict()
    assert all(k in state for k in buffers)
    assert sum(k.endswith("attn_mask") for k in buffers) == 6  # no shift where the map is one window (8x8)


def test_shifted_window_mask_reproduces_the_release() -> None:
    labels = torch.tensor(REFERENCE["shifted_window_mask_16x24_w8_s4"])
    official = torch.zeros(labels.shape[0], 64, 64).masked_fill(labels[:, None, :] != labels[:, :, None], MASKED_LOGIT)
    torch.testing.assert_close(shifted_window_mask(16, 24, window=8, shift=4), official, rtol=0, atol=0)


def test_relative_position_index_is_a_function_of_the_offset() -> None:
    window = 4
    index = relative_position_index(window)
    assert index.shape == (16, 16) and index.min() == 0 and index.max() == (2 * window - 1) ** 2 - 1
    assert torch.all(index.diagonal() == (window - 1) * (2 * window - 1) + window - 1)  # zero offset: table centre
    # token 0 -> token 5 (one row, one column down) has the same offset as token 10 -> token 15
    assert index[0, 5] == index[10, 15] and index[0, 5] != index[5, 0]


def test_timestep_embedding_is_cos_then_sin() -> None:
    emb = timestep_embedding(torch.tensor([0, 3]), 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    assert emb[1, 0] == pytest.approx(torch.cos(torch.tensor(3.0)).item())


def test_tiny_forward_shapes_and_size_check() -> None:
    model = SwinUNet(SwinUNetConfig.tiny()).eval()
    assert model.size_multiple == 16
    z, lq = torch.randn(2, 3, 16, 32), torch.randn(2, 3, 16, 32)
    with torch.no_grad():
        out = model(z, torch.tensor([0, 14]), lq)
    assert out.shape == (2, 3, 16, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, 24, 24), torch.tensor([1]), torch.randn(1, 3, 24, 24))


def test_tiny_output_depends_on_timestep_and_lr_condition() -> None:
    model = SwinUNet(SwinUNetConfig.tiny()).eval()
    for p in model.parameters():  # leave the identity initialisation so every input matters
        torch.nn.init.normal_(p, std=0.1)
    z, lq = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        base = model(z, torch.tensor([3]), lq)
        assert not torch.allclose(base, model(z, torch.tensor([4]), lq))
        assert not torch.allclose(base, model(z, torch.tensor([3]), lq + 0.1))


def test_tiny_runs_in_bfloat16() -> None:
    model = SwinUNet(SwinUNetConfig.tiny()).eval().to(torch.bfloat16)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 16, dtype=torch.bfloat16), torch.tensor([5]), torch.randn(1, 3, 16, 16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_config_rejects_widths_group_norm_cannot_split() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        SwinUNetConfig(model_channels=48)


def test_gradient_checkpointing_keeps_less_for_backward_with_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = SwinUNet(SwinUNetConfig.tiny()).train()
    for p in model.parameters():  # leave the identity initialisation so every block gets a gradient
        torch.nn.init.normal_(p, std=0.1)
    z, lq = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)

    def enable() -> None:
        model.gradient_checkpointing = True

    assert_checkpointing_keeps_less_and_same_gradients(model, enable, lambda: model(z, torch.tensor([3, 9]), lq).square().mean())
