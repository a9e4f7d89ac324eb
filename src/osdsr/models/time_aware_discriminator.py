"""TAD-SR's time-aware discriminator (TAD-SR Sec. IV-B, Eq. 9-12).

The teacher denoiser's encoder (the input blocks and the middle block of ``SwinUNet``) turns a
noised latent ``z_t`` into multi-scale features ``F_k = Enc(z_t, t, y)`` (Eq. 9): here the output
of the last residual block of every encoder level and of the middle block. Each feature map is
normalised and modulated by the step, ``Norm(F_k) (1 + gamma_k(t)) + beta_k(t)`` (Eq. 10, the
shared ``TimeFiLM``), and judged by its own small head; a head returns one logit per position.

The encoder is not part of this module: it is the frozen teacher's (as in the TAD-SR release, whose
discriminator optimiser holds only the heads and the time embeddings), so the trainable
discriminator is the FiLM layers and the heads, and checkpoints do not duplicate the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from osdsr.models.discriminators import TimeFiLM
from osdsr.models.resshift_unet import SwinUNet, SwinUNetConfig, timestep_embedding

LEAKY_SLOPE = 0.2


def encoder_level_ends(config: SwinUNetConfig) -> list[int]:
    """Indices into ``SwinUNet.input_blocks`` of the last residual block of every level."""
    ends, index = [], 0  # block 0 is the input convolution
    for level in range(len(config.channel_mult)):
        index += config.num_res_blocks
        ends.append(index)
        if level != len(config.channel_mult) - 1:
            index += 1  # the level's downsampling block
    return ends


def encoder_feature_channels(config: SwinUNetConfig) -> list[int]:
    """Channels of the features ``teacher_encoder_features`` returns: one per level, then the middle block."""
    widths = [mult * config.model_channels for mult in config.channel_mult]
    return [*widths, widths[-1]]


def encoder_feature_sides(config: SwinUNetConfig, latent_side: int) -> list[int]:
    """Sides of the features ``teacher_encoder_features`` returns for a latent of side ``latent_side``."""
    sides = [latent_side // 2**level for level in range(len(config.channel_mult))]
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
    keep = set(encoder_level_ends(config))
    h = torch.cat([sample, lq.to(sample.dtype)], dim=1)
    features = []
    for index, block in enumerate(denoiser.input_blocks):
        h = block(h, emb)
        if index in keep:
            features.append(h)
    features.append(denoiser.middle_block(h, emb))
    return features


class TimeAwareHead(nn.Module):
    """One scale: FiLM by the step (Eq. 10), then a 3x3 and a 1x1 convolution to per-position logits."""

    def __init__(self, channels: int, head_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.film = TimeFiLM(channels, embed_dim)
        self.judge = nn.Sequential(
            nn.Conv2d(channels, head_channels, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(head_channels, 1, 1),
        )

    def forward(self, features: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.judge(self.film(features, t))


class TimeAwareDiscriminator(nn.Module):
    """Heads ``D_k`` over time-modulated teacher features: ``forward(features, t) -> [logits_k]``.

    ``t`` is the raw step index the teacher saw, ``[B]``. The logits of head ``k`` are ``[B, 1, h_k, w_k]``;
    TAD-SR averages the heads' results (Sec. IV-B), which the method does in its losses.
    """

    def __init__(self, feature_channels: Sequence[int], head_channels: int = 128, embed_dim: int = 128) -> None:
        super().__init__()
        if not feature_channels:
            raise ValueError("time-aware discriminator: needs at least one feature scale")
        self.heads = nn.ModuleList(TimeAwareHead(c, head_channels, embed_dim) for c in feature_channels)

    def forward(self, features: Sequence[torch.Tensor], t: torch.Tensor) -> list[torch.Tensor]:
        if len(features) != len(self.heads):
            raise ValueError(f"time-aware discriminator: got {len(features)} feature maps for {len(self.heads)} heads")
        return [head(f, t) for head, f in zip(self.heads, features)]
