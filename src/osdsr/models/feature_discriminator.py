"""A StyleGAN-T-style discriminator: a feature network with a small head on each of its stages.

TDDSR (Sec. 4.2) adopts StyleGAN-T's design, a feature network whose intermediate layers are each
judged by a light discrimination head, and trains the feature network. Here the feature network is
a strided CNN trained from scratch (no pretrained weights are needed); ``train_features=False``
freezes it at its initialisation, leaving only the heads to learn (StyleGAN-T's own choice for its
pretrained network). A head is StyleGAN-T's residual block made 2-D: 1x1 conv, a residual 3x3 conv
block, a 1x1 conv to one logit per position, spectral-normalised, with group norms.

The same class serves as TDDSR's HR discriminator (on [-1, 1] HR images) and, as the paper states
(Sec. 4.3), as its LR discriminator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from osdsr.config import ranged
from osdsr.complexity import ComplexityPart, Parts, meta_zeros

LEAKY_SLOPE = 0.2
NORM_GROUPS = 8


@dataclass(frozen=True)
class FeatureDiscriminatorConfig:
    """Widths of the feature network's stages (each halves the resolution) and of the heads."""

    channels: tuple[int, ...] = ranged((64, 128, 256, 256), "[1, inf)")
    head_channels: int = ranged(64, "[1, inf)")
    train_features: bool = True  # TDDSR trains the feature network; False freezes it

    def __post_init__(self) -> None:
        if not self.channels or any(c < 1 for c in self.channels) or self.head_channels < 1:
            raise ValueError(f"feature discriminator: channels {self.channels} and head_channels must be positive")

    @classmethod
    def tiny(cls) -> FeatureDiscriminatorConfig:
        return cls(channels=(16, 32, 32), head_channels=16)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(NORM_GROUPS, channels), channels)


class FeatureNetwork(nn.Module):
    """Strided conv stages; ``forward`` returns every stage's output (resolution 1/2, 1/4, ...)."""

    def __init__(self, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        width = in_channels
        for out in channels:
            self.stages.append(
                nn.Sequential(
                    nn.Conv2d(width, out, 3, stride=2, padding=1),
                    nn.LeakyReLU(LEAKY_SLOPE),
                    nn.Conv2d(out, out, 3, padding=1),
                    _group_norm(out),
                    nn.LeakyReLU(LEAKY_SLOPE),
                )
            )
            width = out

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features = []
        h = image
        for stage in self.stages:
            h = stage(h)
            features.append(h)
        return features


class DiscriminatorHead(nn.Module):
    """1x1 conv -> residual 3x3 conv block -> 1x1 conv to logits, spectral-normalised."""

    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        self.project = nn.Sequential(
            spectral_norm(nn.Conv2d(channels, head_channels, 1)), _group_norm(head_channels), nn.LeakyReLU(LEAKY_SLOPE)
        )
        self.block = nn.Sequential(
            spectral_norm(nn.Conv2d(head_channels, head_channels, 3, padding=1)),
            _group_norm(head_channels),
            nn.LeakyReLU(LEAKY_SLOPE),
        )
        self.to_logits = spectral_norm(nn.Conv2d(head_channels, 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.project(features)
        return self.to_logits(h + self.block(h))


class FeatureDiscriminator(nn.Module):
    """``forward(image [B, 3, H, W] in [-1, 1]) -> [logits_k]``, one per stage (stage k at 1/2^(k+1) resolution)."""

    def __init__(self, config: FeatureDiscriminatorConfig | None = None, in_channels: int = 3) -> None:
        super().__init__()
        config = FeatureDiscriminatorConfig() if config is None else config
        self.config = config
        self.features = FeatureNetwork(in_channels, config.channels)
        self.heads = nn.ModuleList(DiscriminatorHead(c, config.head_channels) for c in config.channels)
        self.features.requires_grad_(config.train_features)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.judge(self.features(image))

    def judge(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The heads' logits on the feature network's outputs."""
        return [head(f) for head, f in zip(self.heads, features)]


def feature_discriminator_complexity_parts(discriminator: FeatureDiscriminator, side: int) -> Parts:
    """``discriminator`` (built on ``meta``) as parts, feature network then heads, on one ``side`` x ``side``
    image, for ``osdsr complexity --train``."""
    channels = discriminator.config.channels
    image_channels = discriminator.features.stages[0][0].in_channels
    sides = [side]
    for _ in channels:
        sides.append((sides[-1] + 1) // 2)  # a 3x3 convolution of stride 2, padding 1

    def image() -> tuple[torch.Tensor, ...]:
        return (meta_zeros(image_channels, side),)

    def features() -> tuple[torch.Tensor, ...]:
        return tuple(meta_zeros(c, s) for c, s in zip(channels, sides[1:]))

    heads = ComplexityPart(lambda *maps: discriminator.judge(maps), [discriminator.heads])
    return {"feature network": (discriminator.features, image), "heads": (heads, features)}
