"""``osdsr complexity``: exact parameter and MAC counts of a tiny model on ``meta``, the JSON shape, and the
full-size training-only networks of the ResShift students."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from osdsr.cli import main
from osdsr.complexity import COMPLEXITY_BUILDERS, TRAINING_ONLY_BUILDERS, Parts, measure
from osdsr.methods.resshift_family import TEACHER_NETWORK

SIZE, CHANNELS = 16, 8
TOKENS = SIZE * SIZE
CONV_MACS = CHANNELS * 3 * 9 * TOKENS  # Conv2d(3, 8, 3) at 16x16
PROJECTION_MACS = 3 * TOKENS * CHANNELS * CHANNELS  # q, k, v: Linear(8, 8) on 256 tokens
ATTENTION_MACS = 2 * TOKENS * TOKENS * CHANNELS  # QK^T and AV
HEAD_MACS = 3 * CHANNELS * TOKENS  # 1x1 Conv2d(8, 3) without bias

# (parameters, trainable) of each part of the full-size training-only networks, counted on ``meta``
TEACHER = {"distillation target (15 steps)": (118_593_583, 0)}  # the official ResShift Swin-UNet, frozen
TRAINING_ONLY_PARAMS = {
    "sinsr": {TEACHER_NETWORK: TEACHER},
    "tadsr": {
        "time-aware discriminator": {"teacher encoder (frozen)": (48_956_060, 0), "FiLM heads": (20_764_320, 20_764_320)},
        TEACHER_NETWORK: {**TEACHER, "score distillation (2 evaluations)": (118_593_583, 0)},
    },
    "tddsr": {
        "HR discriminator D_H": {"feature network": (4_687_296, 4_687_296), "heads": (210_692, 210_692)},
        "learnable downsampler G": {"downsampler": (77_379, 77_379)},
        "LR discriminator D_L": {"feature network": (1_146_304, 1_146_304), "heads": (140_611, 140_611)},
        TEACHER_NETWORK: TEACHER,
    },
}


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(CHANNELS, CHANNELS, bias=False) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        out = F.scaled_dot_product_attention(self.q(tokens), self.k(tokens), self.v(tokens))
        return out.transpose(1, 2).reshape(x.shape)


def tiny_parts(size: int) -> Parts:
    with torch.device("meta"):
        encoder = nn.Conv2d(3, CHANNELS, 3, padding=1).requires_grad_(False)
        attention = SelfAttention()
        head = nn.Conv2d(CHANNELS, 3, 1, bias=False).requires_grad_(False)
    return {
        "encoder": (encoder, lambda: (torch.zeros(1, 3, size, size, device="meta"),)),
        "attention": (attention, lambda: (torch.zeros(1, CHANNELS, size, size, device="meta"),)),
        "head": (head, lambda: (torch.zeros(1, CHANNELS, size, size, device="meta"),)),
    }


def test_counts_conv_linear_and_attention_exactly() -> None:
    report = measure(tiny_parts(SIZE))
    assert report["encoder"].macs == CONV_MACS and report["encoder"].params == 3 * CHANNELS * 9 + CHANNELS
    assert report["attention"].macs == PROJECTION_MACS + ATTENTION_MACS
    assert report["attention"].trainable == 3 * CHANNELS * CHANNELS
    assert report["total"].macs == CONV_MACS + PROJECTION_MACS + ATTENTION_MACS + HEAD_MACS
    assert report["total"].trainable == report["attention"].trainable
    layers = measure(tiny_parts(SIZE), layers_only=True)
    assert layers["attention"].macs == PROJECTION_MACS


def test_training_step_adds_backward_where_gradients_flow() -> None:
    forward = measure(tiny_parts(SIZE))
    train = measure(tiny_parts(SIZE), train=True)
    assert train["encoder"].macs == forward["encoder"].macs  # frozen, nothing trainable upstream
    assert train["attention"].macs > 2 * forward["attention"].macs  # weight grads + attention backward
    assert train["head"].macs == 2 * forward["head"].macs  # frozen, but gradients pass to its input


def test_json_output_shape(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(COMPLEXITY_BUILDERS, "tiny", tiny_parts)
    assert main(["complexity", "tiny", "--size", str(SIZE), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"parts", "total"} and list(data["parts"]) == ["encoder", "attention", "head"]
    for entry in [*data["parts"].values(), data["total"]]:
        assert set(entry) == {"params", "trainable", "macs"} and all(type(v) is int for v in entry.values())
    assert data["total"]["macs"] == CONV_MACS + PROJECTION_MACS + ATTENTION_MACS + HEAD_MACS


def test_table_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(COMPLEXITY_BUILDERS, "tiny", tiny_parts)
    assert main(["complexity", "tiny", "--size", str(SIZE)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["part", "params", "(M)", "trainable", "(M)", "MACs", "(G)"]
    assert [line.split()[0] for line in lines[3:6]] == ["encoder", "attention", "head"] and "total" in lines[-1]


def test_sd_generator_parts_on_meta() -> None:
    """The D3SR builder's parts (a tiny SD config): LoRA is the only trainable part, MACs scale with size."""
    from osdsr.models.sd_generator import SDGeneratorConfig, sd_complexity_parts

    config = SDGeneratorConfig(
        unet=dict(
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, layers_per_block=1,
            attention_head_dim=8, norm_num_groups=8, sample_size=8,
        ),
        vae=dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4),
        prompt_length=4,
    )
    small = measure(sd_complexity_parts(32, config), layers_only=True)
    large = measure(sd_complexity_parts(64, config), layers_only=True)
    assert list(small) == ["vae_encoder", "unet", "vae_decoder", "total"]
    assert small["unet"].trainable > 0 and small["vae_encoder"].trainable == small["vae_decoder"].trainable == 0
    assert small["total"].params == sum(small[p].params for p in ("vae_encoder", "unet", "vae_decoder"))
    assert large["vae_decoder"].macs == 4 * small["vae_decoder"].macs  # convolutions and linears: 4x the pixels
    with_attention = measure(sd_complexity_parts(64, config))
    assert with_attention["vae_decoder"].macs > large["vae_decoder"].macs  # + the mid-block attention


