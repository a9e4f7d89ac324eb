"""ResShift's denoiser: a guided-diffusion UNet whose attention layers are Swin transformer layers.

The network predicts the clean latent ``z_0`` from the scaled noisy latent, the raw step index and
the LR image (in ``[-1, 1]``, concatenated to the latent on the same grid). Module and parameter
names follow the official ResShift release (``UNetModelSwin``), so that its checkpoints load with
``strict=True``; the state dict also holds the Swin relative-position indices and the
shifted-window attention masks as persistent buffers, as the official one does.

Default sizes are the official x4 real-SR model (118.59M parameters): model_channels 160,
channel_mult (1, 2, 2, 4), 2 res blocks per level, a Swin layer (depth 2, embed 192, window 8,
mlp ratio 4, 32 channels per head) after the first res block of every level, in the middle block
and after the first res block of every decoder level; scale-shift (FiLM) norms in the res blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from osdsr.config import ranged

GROUP_NORM_GROUPS = 32  # guided-diffusion's normalization(): GroupNorm with 32 groups
MASKED_LOGIT = -100.0  # the official Swin code masks attention logits with -100, not -inf
TIMESTEP_MAX_PERIOD = 10000


@dataclass(frozen=True)
class SwinUNetConfig:
    """Architecture of the denoiser; the defaults are the official x4 real-SR release.

    ``image_size`` is the latent size the stored shifted-window masks are built for (the training
    crop: 256 HR -> 64 latent); other sizes work, their masks are computed on the fly.
    """

    latent_channels: int = ranged(3, "[1, inf)")  # channels of z_t (input) and of the predicted z_0 (output)
    lq_channels: int = ranged(3, "[1, inf)")  # channels of the LR image concatenated to z_t
    model_channels: int = ranged(160, "[1, inf)")
    channel_mult: tuple[int, ...] = ranged((1, 2, 2, 4), "[1, inf)")
    num_res_blocks: int = ranged(2, "[1, inf)")
    swin_depth: int = ranged(2, "[1, inf)")
    swin_embed_dim: int = ranged(192, "[1, inf)")
    window_size: int = ranged(8, "[1, inf)")
    mlp_ratio: float = ranged(4.0, "(0, inf)")
    num_head_channels: int = ranged(32, "[1, inf)")
    image_size: int = ranged(64, "[1, inf)")
    dropout: float = ranged(0.0, "[0, 1)")

    def __post_init__(self) -> None:
        widths = [self.model_channels * m for m in self.channel_mult] + [self.swin_embed_dim]
        if any(w % GROUP_NORM_GROUPS for w in widths):
            raise ValueError(
                f"unet: model_channels * channel_mult and swin_embed_dim must be multiples of "
                f"{GROUP_NORM_GROUPS} (group norm), got {widths}"
            )
        if self.swin_embed_dim % self.num_head_channels:
            raise ValueError("unet: swin_embed_dim must be a multiple of num_head_channels")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError("unet: image_size must be divisible by 2 ** (len(channel_mult) - 1)")

    @property
    def size_multiple(self) -> int:
        """Latent height and width must be multiples of this (windows fit at every level)."""
        levels = len(self.channel_mult)
        windows = [min(self.window_size, self.image_size // 2**level) for level in range(levels)]
        return math.lcm(*(w * 2**level for level, w in enumerate(windows)))

    @classmethod
    def tiny(cls) -> SwinUNetConfig:
        """A small denoiser for tests and CPU training (1.13M parameters; inputs multiples of 16)."""
        return cls(model_channels=32, channel_mult=(1, 2), swin_embed_dim=32, image_size=16)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (as guided-diffusion does), whatever the weights' dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(GROUP_NORM_GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.type(x.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of the raw step index, frequencies 10000^(-k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(TIMESTEP_MAX_PERIOD) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs.to(timesteps.device)[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class ResBlock(nn.Module):
    """Residual block with a timestep-conditioned scale-shift norm: norm(h) (1 + scale) + shift."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)  # each block starts as the identity
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
        norm, rest = self.out_layers[0], self.out_layers[1:]
        h = rest(norm(h) * (1 + scale) + shift)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def relative_position_index(window: int) -> torch.Tensor:
    """[N, N] index into the (2w-1)^2 bias table for every pair of the N = w*w tokens of a window."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    d_row = rows[:, None] - rows[None, :] + window - 1
    d_col = cols[:, None] - cols[None, :] + window - 1
    return d_row * (2 * window - 1) + d_col


def shifted_window_mask(
    height: int, width: int, window: int, shift: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Attention mask [num_windows, N, N] (0 or -100) of the shifted windows, exactly as the release builds it.

    A standard Swin mask separates, inside every shifted window, tokens that come from different
    regions of the image before the cyclic shift. The official ResShift code, by an indexing quirk,
    labels regions along the height axis only and looks a token's label up by its column inside the
    window: token (r, c) of window (wr, wc) gets the region of image row wr * window + c. The
    published weights were trained with that mask (it is stored in the checkpoints), so it is
    reproduced here; the blocks use it at every size.
    """
    rows = torch.arange(height)
    region_of_row = (rows >= height - window).long() + (rows >= height - shift).long()
    col_in_window = torch.arange(window * window) % window
    window_rows = torch.arange(height // window)
    labels = region_of_row[window_rows[:, None] * window + col_in_window[None, :]]  # [windows per column, N]
    labels = labels.repeat_interleave(width // window, dim=0).to(device)  # windows in row-major order
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, MASKED_LOGIT)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative-position bias."""

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """windows: [B, num_windows, N, C]; mask: [num_windows, N, N] or None."""
        b, nw, n, c = windows.shape
        qkv = self.qkv(windows).reshape(b, nw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)  # each [B, num_windows, heads, N, head_dim]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, self.num_heads).permute(2, 0, 1)  # [heads, N, N]
        if mask is not None:
            bias = bias + mask[:, None].to(bias.dtype)  # [num_windows, heads, N, N]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


class Mlp(nn.Module):
    """Pointwise (1x1 conv) feed-forward network."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """(Shifted-)window attention and MLP, each pre-normed and residual, on [B, C, H, W] maps."""

    def __init__(
        self, dim: int, resolution: int, num_heads: int, window: int, shifted: bool, mlp_ratio: float
    ) -> None:
        super().__init__()
        if resolution <= window:  # the whole map fits in one window: no partition, no shift
            window, shifted = resolution, False
        self.resolution = resolution
        self.window = window
        self.shift = window // 2 if shifted else 0
        self.norm1 = GroupNorm32(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = GroupNorm32(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if self.shift:
            self.register_buffer("attn_mask", shifted_window_mask(resolution, resolution, window, self.shift))

    def _mask(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor | None:
        if not self.shift:
            return None
        if height == width == self.resolution:
            return self.attn_mask
        return shifted_window_mask(height, width, self.window, self.shift, like.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        w = self.window
        h = self.norm1(x)
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift, -self.shift), dims=(2, 3))
        windows = h.view(b, c, height // w, w, width // w, w).permute(0, 2, 4, 3, 5, 1)
        windows = windows.reshape(b, (height // w) * (width // w), w * w, c)
        out = self.attn(windows, self._mask(height, width, x))
        out = out.view(b, height // w, width // w, w, w, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)
        if self.shift:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(2, 3))
        x = x + out
        return x + self.mlp(self.norm2(x))


class PointwiseProjection(nn.Module):
    """A 1x1 convolution, named ``proj`` as in the release's patch (un)embedding with patch size 1."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class SwinLayer(nn.Module):
    """Project to the Swin width, alternate plain and shifted window blocks, project back."""

    def __init__(self, channels: int, config: SwinUNetConfig, resolution: int) -> None:
        super().__init__()
        dim = config.swin_embed_dim
        heads = dim // config.num_head_channels
        self.patch_embed = PointwiseProjection(channels, dim)
        self.patch_unembed = PointwiseProjection(dim, channels)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, heads, config.window_size, shifted=i % 2 == 1, mlp_ratio=config.mlp_ratio)
            for i in range(config.swin_depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x)
        for block in self.blocks:
            h = block(h)
        return self.patch_unembed(h)


