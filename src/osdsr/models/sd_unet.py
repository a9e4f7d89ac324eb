"""The UNet of small one-step SD models without diffusers, whose import costs seconds on a CPU.

A re-implementation of the part of diffusers' ``UNet2DConditionModel`` that the embedded default model
uses: ResNet down and up blocks (``DownBlock2D``, ``UpBlock2D``) around a cross-attention mid block
(``UNetMidBlock2DCrossAttn``), sinusoidal timestep embedding. The module tree is diffusers', so one
state dict (names and shapes) loads into either and both give the same outputs
(``tests/models/test_sd_unet.py``). ``native_unet_config`` says whether a diffusers UNet config is
inside that part; other configs are built with diffusers.

Inference only: no gradient checkpointing, LoRA adapters or attention processors. Attention is
computed in float32 also when the weights are bf16 (on CPUs it is no faster in bf16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

DOWN_BLOCK = "DownBlock2D"
UP_BLOCK = "UpBlock2D"
MID_BLOCK = "UNetMidBlock2DCrossAttn"
TIMESTEP_MAX_PERIOD = 10000  # diffusers' get_timestep_embedding
TRANSFORMER_NORM_EPS = 1e-6  # Transformer2DModel's GroupNorm
FEED_FORWARD_MULT = 4  # GEGLU inner width = 4 x channels

# diffusers config fields the native UNet does not implement, with the only value it accepts (their
# diffusers defaults). ``only_cross_attention`` and ``mid_block_only_cross_attention`` are accepted
# with any value: no block of the supported types reads them.
FIXED_FIELDS: dict[str, Any] = {
    "center_input_sample": False,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "cross_attention_norm": None,
    "addition_embed_type_num_heads": 64,
}
IGNORED_FIELDS = ("sample_size", "dropout", "only_cross_attention", "mid_block_only_cross_attention")


@dataclass(frozen=True)
class SDUNetConfig:
    """The sizes of a native UNet, named and defaulted as diffusers' ``UNet2DConditionModel`` arguments."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    cross_attention_dim: int = 1280
    attention_head_dim: int = 8  # diffusers: the mid block's number of heads when num_attention_heads is None
    num_attention_heads: int | None = None
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0

    @property
    def mid_heads(self) -> int:
        return self.num_attention_heads or self.attention_head_dim


