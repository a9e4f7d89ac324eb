"""TAD-SR's time-aware discriminator (TAD-SR Sec. IV-B, Eq. 9-12), as the authors' release builds it.

The teacher denoiser's encoder (the input blocks and the middle block of ``SwinUNet``) turns a
noised latent ``z_t`` into multi-scale features ``F_k = Enc(z_t, t, y)`` (Eq. 9). The paper does not
say which activations; the release (github.com/LearningHx/TAD-SR, commit 8b0373f,
``TAD-SR/models/unet.py`` ~l. 888, ``UNetModelSwin.forward(only_fea=True)``) takes ``hs[3], hs[6],
hs[9], hs[11]`` and the middle block of the official layout: the output of each level's strided
downsampling convolution, the last block of the last level, and the middle block (sides 32/16/8/8/8
at a 64 latent). ``encoder_taps`` gives the same positions for any level structure.

Each feature map is judged by its own ``TimeAwareHead`` (the release's ``ProjectedDiscriminator``,
``unet.py`` end of file): FiLM by the step on an affine GroupNorm32, ``Norm(F_k) (1 + gamma_k(t)) +
beta_k(t)`` (Eq. 10, with ``[gamma, beta] = Linear(SiLU(sinusoid(t)))``), then SiLU and a
zero-initialised 3x3 convolution, so that the discriminator's output, and with it the adversarial
signal to the student, starts at exactly zero. The map is then flattened to a sequence of positions
and judged by spectral-norm 1-D convolutions: a 1x1 block, a residual block (circular kernel 9,
GroupNorm(4), LeakyReLU 0.2), and ``logits_per_position`` (64) logits per position. The logits of
all heads are concatenated, so the hinge losses (Eq. 11-12) average them with each head weighted
by its number of elements (about 70/17/4/4/4 % at full size), as the release's losses do.

The encoder is not part of this module: it is the frozen teacher's (the release's discriminator
optimiser holds only this module's parameters), so checkpoints do not duplicate the teacher.
``convert_release_state_dict`` maps a state dict of the release's ``ProjectedDiscriminator`` onto
this module (the numerical equivalence test uses it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from osdsr.models.resshift_unet import GROUP_NORM_GROUPS, GroupNorm32, SwinUNet, SwinUNetConfig, timestep_embedding

LOGITS_PER_POSITION = 64  # the release's c_dim (trainer.py, TrainerDistillDifIR.build_model: c_dim=64, embed_dim=160)
HEAD_NORM_GROUPS = 4  # GroupNorm(4, C) in the heads' blocks (unet.py, make_block)
HEAD_KERNEL = 9  # the residual block's circular kernel (unet.py, DiscHead)
LEAKY_SLOPE = 0.2
SPECTRAL_NORM_EPS = 1e-12  # unet.py, SpectralConv1d: one power iteration per training forward, eps 1e-12


def encoder_taps(config: SwinUNetConfig) -> list[int]:
    """Indices into ``SwinUNet.input_blocks`` of the tapped features (the middle block comes after them):
    each level's downsampling block, then the last block of the last level ([3, 6, 9, 11] officially)."""
    taps, index = [], 0  # block 0 is the input convolution
    levels = len(config.channel_mult)
    for level in range(levels):
        index += config.num_res_blocks
        if level != levels - 1:
            index += 1  # the level's strided downsampling convolution
        taps.append(index)
    return taps


def encoder_feature_channels(config: SwinUNetConfig) -> list[int]:
    """Channels of the features ``teacher_encoder_features`` returns (a downsampling block keeps its
    level's width), the middle block's last."""
    widths = [mult * config.model_channels for mult in config.channel_mult]
    return [*widths, widths[-1]]