class TimestepSequential(nn.Sequential):
    """A sequence of layers; the residual blocks among them also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class SwinUNet(nn.Module):
    """ResShift's denoiser: ``forward(z_t_scaled, t, lq) -> z_0``, all on the latent grid."""

    def __init__(self, config: SwinUNetConfig | None = None) -> None:
        super().__init__()
        config = SwinUNetConfig() if config is None else config
        self.config = config
        ch = config.model_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        in_channels = config.latent_channels + config.lq_channels
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        resolution = config.image_size
        for level, mult in enumerate(config.channel_mult):
            for i in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * config.model_channels, config.dropout)]
                ch = mult * config.model_channels
                if i == 0:
                    layers.append(SwinLayer(ch, config, resolution))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_channels.append(ch)
                resolution //= 2

        self.middle_block = TimestepSequential(
            ResBlock(ch, emb_dim, ch, config.dropout),
            SwinLayer(ch, config, resolution),
            ResBlock(ch, emb_dim, ch, config.dropout),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * config.model_channels, config.dropout)]
                ch = mult * config.model_channels
                if i == 0:
                    layers.append(SwinLayer(ch, config, resolution))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                    resolution *= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, config.latent_channels, 3, padding=1))
        # recompute each block's activations in backward instead of keeping them (less memory, ~1/3 more compute)
        self.gradient_checkpointing = False

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        """sample: z_t / sqrt(kappa^2 eta_t + 1) [B, C, h, w]; timesteps: raw step indices [B]; lq: [B, 3, h, w]."""
        h_in, w_in = sample.shape[-2:]
        if h_in % self.size_multiple or w_in % self.size_multiple:
            raise ValueError(
                f"denoiser input {h_in}x{w_in}: height and width must be multiples of "
                f"{self.size_multiple}; pad the input"
            )
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(sample.dtype))
        h = torch.cat([sample, lq.to(sample.dtype)], dim=1)
        skips = []
        for block in self.input_blocks:
            h = self.run_block(block, h, emb)
            skips.append(h)
        h = self.run_block(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self.run_block(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def run_block(self, block: TimestepSequential, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """One block, checkpointed (activations recomputed in backward) when ``gradient_checkpointing`` is on."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)