def test_table_lists_training_only_networks_apart(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(COMPLEXITY_BUILDERS, "tiny", tiny_parts)
    monkeypatch.setitem(TRAINING_ONLY_BUILDERS, "tiny", lambda size: {"critic": tiny_parts(size)})
    assert main(["complexity", "tiny", "--size", str(SIZE), "--train"]) == 0
    out = capsys.readouterr().out
    generator, critic = out.split("\ntraining only, not in the total above: critic; per image: ")
    assert generator.splitlines()[-1].startswith("total") and critic.splitlines()[-1].startswith("total")


def parameter_counts(networks: dict[str, Parts]) -> dict[str, dict[str, tuple[int, int]]]:
    """(parameters, trainable) of every part of every network."""
    return {
        network: {
            name: (sum(p.numel() for p in module.parameters()),
                   sum(p.numel() for p in module.parameters() if p.requires_grad))
            for name, (module, _) in parts.items()
        }
        for network, parts in networks.items()
    }


@pytest.mark.parametrize("method", sorted(TRAINING_ONLY_PARAMS))
def test_student_training_only_networks_have_full_size_parameters(method: str) -> None:
    """Built from ``configs/<method>.yaml`` on ``meta``: the discriminators, downsampler and frozen teacher."""
    assert parameter_counts(TRAINING_ONLY_BUILDERS[method](256)) == TRAINING_ONLY_PARAMS[method]


def measure_networks(method: str, size: int, networks: list[str]) -> dict[str, dict[str, int]]:
    """MACs of one training step of each part of the named training-only networks at output ``size``."""
    built = TRAINING_ONLY_BUILDERS[method](size)
    return {n: {part: c.macs for part, c in measure(built[n], train=True).items()} for n in networks}


def test_tddsr_convolutional_networks_macs_scale_with_pixels() -> None:
    """D_H and G see the HR output, D_L the LR image: all convolutions, so 4x the pixels is exactly 4x the MACs."""
    networks = ["HR discriminator D_H", "learnable downsampler G", "LR discriminator D_L"]
    small, large = measure_networks("tddsr", 256, networks), measure_networks("tddsr", 512, networks)
    for network in networks:
        assert all(macs > 0 for macs in small[network].values())
        assert {part: 4 * macs for part, macs in small[network].items()} == large[network]


def test_tadsr_discriminator_and_teacher_macs_scale_with_pixels() -> None:
    """Convolutions and windowed attention: ~4x the MACs for 4x the pixels (the step embeddings do not grow);
    HSD's two teacher evaluations cost 2/15 of the 15-step distillation target."""
    networks = ["time-aware discriminator", TEACHER_NETWORK]
    small, large = measure_networks("tadsr", 256, networks), measure_networks("tadsr", 512, networks)
    for network in networks:
        for part, macs in small[network].items():
            assert macs > 0 and large[network][part] == pytest.approx(4 * macs, rel=1e-3)
    teacher = large[TEACHER_NETWORK]
    assert 15 * teacher["score distillation (2 evaluations)"] == 2 * teacher["distillation target (15 steps)"]