def encoder_feature_sides(config: SwinUNetConfig, latent_side: int) -> list[int]:
    """Sides of the features ``teacher_encoder_features`` returns for a latent of side ``latent_side``."""
    levels = len(config.channel_mult)
    sides = [latent_side // 2 ** min(level + 1, levels - 1) for level in range(levels)]
    return [*sides, sides[-1]]


def teacher_encoder_features(
    denoiser: SwinUNet, sample: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor
) -> list[torch.Tensor]:
    """F_k = Enc(z_t, t, y) (TAD-SR Eq. 9): the denoiser's encoder half, run on its usual inputs.

    ``sample`` is the scaled noisy latent the denoiser takes, ``timesteps`` the raw step indices and
    ``lq`` the LR image in [-1, 1]. The decoder half is not evaluated. Gradients reach ``sample``
    (the generator step) whether or not the denoiser's weights require them.
    """
    config = denoiser.config
    height, width = sample.shape[-2:]
    if height % denoiser.size_multiple or width % denoiser.size_multiple:
        raise ValueError(
            f"discriminator input {height}x{width}: height and width must be multiples of {denoiser.size_multiple}"
        )
    emb = denoiser.time_embed(timestep_embedding(timesteps, config.model_channels).to(sample.dtype))
    keep = set(encoder_taps(config))
    h = torch.cat([sample, lq.to(sample.dtype)], dim=1)
    features = []
    for index, block in enumerate(denoiser.input_blocks):
        h = denoiser.run_block(block, h, emb)
        if index in keep:
            features.append(h)
    features.append(denoiser.run_block(denoiser.middle_block, h, emb))
    return features


def spectral_conv1d(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv1d:
    """A 1-D convolution with spectral normalisation of its weight (circular padding when wider than 1)."""
    conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, padding_mode="circular")
    return nn.utils.spectral_norm(conv, n_power_iterations=1, eps=SPECTRAL_NORM_EPS, dim=0)


class SequenceBlock(nn.Sequential):
    """Spectral-norm Conv1d, GroupNorm(4), LeakyReLU(0.2) over a sequence of positions."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(
            spectral_conv1d(channels, channels, kernel_size),
            nn.GroupNorm(HEAD_NORM_GROUPS, channels),
            nn.LeakyReLU(LEAKY_SLOPE),
        )


class ResidualSequenceBlock(nn.Module):
    """``(block(x) + x) / sqrt(2)``: a residual block that keeps the activations' scale."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.block = SequenceBlock(channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.block(x) + x) / math.sqrt(2)


class TimeAwareHead(nn.Module):
    """One scale ``k``: FiLM by the step (Eq. 10), SiLU, a zero-initialised 3x3 convolution, then the
    positions as a sequence through spectral-norm 1-D blocks to ``logits_per_position`` logits each."""

    def __init__(self, channels: int, embed_dim: int, logits_per_position: int = LOGITS_PER_POSITION) -> None:
        super().__init__()
        if channels % GROUP_NORM_GROUPS or channels % HEAD_NORM_GROUPS:
            raise ValueError(
                f"time-aware discriminator: a feature map of {channels} channels; the heads need a multiple of "
                f"{GROUP_NORM_GROUPS} (their GroupNorm32)"
            )
        self.embed_dim = embed_dim
        self.norm = GroupNorm32(channels)
        self.to_scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * channels))
        self.mix = nn.Sequential(nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        nn.init.zeros_(self.mix[1].weight)  # the release's zero_module: the head's input starts at zero
        nn.init.zeros_(self.mix[1].bias)
        self.entry = SequenceBlock(channels, 1)
        self.residual = ResidualSequenceBlock(channels, HEAD_KERNEL)
        self.classifier = spectral_conv1d(channels, logits_per_position, 1)

    def forward(self, features: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.embed_dim).to(features.dtype)
        gamma, beta = self.to_scale_shift(emb)[..., None, None].chunk(2, dim=1)
        h = self.mix(self.norm(features) * (1 + gamma) + beta)  # TAD-SR Eq. 10
        logits = self.classifier(self.residual(self.entry(h.flatten(2))))
        return logits.flatten(1)  # [B, logits_per_position * h * w], logits of a position's channel together


class TimeAwareDiscriminator(nn.Module):
    """Heads ``D_k`` over time-modulated teacher features: ``forward(features, t) -> logits [B, N]``.

    ``t`` is the raw step index the teacher saw, ``[B]``; ``embed_dim`` the width of its sinusoidal
    embedding (the release: the teacher's ``model_channels``). The logits of all heads are
    concatenated along dim 1 (head after head), so that a mean over them weights each head by its size.
    """

    def __init__(
        self, feature_channels: Sequence[int], embed_dim: int, logits_per_position: int = LOGITS_PER_POSITION
    ) -> None:
        super().__init__()
        if not feature_channels:
            raise ValueError("time-aware discriminator: needs at least one feature scale")
        self.heads = nn.ModuleList(TimeAwareHead(c, embed_dim, logits_per_position) for c in feature_channels)

    def forward(self, features: Sequence[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        if len(features) != len(self.heads):
            raise ValueError(f"time-aware discriminator: got {len(features)} feature maps for {len(self.heads)} heads")
        return torch.cat([head(f, t) for head, f in zip(self.heads, features)], dim=1)


# the release's ProjectedDiscriminator key -> this module's (k: the head); unet.py, ProjectedDiscriminator
_RELEASE_KEYS = [
    (r"emb_layers\.(\d+)\.1\.", r"heads.\1.to_scale_shift.1."),
    (r"out_layers\.(\d+)\.0\.", r"heads.\1.norm."),
    (r"out_layers\.(\d+)\.3\.", r"heads.\1.mix.1."),
    (r"heads\.(\d+)\.main\.0\.", r"heads.\1.entry."),
    (r"heads\.(\d+)\.main\.1\.fn\.", r"heads.\1.residual.block."),
    (r"heads\.(\d+)\.cls\.", r"heads.\1.classifier."),
]


def convert_release_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of the release's ``ProjectedDiscriminator`` with this module's keys (the values are
    the same tensors; spectral-norm ``weight_orig`` / ``weight_u`` / ``weight_v`` keep their names).

    A ``module.`` prefix (DDP) is dropped. Raises ``ValueError`` on a key the release does not have.
    """
    converted = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        for pattern, replacement in _RELEASE_KEYS:
            new, count = re.subn(f"^{pattern}", replacement, name)
            if count:
                converted[new] = value
                break
        else:
            raise ValueError(f"release discriminator state dict: unexpected key {key!r}")
    return converted
