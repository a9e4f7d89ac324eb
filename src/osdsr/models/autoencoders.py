"""Autoencoders that map images to the latent space a denoiser works in.

- ``PixelUnshuffleAutoencoder``: a lossless, parameter-free f4 "autoencoder" (pixel unshuffle /
  shuffle). It lets the small embedded model use the papers' latent formulation at a fraction of a
  learned VAE's cost.
- The VQGAN-f4 autoencoder of the official ResShift release (below).
- Stable Diffusion's KL autoencoder is diffusers' ``AutoencoderKL``, used as is.

All encoders take images in ``[-1, 1]`` and all decoders return images in ``[-1, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from osdsr.config import ranged


class PixelUnshuffleAutoencoder(nn.Module):
    """Lossless f-times downsampling: ``[B, C, H, W] -> [B, C*f*f, H/f, W/f]`` and back.

    ``channels_last_latents``: encode into a channels-last latent (same values), for a denoiser whose
    convolutions run channels-last: it then neither reorders its input nor mixes layouts in elementwise
    maths with its output, which on CPUs costs a strided pass each. ``decode`` takes either layout and
    returns a contiguous image.
    """

    def __init__(self, factor: int = 4, image_channels: int = 3, channels_last_latents: bool = False) -> None:
        super().__init__()
        self.factor = factor
        self.image_channels = image_channels
        self.latent_channels = image_channels * factor * factor
        self.scaling_factor = 1.0
        self.channels_last_latents = channels_last_latents

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        if not self.channels_last_latents:
            return F.pixel_unshuffle(image, self.factor)
        # one copy into [B, h, w, C, f, f]: the channels-last layout of pixel_unshuffle's [B, C*f*f, h, w]
        batch, channels, height, width = image.shape
        f = self.factor
        latent = image.reshape(batch, channels, height // f, f, width // f, f).permute(0, 2, 4, 1, 3, 5)
        return latent.reshape(batch, height // f, width // f, channels * f * f).permute(0, 3, 1, 2)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.is_contiguous():
            return F.pixel_shuffle(latent, self.factor)
        # any other layout: one copy straight into a contiguous image (pixel_shuffle keeps channels-last)
        batch, _, height, width = latent.shape
        f = self.factor
        image = latent.permute(0, 2, 3, 1).reshape(batch, height, width, -1, f, f).permute(0, 3, 1, 4, 2, 5)
        return image.reshape(batch, -1, height * f, width * f)


# --- VQGAN-f4 of the official ResShift release ---------------------------------------------------
# Module and parameter names follow the release's ``VQModelTorch`` (``encoder.*``, ``decoder.*``,
# ``quantize.embedding.weight``, ``quant_conv``, ``post_quant_conv``) so that its
# ``autoencoder_vq_f4.pth`` loads with ``strict=True``. Official settings: 55.32M parameters.
# "No attention" in the release's config means none at the resolution levels: the middle of the
# encoder and of the decoder still holds one global single-head self-attention block, as there.

VQ_NORM_GROUPS = 32
VQ_NORM_EPS = 1e-6
VQ_DISTANCE_CHUNK = 4096  # latent pixels per chunk of the nearest-code search (bounds its memory)


@dataclass(frozen=True)
class VQAutoencoderConfig:
    """VQGAN with two 2x downsamplings (f4); the defaults are the official ResShift x4 release."""

    embed_dim: int = ranged(3, "[1, inf)")  # latent channels (the codebook vectors' size)
    n_embed: int = ranged(8192, "[1, inf)")  # codebook entries
    ch: int = ranged(128, "[1, inf)")
    ch_mult: tuple[int, ...] = ranged((1, 2, 4), "[1, inf)")
    num_res_blocks: int = ranged(2, "[1, inf)")
    image_channels: int = ranged(3, "[1, inf)")

    def __post_init__(self) -> None:
        if len(self.ch_mult) != 3:
            raise ValueError(f"vq_f4: ch_mult needs 3 levels (two 2x downsamplings), got {list(self.ch_mult)}")
        if any((self.ch * m) % VQ_NORM_GROUPS for m in self.ch_mult):
            raise ValueError(f"vq_f4: ch * ch_mult must be multiples of {VQ_NORM_GROUPS} (group norm)")

    @classmethod
    def tiny(cls) -> VQAutoencoderConfig:
        """A small VQ-f4 for tests (0.73M parameters)."""
        return cls(n_embed=64, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1)


def _vq_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(VQ_NORM_GROUPS, channels, eps=VQ_NORM_EPS)


class VQResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _vq_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _vq_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class VQAttnBlock(nn.Module):
    """Single-head self-attention over all positions of the map (1x1 conv projections)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _vq_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))  # [B, HW, C]
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, height, width)
        return x + self.proj_out(out)


class VQDownsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel on the right and bottom only (as the release)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class VQUpsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class VQMiddle(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = VQResnetBlock(channels, channels)
        self.attn_1 = VQAttnBlock(channels)
        self.block_2 = VQResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class VQDownLevel(nn.Module):
    """Residual blocks of one encoder resolution, then an optional 2x downsampling."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class VQUpLevel(nn.Module):
    """Residual blocks of one decoder resolution, then an optional 2x upsampling."""

    def __init__(self, blocks: list[nn.Module], upsample: nn.Module | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class VQEncoder(nn.Module):
    def __init__(self, config: VQAutoencoderConfig) -> None:
        super().__init__()
        widths = [config.ch * m for m in config.ch_mult]
        self.conv_in = nn.Conv2d(config.image_channels, config.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = config.ch
        for level, width in enumerate(widths):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(VQResnetBlock(block_in, width))
                block_in = width
            self.down.append(VQDownLevel(blocks, VQDownsample(width) if level < len(widths) - 1 else None))
        self.mid = VQMiddle(block_in)
        self.norm_out = _vq_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.embed_dim, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(image)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class VQDecoder(nn.Module):
    def __init__(self, config: VQAutoencoderConfig) -> None:
        super().__init__()
        widths = [config.ch * m for m in config.ch_mult]
        block_in = widths[-1]
        self.conv_in = nn.Conv2d(config.embed_dim, block_in, 3, padding=1)
        self.mid = VQMiddle(block_in)
        levels: list[VQUpLevel] = []
        for level in reversed(range(len(widths))):
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(VQResnetBlock(block_in, widths[level]))
                block_in = widths[level]
            levels.insert(0, VQUpLevel(blocks, VQUpsample(block_in) if level != 0 else None))
        self.up = nn.ModuleList(levels)  # indexed by resolution level, run from the deepest
        self.norm_out = _vq_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.image_channels, 3, padding=1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(latent))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Replace each latent vector by its nearest codebook entry (straight-through gradient)."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, c, height, width = z.shape
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, c).float()
        codes = self.embedding.weight.float()
        code_norms = (codes**2).sum(dim=1)
        indices = torch.cat([
            ((chunk**2).sum(dim=1, keepdim=True) + code_norms - 2 * chunk @ codes.t()).argmin(dim=1)
            for chunk in flat.split(VQ_DISTANCE_CHUNK)
        ])
        z_q = self.embedding(indices).view(b, height, width, c).permute(0, 3, 1, 2).to(z.dtype)
        return z + (z_q - z).detach()


class VQAutoencoderF4(nn.Module):
    """VQGAN-f4: ``encode`` gives the unquantised latent; ``decode`` quantises it, then decodes."""

    def __init__(self, config: VQAutoencoderConfig | None = None) -> None:
        super().__init__()
        config = VQAutoencoderConfig() if config is None else config
        self.config = config
        self.latent_channels = config.embed_dim
        self.scaling_factor = 1.0  # ResShift uses the VQ latents unscaled
        self.encoder = VQEncoder(config)
        self.decoder = VQDecoder(config)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)
        self.quant_conv = nn.Conv2d(config.embed_dim, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.embed_dim, 1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(image))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize(latent)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(image))