def native_unet_config(config: dict[str, Any]) -> SDUNetConfig | None:
    """The native config of a diffusers UNet config, or None when it uses a part this module lacks."""
    config = {k: v for k, v in config.items() if not k.startswith("_") and k not in IGNORED_FIELDS}
    depth = len(config.get("block_out_channels", SDUNetConfig.block_out_channels))
    if list(config.pop("down_block_types", ())) != [DOWN_BLOCK] * depth:
        return None
    if list(config.pop("up_block_types", ())) != [UP_BLOCK] * depth or config.pop("mid_block_type", MID_BLOCK) != MID_BLOCK:
        return None
    for name, value in FIXED_FIELDS.items():
        if config.pop(name, value) != value:
            return None
    sizes = {f.name for f in fields(SDUNetConfig)}
    if set(config) - sizes:
        return None
    if "block_out_channels" in config:
        config["block_out_channels"] = tuple(config["block_out_channels"])
    if not all(isinstance(config.get(k, 0), int) for k in ("layers_per_block", "attention_head_dim", "cross_attention_dim")):
        return None  # per-block lists: not supported
    return SDUNetConfig(**config)


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """Sinusoidal embedding [sin | cos] (or [cos | sin] flipped), frequencies 10000^(-k / (dim/2 - shift))."""
    half = dim // 2
    exponent = -math.log(TIMESTEP_MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    frequencies = torch.exp(exponent / (half - freq_shift))
    angles = timesteps[:, None].float() * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip_sin_to_cos:
        embedding = torch.cat([embedding[:, half:], embedding[:, :half]], dim=-1)
    return F.pad(embedding, (0, 1)) if dim % 2 else embedding


def _norm_silu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return F.silu(norm(x), inplace=True)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, channels)
        self.linear_2 = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """norm-SiLU-conv, plus the projected time embedding, norm-SiLU-conv, plus the (1x1-projected) input."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_norm_silu(self.norm1, x))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(_norm_silu(self.norm2, h))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class Downsample2D(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size | None) -> torch.Tensor:
        """Nearest x2, or to ``size`` (the skip's size, when the input was not a multiple of the depth)."""
        if size is None:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class DownBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, config: SDUNetConfig, downsample: bool) -> None:
        super().__init__()
        temb = config.block_out_channels[0] * 4
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if j == 0 else out_channels, out_channels, temb, config.norm_num_groups, config.norm_eps)
            for j in range(config.layers_per_block)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if downsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for resnet in self.resnets:
            x = resnet(x, temb)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock2D(nn.Module):
    def __init__(
        self, in_channels: int, prev_channels: int, out_channels: int, config: SDUNetConfig, upsample: bool
    ) -> None:
        super().__init__()
        temb = config.block_out_channels[0] * 4
        layers = config.layers_per_block + 1
        self.resnets = nn.ModuleList(
            ResnetBlock2D(
                (prev_channels if j == 0 else out_channels) + (in_channels if j == layers - 1 else out_channels),
                out_channels,
                temb,
                config.norm_num_groups,
                config.norm_eps,
            )
            for j in range(layers)
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if upsample else None

    def forward(
        self, x: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor, size: torch.Size | None
    ) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (self-attention when None); no bias on q, k, v."""

    def __init__(self, channels: int, heads: int, context_channels: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(context_channels or channels, channels, bias=False)
        self.to_v = nn.Linear(context_channels or channels, channels, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # diffusers' index 1 is a dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        batch = x.shape[0]
        q, k, v = (
            proj(source).view(batch, -1, self.heads, x.shape[-1] // self.heads).transpose(1, 2)
            for proj, source in ((self.to_q, x), (self.to_k, context), (self.to_v, context))
        )
        # in float32 whatever the weights: CPU attention is no faster in bf16 (benchmarks/speed.py), and exacter
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(x.dtype)
        return self.to_out[0](out.transpose(1, 2).reshape(batch, -1, x.shape[-1]))


class GEGLU(nn.Module):
    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = FEED_FORWARD_MULT * channels
        self.net = nn.ModuleList([GEGLU(channels, inner), nn.Identity(), nn.Linear(inner, channels)])  # 1: dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention over the prompt, GEGLU feed-forward; each residual."""

    def __init__(self, channels: int, heads: int, context_channels: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels, eps=eps)
        self.attn1 = Attention(channels, heads)
        self.norm2 = nn.LayerNorm(channels, eps=eps)
        self.attn2 = Attention(channels, heads, context_channels)
        self.norm3 = nn.LayerNorm(channels, eps=eps)
        self.ff = FeedForward(channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """GroupNorm, 1x1 projection in, one transformer block over the pixels as tokens, 1x1 out, residual."""

    def __init__(self, channels: int, heads: int, context_channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, context_channels, 1e-5)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.proj_in(self.norm(x))
        h = h.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        h = self.transformer_blocks[0](h, context)
        h = h.reshape(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(h) + x


class UNetMidBlock2DCrossAttn(nn.Module):
    def __init__(self, channels: int, config: SDUNetConfig) -> None:
        super().__init__()
        temb = config.block_out_channels[0] * 4
        groups, eps = config.norm_num_groups, config.norm_eps
        self.attentions = nn.ModuleList(
            [Transformer2DModel(channels, config.mid_heads, config.cross_attention_dim, groups)]
        )
        self.resnets = nn.ModuleList(ResnetBlock2D(channels, channels, temb, groups, eps) for _ in range(2))

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class UNetOutput(NamedTuple):
    sample: torch.Tensor  # as diffusers' UNet2DConditionOutput


class SDUNet(nn.Module):
    """Called like diffusers' ``UNet2DConditionModel``: ``unet(sample, timestep, encoder_hidden_states).sample``."""

    def __init__(self, config: SDUNetConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.block_out_channels
        groups, eps = config.norm_num_groups, config.norm_eps
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], channels[0] * 4)
        self.down_blocks = nn.ModuleList(
            DownBlock2D(channels[max(i - 1, 0)], channels[i], config, downsample=i < len(channels) - 1)
            for i in range(len(channels))
        )
        self.mid_block = UNetMidBlock2DCrossAttn(channels[-1], config)
        reversed_channels = channels[::-1]
        self.up_blocks = nn.ModuleList(
            UpBlock2D(
                reversed_channels[min(i + 1, len(channels) - 1)],
                reversed_channels[max(i - 1, 0)],
                reversed_channels[i],
                config,
                upsample=i < len(channels) - 1,
            )
            for i in range(len(channels))
        )
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=eps)
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> UNetOutput:
        depth = len(self.up_blocks) - 1  # number of x2 upsamplers
        # sizes that do not halve evenly: each upsampler goes back to its skip's size (as diffusers)
        uneven = any(s % 2**depth for s in sample.shape[-2:])
        timesteps = timestep.expand(sample.shape[0])
        t_emb = timestep_embedding(
            timesteps, self.config.block_out_channels[0], self.config.flip_sin_to_cos, self.config.freq_shift
        )
        temb = self.time_embedding(t_emb.to(sample.dtype))
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, encoder_hidden_states)
        for i, block in enumerate(self.up_blocks):
            block_skips = skips[len(skips) - len(block.resnets) :]
            del skips[len(skips) - len(block.resnets) :]
            size = skips[-1].shape[2:] if uneven and i < depth else None
            x = block(x, block_skips, temb, size)
        return UNetOutput(self.conv_out(_norm_silu(self.conv_norm_out, x)))
